"""The caller's voice for end-to-end tests: espeak-ng speech, 8 kHz, as WAV or RTP pcap.

The agent speaks with Kokoro; the simulated caller must come from a different engine so a test
never passes because the STT happens to like one synthesiser's output on both sides. espeak-ng
(formant synthesis) renders the text, sox resamples it to 8 kHz mono 16-bit (telephone rate),
trims espeak-ng's own silence and pads 300 ms at both ends, and :func:`caller_pcap` turns it
into an RTP pcap for sipp's ``Play`` step.

The default voice and speed were chosen by measuring faster-whisper tiny.en's word error rate
on typical caller phrases (see ``test_voices.py``).

Needs the ``espeak-ng`` and ``sox`` programs (Debian packages espeak-ng, sox).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.kit.pcap import pcm_to_rtp_pcap, read_wav_mono16

RATE = 8000
PAD_S = 0.3
# Measured with faster-whisper tiny.en on the phrases in test_voices.py, sent as PCMU (corpus
# WER, the appliance's normalisation). Gaps between words helped most (0.24-0.34 with none,
# 0.17-0.21 with 20 ms, 0.11-0.15 with 80 ms). With 80 ms, en-us scored 0.13, 0.12, 0.15, 0.11,
# 0.13 at 130-170 wpm and always got "Yes, that's right." and "No." right; en-us+m3 and
# en-us+f2 scored as well overall but turned "No." into "So" / "Don't mind" at some speeds.
# Through the live pipeline, though, 80 ms gaps leave 200-220 ms of silence inside phrases, which
# the agent's endpointing (Silero VAD stop at 0.2 s, then smart-turn) takes for the end of a turn
# ("Let me..." | "Talk to us."): 20 ms keeps every inner silence at or under 120 ms but commas.
DEFAULT_VOICE = "en-us"
DEFAULT_SPEED_WPM = 140
DEFAULT_WORD_GAP_MS = 20


def tools_missing() -> list[str]:
    """Return the names of the programs this module needs that are not installed."""
    return [name for name in ("espeak-ng", "sox") if shutil.which(name) is None]


def _key(text: str, voice: str, speed_wpm: int, word_gap_ms: int) -> str:
    params = [text, voice, int(speed_wpm), int(word_gap_ms)]
    blob = json.dumps(params, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]


def caller_wav(
    text: str,
    out_dir: Path,
    *,
    voice: str = DEFAULT_VOICE,
    speed_wpm: int = DEFAULT_SPEED_WPM,
    word_gap_ms: int = DEFAULT_WORD_GAP_MS,
) -> Path:
    """Render ``text`` as the caller's voice: 8 kHz mono 16-bit WAV with 300 ms padding.

    The file is cached in ``out_dir`` under the sha256 of (text, voice, speed, word gap); an
    existing file is returned as is.

    Args:
        text: What the caller says.
        out_dir: Directory for the WAV (created if missing).
        voice: espeak-ng voice, e.g. "en-us", "en-us+m3", "en-us+f2".
        speed_wpm: Speaking rate in words per minute (espeak-ng ``-s``).
        word_gap_ms: Extra pause between words (espeak-ng ``-g``, 10 ms steps), 0 for none.

    Returns:
        The WAV path.

    Raises:
        FileNotFoundError: espeak-ng or sox is not installed.
        ValueError: ``text`` is empty.
        subprocess.CalledProcessError: espeak-ng or sox failed.
    """
    if not text.strip():
        raise ValueError("nothing to say")
    missing = tools_missing()
    if missing:
        names = " ".join(missing)
        raise FileNotFoundError(f"not installed: {names} (apt-get install {names})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"caller-{_key(text, voice, speed_wpm, word_gap_ms)}.wav"
    if path.exists():
        return path
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = Path(tmp) / "espeak.wav"
        staged = Path(tmp) / "caller.wav"
        gap = str(max(0, round(word_gap_ms / 10)))  # espeak-ng -g counts 10 ms steps
        # "--" so a text starting with "-" is not taken for an option.
        speak = [
            "espeak-ng", "-v", voice, "-s", str(int(speed_wpm)), "-g", gap, "-w", str(raw),
            "--", text,
        ]  # fmt: skip
        # espeak-ng's own lead-in and tail vary: trim them (below -60 dBFS), then pad.
        convert = [
            "sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
            str(staged),
            "silence", "1", "0.005", "-60d", "reverse", "silence", "1", "0.005", "-60d",
            "reverse", "pad", str(PAD_S), str(PAD_S),
        ]  # fmt: skip
        for argv in (speak, convert):
            subprocess.run(argv, check=True, capture_output=True)  # noqa: S603 - fixed argv
        staged.replace(path)  # atomic: parallel tests never see a half-written file
    return path


def caller_pcap(
    text: str,
    out_dir: Path,
    codec: str = "PCMU",
    *,
    voice: str = DEFAULT_VOICE,
    speed_wpm: int = DEFAULT_SPEED_WPM,
    word_gap_ms: int = DEFAULT_WORD_GAP_MS,
) -> Path:
    """Render ``text`` (see :func:`caller_wav`) as an RTP pcap of ``codec`` for sipp's ``Play``.

    Args:
        text: What the caller says.
        out_dir: Directory for the WAV and pcap (cached like the WAV).
        codec: "PCMU" or "PCMA"; must be among the codecs the scenario offers.
        voice: espeak-ng voice.
        speed_wpm: Speaking rate in words per minute.
        word_gap_ms: Extra pause between words in milliseconds.

    Returns:
        The pcap path.
    """
    wav = caller_wav(text, out_dir, voice=voice, speed_wpm=speed_wpm, word_gap_ms=word_gap_ms)
    path = wav.with_name(f"{wav.stem}-{codec.upper()}.pcap")
    if not path.exists():
        pcm, rate = read_wav_mono16(wav)
        staged = path.with_name(f".{path.name}.{id(pcm):x}.tmp")
        pcm_to_rtp_pcap(pcm, rate, staged, codec=codec)
        staged.replace(path)
    return path
