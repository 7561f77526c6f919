"""The voicemail-beep detector on synthetic tones in line noise (pure DSP, real signals)."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio.amd import TUNED, Beep, BeepDetector

RATE = 16000


def noise(seconds: float, dbfs: float = -55.0, seed: int = 0) -> np.ndarray:
    """White line noise at ``dbfs`` RMS."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 32767 * 10 ** (dbfs / 20), int(seconds * RATE))


def tone(freqs: tuple[float, ...], ms: int, dbfs: float = -12.0) -> np.ndarray:
    t = np.arange(int(RATE * ms / 1000)) / RATE
    return sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs) * 32767 * 10 ** (dbfs / 20)


def call(*parts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Concatenate the parts and add line noise over the whole."""
    x = np.concatenate(parts)
    x = x + noise(len(x) / RATE, seed=seed)
    return np.clip(x, -32768, 32767).astype(np.int16)


def detect(pcm: np.ndarray, rate: int = RATE, frame: int = 320) -> list[Beep]:
    det = BeepDetector(rate)
    for i in range(0, len(pcm), frame):
        det.feed(pcm[i : i + frame])
    det.feed(np.zeros(rate // 10, dtype=np.int16))  # a little silence closes a run at the end
    return det.beeps


@pytest.mark.parametrize(
    ("freq", "ms"), [(425.0, 150), (850.0, 400), (1000.0, 250), (1400.0, 900), (2000.0, 600)]
)
def test_beep_in_noise_found_with_onset_length_and_frequency(freq: float, ms: int) -> None:
    pcm = call(np.zeros(int(1.3 * RATE)), tone((freq,), ms), np.zeros(RATE))
    beeps = detect(pcm)
    assert len(beeps) == 1
    b = beeps[0]
    assert abs(b.start_ms - 1300) <= 40
    assert abs((b.end_ms - b.start_ms) - ms) <= 60
    assert abs(b.freq_hz - freq) <= 10


def test_beep_at_low_snr_still_found_and_noise_alone_is_not_a_beep() -> None:
    quiet = call(np.zeros(RATE), tone((1000.0,), 300, dbfs=-38.0), np.zeros(RATE), seed=3)
    assert [round(b.freq_hz, -1) for b in detect(quiet)] == [1000.0]
    assert detect(call(np.zeros(3 * RATE), seed=4)) == []


def test_too_short_too_long_and_out_of_band_tones_are_not_beeps() -> None:
    short = call(np.zeros(RATE // 2), tone((1000.0,), 60), np.zeros(RATE // 2))
    long_ = call(np.zeros(RATE // 2), tone((1000.0,), 2500), np.zeros(RATE // 2))
    low = call(np.zeros(RATE // 2), tone((200.0,), 400), np.zeros(RATE // 2))
    assert detect(short) == []
    assert detect(long_) == []
    assert detect(low) == []


def test_a_ringback_burst_and_a_sweep_are_not_beeps() -> None:
    ring = call(tone((440.0, 480.0), 2000, dbfs=-18.0), np.zeros(RATE))
    assert detect(ring) == []
    # A chirp 500 -> 2000 Hz over 600 ms moves faster than the drift allowed in a beep.
    t = np.arange(int(0.6 * RATE)) / RATE
    chirp = np.sin(2 * np.pi * (500 * t + 1250 * t**2)) * 32767 * 0.25
    assert detect(call(np.zeros(RATE // 2), chirp, np.zeros(RATE // 2))) == []


def test_harmonic_buzz_like_a_vowel_is_not_a_beep() -> None:
    # 180 Hz fundamental with falling harmonics, like a sustained vowel: not a single tone.
    t = np.arange(int(0.5 * RATE)) / RATE
    vowel = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 12)) * 32767 * 0.1
    assert detect(call(np.zeros(RATE // 2), vowel, np.zeros(RATE // 2))) == []


def test_frame_size_and_8k_rate_do_not_change_the_result() -> None:
    pcm = call(np.zeros(RATE), tone((1000.0,), 500), np.zeros(RATE))
    by_frame = {n: detect(pcm, frame=n) for n in (160, 320, 1001)}
    assert by_frame[160] == by_frame[320] == by_frame[1001]
    pcm8 = pcm[::2].copy()  # 1 kHz is far below 4 kHz: decimation keeps the tone
    (b8,) = detect(pcm8, rate=8000, frame=160)
    (b16,) = by_frame[320]
    assert abs(b8.start_ms - b16.start_ms) <= 20
    assert abs(b8.freq_hz - b16.freq_hz) <= 5


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="sample rate"):
        BeepDetector(44100)
    det = BeepDetector(RATE, TUNED)
    with pytest.raises(ValueError, match="even"):
        det.feed(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="int16"):
        det.feed(np.zeros(320, dtype=np.float32))  # type: ignore[arg-type]
    det.feed(b"\x00\x00" * 320)  # still usable after a refused frame
    assert det.beeps == []
