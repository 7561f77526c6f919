"""Caller audio for end-to-end tests: the OSR Harvard sentences, split and turned into pcaps."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tests.conftest import read_pcm, speech_dir
from tests.kit.pcap import pcm_to_rtp_pcap

RATE = 8000


def osr_sentences() -> tuple[list[np.ndarray], list[str]]:
    """The ten OSR sentences as 8 kHz int16 arrays, with their transcripts.

    The recording is split at its nine longest pauses (20 ms frame energy), which is where the
    reader paused between sentences.
    """
    root = speech_dir()
    pcm = read_pcm(root / "osr" / "OSR_us_000_0034_8k.wav", RATE)
    with (root / "manifest.tsv").open() as f:
        row = next(r for r in csv.DictReader(f, delimiter="\t") if r["path"].startswith("osr/"))
    texts = [t.strip() + "." for t in row["transcript"].split(".") if t.strip()]
    frame = RATE // 50
    n = len(pcm) // frame
    level = np.sqrt(np.mean(pcm[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    quiet = level < 200.0  # about -44 dBFS: the pauses between read sentences
    voiced = np.flatnonzero(~quiet)
    first, last = int(voiced[0]), int(voiced[-1])
    runs: list[tuple[int, int]] = []  # (length, start) of quiet runs inside the speech
    i = first
    while i < last:
        if quiet[i]:
            j = i
            while j < last and quiet[j]:
                j += 1
            runs.append((j - i, i))
            i = j
        else:
            i += 1
    cuts = sorted(start + length // 2 for length, start in sorted(runs, reverse=True)[:9])
    lead = max(0, first - 10) * frame
    tail = min(n, last + 10) * frame
    bounds = [lead, *[c * frame for c in cuts], tail]
    parts = [pcm[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return parts, texts


def sentence_pcap(index: int, path: Path, *, trailing_ms: int = 0) -> tuple[Path, str, float]:
    """Write OSR sentence ``index`` as an RTP/PCMU pcap; returns (path, transcript, seconds)."""
    parts, texts = osr_sentences()
    seconds = pcm_to_rtp_pcap(
        parts[index].tobytes(), RATE, path, codec="PCMU", trailing_silence_ms=trailing_ms
    )
    return path, texts[index], seconds
