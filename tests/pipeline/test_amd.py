"""Answering-machine detection on real audio: espeak-ng greetings, real recorded answers, silence.

The detector runs the model store's Silero VAD. Calls go through a phone line as in
``benchmarks/amd.py``: 8 kHz, G.711 mu-law, line noise, soxr to 16 kHz, fed in 20 ms frames.
"""

from __future__ import annotations

import asyncio
import audioop
import shutil
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from appliance.audio.amd import AnsweringMachineDetector, Decision
from tests.conftest import STORE, read_pcm, speech_dir

pytestmark = pytest.mark.pipeline

LINE = 8000
RATE = 16000
GREETING = (
    "Hi, you've reached the front desk of Maple Street Dental. We can't take your call "
    "right now. Please leave a message after the tone."
)


@pytest.fixture(scope="module")
def vad() -> Path:
    path = STORE / "vad" / "silero_vad.onnx"
    if not path.exists():
        pytest.skip(f"Silero VAD not in the model store at {path}; run ./build.sh setup")
    return path


def espeak(text: str, tmp: Path) -> np.ndarray:
    """espeak-ng en-us speech as 8 kHz int16 (soxr), or skip when espeak-ng is missing."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt install espeak-ng)")
    wav = tmp / "say.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)  # noqa: S603, S607
    pcm = read_pcm(wav, LINE)
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 0.01 * np.abs(pcm.astype(np.int32)).max())
    return pcm[loud[0] : loud[-1] + 1]  # espeak-ng's own lead-in and tail trimmed


def sil(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * LINE), dtype=np.int16)


def beep(freq: float, ms: int) -> np.ndarray:
    t = np.arange(int(LINE * ms / 1000)) / LINE
    return (np.sin(2 * np.pi * freq * t) * 32767 * 0.25).astype(np.int16)


def phone_line(*parts: np.ndarray) -> np.ndarray:
    """8 kHz parts -> line noise at -55 dBFS, G.711 mu-law round trip, 16 kHz (soxr)."""
    x = np.concatenate(parts).astype(np.float64)
    x += np.random.default_rng(7).normal(0.0, 32767 * 10 ** (-55 / 20), len(x))
    pcm = np.clip(x, -32768, 32767).astype(np.int16).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pcm = audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)
    return soxr.resample(np.frombuffer(pcm, dtype=np.int16), LINE, RATE).astype(np.int16)


def feed_all(det: AnsweringMachineDetector, pcm: np.ndarray) -> None:
    for i in range(0, len(pcm), 320):
        det.feed(pcm[i : i + 320].tobytes())


def test_espeak_greeting_with_beep_is_a_machine_and_the_beep_is_found(
    vad: Path, tmp_path: Path
) -> None:
    greeting = espeak(GREETING, tmp_path)
    lead, gap = sil(0.6), sil(0.5)
    beep_ms = (len(lead) + len(greeting) + len(gap)) * 1000 // LINE
    det = AnsweringMachineDetector(vad)
    feed_all(det, phone_line(lead, greeting, gap, beep(1000.0, 400), sil(3.0)))
    assert det.result is not None
    assert det.result.decision is Decision.MACHINE
    assert det.result.cause in {"long_greeting", "max_words", "long_word"}
    assert det.result.decided_at_ms < beep_ms  # decided from the speech, before the beep
    assert det.beep_at_ms is not None and abs(det.beep_at_ms - beep_ms) <= 100
    cue = det.message_cue
    assert cue is not None and cue.cause == "beep"
    assert beep_ms + 400 <= cue.at_ms <= beep_ms + 400 + 250  # speak after the beep


def test_real_recorded_short_answer_is_a_human(vad: Path) -> None:
    # A real person's single word (FSDD, 8 kHz): as short as a "hello?", then waiting.
    word = read_pcm(speech_dir() / "fsdd" / "0_jackson_3.wav", LINE)
    again = read_pcm(speech_dir() / "fsdd" / "8_jackson_1.wav", LINE)
    det = AnsweringMachineDetector(vad)
    feed_all(det, phone_line(sil(0.4), word, sil(2.0), again, sil(4.0)))
    assert det.result is not None
    assert det.result.decision is Decision.HUMAN
    assert det.result.cause == "after_greeting_silence"
    assert 800 <= det.result.decided_at_ms <= 2600
    assert det.beep_at_ms is None
    assert det.message_cue is None  # no voicemail cue for a live person


def test_real_recorded_long_speech_is_a_machine(vad: Path) -> None:
    # Harvard sentences read by a real speaker, continuously: a greeting's pattern.
    osr = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", LINE)[: 12 * LINE]
    det = AnsweringMachineDetector(vad)
    feed_all(det, phone_line(osr, sil(1.0)))
    assert det.result is not None and det.result.decision is Decision.MACHINE


def test_silence_is_unknown_after_the_initial_silence_timeout(vad: Path) -> None:
    det = AnsweringMachineDetector(vad)
    feed_all(det, phone_line(sil(8.0)))
    assert det.result is not None
    assert det.result.decision is Decision.UNKNOWN
    assert det.result.cause == "initial_silence"
    assert det.result.decided_at_ms == pytest.approx(det.params.initial_silence_ms, abs=64)


def test_greeting_without_beep_is_a_machine_with_the_end_of_greeting_fallback(
    vad: Path, tmp_path: Path
) -> None:
    greeting = espeak(GREETING.replace(" after the tone", ""), tmp_path)
    lead = sil(0.3)
    end_ms = (len(lead) + len(greeting)) * 1000 // LINE
    det = AnsweringMachineDetector(vad)

    async def frames() -> AsyncIterator[bytes]:
        pcm = phone_line(lead, greeting, sil(6.0))
        for i in range(0, len(pcm), 320):
            yield pcm[i : i + 320].tobytes()

    async def run() -> None:
        it = frames()
        result = await det.decide(it)
        assert result.decision is Decision.MACHINE
        cue = await det.wait_for_beep(it)
        assert cue.cause == "greeting_end"
        assert cue.beep is None
        silence_ms = det.params.greeting_end_silence_ms
        assert end_ms + silence_ms - 300 <= cue.at_ms <= end_ms + silence_ms + 500

    asyncio.run(run())


def test_bad_frames_are_refused_and_the_detector_keeps_going(vad: Path) -> None:
    det = AnsweringMachineDetector(vad)
    with pytest.raises(ValueError, match="even"):
        det.feed(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="sample rate"):
        AnsweringMachineDetector(vad, sample_rate=44100)
    feed_all(det, phone_line(sil(4.0)))
    assert det.result is not None and det.result.decision is Decision.UNKNOWN


def test_a_loaded_silero_model_is_reset_and_gives_the_same_decision(vad: Path) -> None:
    from pipecat.audio.vad.silero import SileroOnnxModel

    osr = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", LINE)[: 6 * LINE]
    word = read_pcm(speech_dir() / "fsdd" / "3_lucas_2.wav", LINE)
    greeting, answer = phone_line(osr, sil(1.0)), phone_line(sil(0.5), word, sil(4.0))
    model = SileroOnnxModel(str(vad), force_onnx_cpu=True)
    results = []
    for pcm in (greeting, answer, greeting):  # one session reused call after call
        det = AnsweringMachineDetector(model)
        feed_all(det, pcm)
        results.append(det.result)
    fresh = AnsweringMachineDetector(vad)
    feed_all(fresh, answer)
    assert [r.decision if r else None for r in results] == [
        Decision.MACHINE,
        Decision.HUMAN,
        Decision.MACHINE,
    ]
    assert results[0] == results[2]
    assert results[1] == fresh.result
