"""Caller voices for the caller benchmark: several synthesis engines, plus real recorded digits.

Every voice renders text to an 8 kHz mono 16-bit WAV (telephone rate), with the engine's own
lead-in and tail trimmed and 300 ms of silence at both ends, as ``tests/e2e/voices.py`` does for
espeak-ng. Voices (none of them the agent's Kokoro voice):

* ``espeak-us``: espeak-ng ``en-us``, 140 wpm (the e2e tests' default caller);
* ``espeak-f``: espeak-ng ``en-us+f3``, 165 wpm (a faster female variant);
* ``festival-kal`` / ``festival-ked``: Festival's 8 kHz diphone voices (Debian packages
  festvox-kallpc8k, festvox-kdlpc8k) through ``text2wave``;
* ``hibari``: hibari-tts (PyPI), a Kokoro-distilled English ONNX voice, the ``heart`` voice that
  ships inside the wheel (no download: works offline), resampled from 24 kHz;
* ``espeak-es``: espeak-ng Spanish (``-v es``), for the Spanish-speaking caller only.

:func:`render` also takes ``{fsdd:0304 1982}`` markers inside the text: those digits are spoken by
a real recorded person (the Free Spoken Digit Dataset in ``../shared/data/speech/fsdd``, 8 kHz),
one recording per digit, joined with natural gaps (150-350 ms between digits, 400-600 ms where the
marker has a space: a group boundary). Text around a marker is spoken by the turn's voice.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 8000
PAD_S = 0.3
SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
FSDD = SPEECH / "fsdd"
FSDD_SPEAKERS = ("george", "jackson", "lucas")

#: Voice name -> (engine, parameters).
VOICES: dict[str, tuple[str, dict[str, object]]] = {
    "espeak-us": ("espeak", {"voice": "en-us", "wpm": 140, "gap": 2}),
    "espeak-f": ("espeak", {"voice": "en-us+f3", "wpm": 165, "gap": 1}),
    "festival-kal": ("festival", {"voice": "voice_kal_diphone"}),
    "festival-ked": ("festival", {"voice": "voice_ked_diphone"}),
    "hibari": ("hibari", {}),
    "espeak-es": ("espeak", {"voice": "es", "wpm": 150, "gap": 1}),
}
#: The English voices scripts rotate through.
ENGLISH = ("espeak-us", "espeak-f", "festival-kal", "festival-ked", "hibari")


def missing_tools(voices: list[str]) -> list[str]:
    """Programs or packages the given voices need that are not installed."""
    need = {"sox"}
    for name in voices:
        engine = VOICES[name][0]
        need.add({"espeak": "espeak-ng", "festival": "text2wave", "hibari": "hibari"}[engine])
    out = []
    for tool in sorted(need):
        if tool == "hibari":
            try:
                import hibari  # noqa: F401
            except ImportError:
                out.append("hibari-tts (pip)")
        elif shutil.which(tool) is None:
            out.append(tool)
    return out


def _engine_wav(text: str, voice: str, raw: Path) -> None:
    engine, p = VOICES[voice]
    if engine == "espeak":
        argv = [
            "espeak-ng", "-v", str(p["voice"]), "-s", str(p["wpm"]), "-g", str(p["gap"]),
            "-w", str(raw), "--", text,
        ]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True)  # noqa: S603
    elif engine == "festival":
        subprocess.run(  # noqa: S603
            ["text2wave", "-eval", f"({p['voice']})", "-o", str(raw)],  # noqa: S607
            input=text.encode(),
            check=True,
            capture_output=True,
        )
    else:  # hibari: the voice inside the wheel (no download), one thread, fixed noise seed
        hibari = Path(sys.executable).parent / "hibari"
        subprocess.run(  # noqa: S603
            [str(hibari), text, "--threads", "1", "--seed", "0", "-o", str(raw)],
            check=True,
            capture_output=True,
        )


def _to_8k(raw: Path, out: Path, pad: bool = True) -> None:
    argv = [
        "sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", str(out),
        "silence", "1", "0.005", "-60d", "reverse", "silence", "1", "0.005", "-60d", "reverse",
    ]  # fmt: skip
    if pad:
        argv += ["pad", str(PAD_S), str(PAD_S)]
    subprocess.run(argv, check=True, capture_output=True)  # noqa: S603


def _read(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 8 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def _write(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype(np.int16).tobytes())


def fsdd_available() -> bool:
    """Whether the FSDD recordings are where the benchmark reads them."""
    return (FSDD / "0_george_0.wav").exists()


def fsdd_digits(digits: str, rng: random.Random, speaker: str | None = None) -> np.ndarray:
    """Real recorded digits (one speaker), trimmed, joined with natural gaps.

    150-350 ms between digits, 400-600 ms at a space in ``digits`` (a group boundary). Returns
    8 kHz PCM without outer padding.
    """
    speaker = speaker or rng.choice(FSDD_SPEAKERS)
    parts: list[np.ndarray] = []
    groups = digits.split()
    with tempfile.TemporaryDirectory() as tmp:
        for g, group in enumerate(groups):
            for i, d in enumerate(group):
                src = FSDD / f"{d}_{speaker}_{rng.randrange(10)}.wav"
                trimmed = Path(tmp) / f"{g}_{i}.wav"
                _to_8k(src, trimmed, pad=False)
                parts.append(_read(trimmed))
                last = g == len(groups) - 1 and i == len(group) - 1
                if not last:
                    gap = rng.uniform(0.4, 0.6) if i == len(group) - 1 else rng.uniform(0.15, 0.35)
                    parts.append(np.zeros(int(gap * RATE), dtype=np.int16))
    return np.concatenate(parts)


def render(text: str, voice: str, out_dir: Path, *, seed: int = 0) -> Path:
    """Render one caller turn (``{fsdd:...}`` markers: real digits) as an 8 kHz WAV; cached."""
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}; known: {', '.join(VOICES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([text, voice, seed]).encode()).hexdigest()[:20]
    path = out_dir / f"turn-{voice}-{key}.wav"
    if path.exists():
        return path
    rng = random.Random(f"{text}|{seed}")
    pieces: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for k, chunk in enumerate(_split(text)):
            if chunk.startswith("{fsdd:"):
                pieces.append(fsdd_digits(chunk[6:-1], rng))
            else:
                raw = Path(tmp) / f"raw{k}.wav"
                staged = Path(tmp) / f"s{k}.wav"
                _engine_wav(chunk, voice, raw)
                _to_8k(raw, staged, pad=False)
                pieces.append(_read(staged))
            pieces.append(np.zeros(int(rng.uniform(0.15, 0.3) * RATE), dtype=np.int16))
        pad = np.zeros(int(PAD_S * RATE), dtype=np.int16)
        staged = Path(tmp) / "turn.wav"
        _write(staged, np.concatenate([pad, *pieces[:-1], pad]))
        staged.replace(path)
    return path


def _split(text: str) -> list[str]:
    import re

    chunks = [c.strip() for c in re.split(r"(\{fsdd:[0-9 ]+\})", text)]
    return [c for c in chunks if c and re.search(r"\w", c)]


def seconds(path: Path) -> float:
    """Duration of a WAV in seconds."""
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()
