"""Answering-machine detection benchmark: live answers against voicemail greetings on a phone line.

Run: ``.venv/bin/python -m benchmarks.amd [--set report|tune|both] [--cache DIR]``. Prints a table
and writes JSON to ``benchmarks/results/amd-<timestamp>.json``.

What is measured: :class:`appliance.audio.amd.AnsweringMachineDetector` fed each answered call's
audio in 20 ms frames (16 kHz, as the pipeline delivers it), once with Asterisk ``AMD()``'s
default thresholds (the reference: :data:`~appliance.audio.amd.ASTERISK_DEFAULTS`) and once with
the tuned ones (:data:`~appliance.audio.amd.TUNED`), on two disjoint sets:

* ``tune``: the set the thresholds were tuned on: espeak-ng ``en-us`` and Festival ``kal``,
  one list of wordings, Harvard sentences 1-5 and FSDD speaker ``george``;
* ``report``: other wordings and other voices: espeak-ng ``en-us+f3``, Festival ``ked``,
  hibari-tts (a Kokoro-distilled ONNX voice), Harvard sentences 6-10 and FSDD speakers
  ``jackson`` and ``lucas``.

Real recorded speech (``../shared/data/speech``): a live answer is one real spoken word (FSDD,
e.g. "zero", the length of a "hello?") or one real Harvard sentence (a long live answer); a
greeting is two or three real Harvard sentences in a row, with a synthetic beep appended or not.

Every call: a lead-in (silence with line noise, 0.1-1.2 s; or the tail of a US ringback,
440+480 Hz, for 2 s, then 0.3-0.8 s of silence), then the answer. A live person says their line,
waits 1.5-2.5 s and, half the time, says "Hello?" again; the call then stays silent. A greeting is
followed after 0.2-0.9 s by a beep (three in four: 400-2000 Hz, 150-900 ms, -16 to -6 dBFS) and
by silence (the machine records). All audio is 8 kHz (every voice is band-limited there by sox,
as ``benchmarks/caller_voices.py`` renders callers), has white line noise added at -62 to -52 dBFS,
goes through G.711 mu-law and back, and is resampled to 16 kHz with soxr (the pipeline's rate).

``--grid`` also runs the threshold search that chose :data:`~appliance.audio.amd.TUNED` (on
the tuning set only; :data:`GRID`), and stores every point's accuracy in the JSON.

Figures: for ``machine``, precision and recall; accuracy over all calls (``unknown`` counts as
wrong); the ``unknown`` rate; time to decide (audio time from the answer, lead-in included)
P50/P90; the beep: found within +-100 ms of the true onset, onset error P50/P90, false beeps
(calls without a beep where one was reported), and the message cue (for calls with a beep: the
share cued 0-300 ms after the beep's true end, and how long after it; for greetings without
one: cued at the greeting's end); the detector's CPU time per
second of audio.
"""

from __future__ import annotations

import argparse
import audioop
import json
import random
import time
import warnings
import wave
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import soxr

from appliance.audio.amd import (
    ASTERISK_DEFAULTS,
    TUNED,
    AmdParams,
    AnsweringMachineDetector,
    Decision,
)
from benchmarks.caller_voices import SPEECH, missing_tools, render
from benchmarks.run import RESULTS, device

REPO = Path(__file__).resolve().parents[1]
VAD = REPO / "models" / "store" / "vad" / "silero_vad.onnx"
LINE = 8000
RATE = 16000
OSR = SPEECH / "osr" / "OSR_us_000_0034_8k.wav"
FSDD = SPEECH / "fsdd"

GREETINGS = {
    "tune": [
        "Hi, you've reached the Millers. We can't come to the phone right now. "
        "Please leave a message after the tone.",
        "Hello, this is Mark. Sorry I missed your call. Leave your name and number and "
        "I'll get back to you.",
        "The person you are calling is not available. Please leave a message after the tone.",
        "You have reached the voicemail of Susan Park. Please leave a message.",
        "Thanks for calling. I'm away from my desk. Leave a message and I will call you back "
        "as soon as I can.",
        "Hey, it's Jen. Leave a message.",
        "The number you have dialed is not available. At the tone, please record your message.",
        "Hi, this is the Garcia family. We're not home right now, please leave a message at "
        "the beep.",
        "Your call has been forwarded to an automatic voice message system. Please record your "
        "message after the tone.",
        "Hello. You've reached Tom and Lisa. We'll call you back.",
    ],
    "report": [
        "Hi, you've reached Dana Whitfield. I can't take your call right now, but if you leave "
        "a message after the tone, I'll return it.",
        "The person you are trying to reach is unavailable. Please leave a message after the "
        "tone. When you are finished, hang up.",
        "Please leave a message after the tone.",
        "Hello, you have reached the office of Robert Chen. I am either on the phone or away. "
        "Please leave your name, number and a brief message.",
        "Hi, this is Carlos. I'm out right now. Leave a message and have a great day.",
        "The subscriber you have called is not available. Please try again later, or leave a "
        "message after the beep.",
        "Hey there, you got Amy's phone. You know what to do.",
        "Thank you for calling the Johnson residence. No one is available to take your call. "
        "Please leave a message.",
        "You've reached the mailbox of Patrick O'Neil. Please speak clearly and leave your "
        "number after the tone.",
        "Hi, it's Maria. Sorry I missed you. Text me or leave a message.",
        "This mailbox is full and cannot accept any messages at this time. Goodbye.",
        "At the tone, please record your message. When you have finished recording, you may "
        "hang up or press one for more options.",
    ],
}
LIVE = {
    "tune": [
        "Hello, yes?",
        "Yes?",
        "Hi, who's calling?",
        "Hello, this is Mike.",
        "Good morning.",
        "Hello, Smith residence.",
        "Hey.",
        "This is Karen.",
        "Hello, can I help you?",
        "Hi there.",
    ],
    "report": [
        "Hello?",
        "Yeah, hello.",
        "Doctor Smith's office, this is Ann.",
        "Hello, who is this?",
        "Hi.",
        "Speaking.",
        "Hello, Jones household.",
        "Yep, go ahead.",
        "Good afternoon, this is Paul.",
        "Uh, hello?",
        "Hi, this is Rachel, who's calling please?",
        "Hello, hi.",
    ],
}
VOICES = {"tune": ("espeak-us", "festival-kal"), "report": ("espeak-f", "festival-ked", "hibari")}
#: Harvard sentences (0-based, of the ten in the OSR file) and FSDD speakers per set.
REAL = {"tune": (range(0, 5), ("george",)), "report": (range(5, 10), ("jackson", "lucas"))}


@dataclass
class Call:
    """One answered call: 16 kHz samples and the truth."""

    name: str
    set: str
    source: str  # voice name, or "real"
    truth: str  # "human" or "machine"
    pcm: np.ndarray
    beep_ms: int | None  # true beep onset (ms since the answer), when there is a beep
    beep_end_ms: int | None
    greeting_end_ms: int | None  # machines: end of the greeting's speech


def read8k(path: Path) -> np.ndarray:
    """A WAV as 8 kHz int16 (soxr when it is at another rate)."""
    with wave.open(str(path), "rb") as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm if rate == LINE else soxr.resample(pcm, rate, LINE).astype(np.int16)


def trim(pcm: np.ndarray, floor_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing silence (10 ms frames below ``floor_db`` of the peak)."""
    n = len(pcm) // 80
    e = (pcm[: n * 80].astype(np.float64).reshape(n, 80) ** 2).mean(axis=1) + 1e-9
    db = 10 * np.log10(e / e.max())
    loud = np.flatnonzero(db > floor_db)
    return pcm[loud[0] * 80 : (loud[-1] + 1) * 80] if len(loud) else pcm


def harvard_sentences() -> list[np.ndarray]:
    """The ten Harvard sentences of the OSR recording, split at its long pauses (data prep)."""
    pcm = read8k(OSR)
    n = len(pcm) // 80
    e = (pcm[: n * 80].astype(np.float64).reshape(n, 80) ** 2).mean(axis=1) + 1e-9
    loud = 10 * np.log10(e / e.max()) > -35
    segs: list[tuple[int, int]] = []
    start, quiet = None, 0
    for i, v in enumerate(loud):
        if v:
            start = i if start is None else start
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= 50:  # 500 ms pause: a sentence boundary
                segs.append((start, i - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        segs.append((start, n))
    segs = [s for s in segs if s[1] - s[0] >= 60]
    if len(segs) == 11:  # the tenth sentence pauses 1.4 s after "when you hear the bell,"
        segs[-2:] = [(segs[-2][0], segs[-1][1])]
    if len(segs) != 10:
        raise RuntimeError(f"expected 10 Harvard sentences in {OSR}, found {len(segs)}")
    return [pcm[a * 80 : b * 80] for a, b in segs]


def fsdd_word(digit: int, speaker: str, take: int) -> np.ndarray:
    """One real spoken digit (FSDD, 8 kHz), trimmed."""
    return trim(read8k(FSDD / f"{digit}_{speaker}_{take}.wav"))


def silence(s: float) -> np.ndarray:
    """``s`` seconds of digital silence at 8 kHz (line noise is added later)."""
    return np.zeros(int(s * LINE), dtype=np.int16)


def tone(freqs: tuple[float, ...], ms: int, dbfs: float) -> np.ndarray:
    """A tone (sum of sines, equal level) at 8 kHz with 5 ms ramps."""
    t = np.arange(int(LINE * ms / 1000)) / LINE
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    ramp = np.minimum(1.0, np.minimum(np.arange(len(t)), np.arange(len(t))[::-1]) / 40)
    return (x * ramp * 32767 * 10 ** (dbfs / 20)).astype(np.int16)


def lead_in(rng: random.Random) -> np.ndarray:
    """Silence, or a 2 s US ringback burst (440+480 Hz, -18 dBFS, FCC/ANSI T1.401) then silence."""
    if rng.random() < 0.25:
        return np.concatenate([tone((440.0, 480.0), 2000, -18.0), silence(rng.uniform(0.3, 0.8))])
    return silence(rng.uniform(0.1, 1.2))


def line(pcm8k: np.ndarray, rng: random.Random) -> np.ndarray:
    """Phone line: white noise, G.711 mu-law round trip, soxr to 16 kHz."""
    noise_db = rng.uniform(-62, -52)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(
        0, 32767 * 10 ** (noise_db / 20), len(pcm8k)
    )
    x = np.clip(pcm8k.astype(np.float64) + noise, -32768, 32767).astype(np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        x = np.frombuffer(audioop.ulaw2lin(audioop.lin2ulaw(x.tobytes(), 2), 2), dtype=np.int16)
    return soxr.resample(x, LINE, RATE).astype(np.int16)


def human_call(
    name: str,
    set_: str,
    source: str,
    speech: np.ndarray,
    again: np.ndarray | None,
    rng: random.Random,
) -> Call:
    """A live answer: lead-in, the line, a wait, maybe "Hello?" again, then silence (8 s+)."""
    parts = [lead_in(rng), speech, silence(rng.uniform(1.5, 2.5))]
    if again is not None:
        parts.append(again)
    pcm = np.concatenate(parts)
    pcm = np.concatenate([pcm, silence(max(0.0, 8.0 - len(pcm) / LINE) + 1.0)])
    return Call(name, set_, source, "human", line(pcm, rng), None, None, None)


def machine_call(
    name: str, set_: str, source: str, greeting: np.ndarray, rng: random.Random, beep: bool
) -> Call:
    """A greeting: lead-in, the greeting, a gap, maybe a beep, then 4 s of recording silence."""
    head = np.concatenate([lead_in(rng), greeting])
    end_ms = len(head) * 1000 // LINE
    gap = silence(rng.uniform(0.2, 0.9))
    parts = [head, gap]
    beep_ms = beep_end = None
    if beep:
        freq = rng.choice((425.0, 440.0, 500.0, 850.0, 1000.0, 1400.0, 1800.0, 2000.0))
        ms = rng.randrange(150, 901)
        beep_ms = (len(head) + len(gap)) * 1000 // LINE
        beep_end = beep_ms + ms
        parts.append(tone((freq,), ms, rng.uniform(-16, -6)))
    parts.append(silence(4.0))
    return Call(
        name, set_, source, "machine", line(np.concatenate(parts), rng), beep_ms, beep_end, end_ms
    )


def build(set_: str, cache: Path) -> list[Call]:
    """The calls of one set (deterministic: seeded by the set's name)."""
    rng = random.Random(f"amd-{set_}")
    calls: list[Call] = []
    hello = read8k(render("Hello?", VOICES[set_][0], cache))
    for vi, voice in enumerate(VOICES[set_]):
        for k, text in enumerate(GREETINGS[set_]):
            wav = trim(read8k(render(text, voice, cache)))
            beep = (k + vi) % 4 != 3 and "mailbox is full" not in text
            calls.append(machine_call(f"{set_}/{voice}/greeting{k}", set_, voice, wav, rng, beep))
        for k, text in enumerate(LIVE[set_]):
            wav = trim(read8k(render(text, voice, cache)))
            again = trim(read8k(render("Hello?", voice, cache))) if (k + vi) % 2 else None
            calls.append(human_call(f"{set_}/{voice}/live{k}", set_, voice, wav, again, rng))
    sentences = harvard_sentences()
    idx, speakers = REAL[set_]
    ids = list(idx)
    for n, (a, b) in enumerate([(a, b) for a in ids for b in ids if a < b]):
        parts = [sentences[a], silence(rng.uniform(0.3, 0.6)), sentences[b]]
        if n % 3 == 0:  # three sentences now and then
            parts += [silence(rng.uniform(0.3, 0.6)), sentences[(b + 1) % 10]]
        calls.append(
            machine_call(
                f"{set_}/real/greeting{a}-{b}", set_, "real", np.concatenate(parts), rng, n % 4 != 3
            )
        )
    digits = rng.sample(range(10), 6) if set_ == "tune" else list(range(10))
    for s in speakers:
        for d in digits[: 12 // len(speakers) if set_ == "report" else 6]:
            word = fsdd_word(d, s, rng.randrange(10))
            again = fsdd_word(rng.randrange(10), s, rng.randrange(10)) if d % 2 else None
            calls.append(human_call(f"{set_}/real/live-{s}-{d}", set_, "real", word, again, rng))
    for i in list(idx)[:2]:  # a long live answer: one real sentence, then waiting
        calls.append(
            human_call(f"{set_}/real/live-sentence{i}", set_, "real", sentences[i], None, rng)
        )
    del hello
    return calls


def run_one(call: Call, params: AmdParams) -> dict[str, object]:
    """Feed one call in 20 ms frames; the decision, its time, the beep and the message cue."""
    det = AnsweringMachineDetector(VAD, params)
    t0 = time.perf_counter()
    for i in range(0, len(call.pcm), 320):
        det.feed(call.pcm[i : i + 320])
    cpu_s = time.perf_counter() - t0
    res, cue = det.result, det.message_cue
    beep = det.beep_detector.beeps[0] if det.beep_detector.beeps else None
    return {
        "name": call.name,
        "truth": call.truth,
        "decision": res.decision.value if res else "unknown",
        "cause": res.cause if res else "none",
        "decided_ms": res.decided_at_ms if res else None,
        "true_beep_ms": call.beep_ms,
        "beep_ms": beep.start_ms if beep else None,
        "beep_hz": beep.freq_hz if beep else None,
        "cue_ms": cue.at_ms if cue else None,
        "cue": cue.cause if cue else None,
        "true_beep_end_ms": call.beep_end_ms,
        "greeting_end_ms": call.greeting_end_ms,
        "audio_s": round(len(call.pcm) / RATE, 2),
        "cpu_ms": round(cpu_s * 1000, 1),
    }


class Replay:
    """Recorded Silero probabilities played back, one per 32 ms window (threshold search)."""

    def __init__(self, probs: list[float]) -> None:
        self._probs = iter(probs)

    def __call__(self, window: np.ndarray, sample_rate: int) -> np.ndarray:
        """The next recorded probability, shaped as Silero's output."""
        return np.array([[next(self._probs)]], dtype=np.float32)


def record_probs(call: Call) -> list[float]:
    """Silero's speech probability for every 32 ms window of a call (the store's model)."""
    from pipecat.audio.vad.silero import SileroOnnxModel

    model = SileroOnnxModel(str(VAD), force_onnx_cpu=True)
    x = call.pcm.astype(np.float32) / 32768.0
    return [float(model(x[i : i + 512], RATE)[0][0]) for i in range(0, len(x) - 511, 512)]


#: The threshold search (``--grid``, tuning set only): Asterisk's parameters around their defaults.
GRID = {
    "greeting_ms": (1500, 2000, 2400, 2800),
    "after_greeting_silence_ms": (800, 1000, 1200),
    "between_words_silence_ms": (50, 250),
    "max_words": (3, 5),
    "initial_silence_ms": (2500, 3500),
}


def grid_search(calls: list[Call]) -> list[dict[str, object]]:
    """Accuracy of every GRID point on ``calls`` (total analysis 6000 ms), best first.

    Ties are broken by the lower P50 time to decide. Silero runs once per call; its
    probabilities are replayed for every point, so the search takes minutes, not hours.
    """
    import itertools

    probs = {c.name: record_probs(c) for c in calls}
    out: list[dict[str, object]] = []
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values, strict=True))
        params = replace(ASTERISK_DEFAULTS, total_analysis_ms=6000, **point)  # type: ignore[arg-type]
        right, times = 0, []
        for c in calls:
            det = AnsweringMachineDetector(Replay(probs[c.name]), params)
            for i in range(0, len(c.pcm), 320):
                det.feed(c.pcm[i : i + 320])
            res = det.result
            right += res is not None and res.decision.value == c.truth
            if res is not None and res.decision is not Decision.UNKNOWN:
                times.append(res.decided_at_ms)
        p50 = pct(times, 50)
        out.append({**point, "accuracy": round(right / len(calls), 3), "decide_p50_ms": p50})
    out.sort(key=lambda r: (-float(r["accuracy"]), r["decide_p50_ms"] or 1e9))  # type: ignore[arg-type]
    return out


def pct(xs: list[float], q: float) -> float | None:
    """Percentile, or None for no data."""
    return round(float(np.percentile(xs, q)), 1) if xs else None


def summarise(rows: list[dict]) -> dict[str, object]:  # type: ignore[type-arg]
    """Precision/recall for machine, accuracy, unknown rate, time to decide, beep figures."""
    tp = sum(r["truth"] == "machine" and r["decision"] == "machine" for r in rows)
    fp = sum(r["truth"] == "human" and r["decision"] == "machine" for r in rows)
    machines = sum(r["truth"] == "machine" for r in rows)
    humans = len(rows) - machines
    correct = sum(r["truth"] == r["decision"] for r in rows)
    unknown = sum(r["decision"] == Decision.UNKNOWN.value for r in rows)
    decided = [r["decided_ms"] for r in rows if r["decision"] != "unknown"]
    human_ok = sum(r["truth"] == "human" and r["decision"] == "human" for r in rows)
    with_beep = [r for r in rows if r["true_beep_ms"] is not None]
    no_beep = [r for r in rows if r["true_beep_ms"] is None]
    errs = [abs(r["beep_ms"] - r["true_beep_ms"]) for r in with_beep if r["beep_ms"] is not None]
    within = sum(e <= 100 for e in errs)
    cue_errs = [r["cue_ms"] - r["true_beep_end_ms"] for r in with_beep if r["cue_ms"] is not None]
    cue_after = sum(0 <= e <= 300 for e in cue_errs)
    nb_machines = [r for r in no_beep if r["truth"] == "machine" and r["decision"] == "machine"]
    cue_end = sum(r["cue"] == "greeting_end" for r in nb_machines)
    audio_s = sum(r["audio_s"] for r in rows)
    return {
        "calls": len(rows),
        "machines": machines,
        "humans": humans,
        "machine_precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "machine_recall": round(tp / machines, 3) if machines else None,
        "human_recall": round(human_ok / humans, 3) if humans else None,
        "accuracy": round(correct / len(rows), 3),
        "unknown_rate": round(unknown / len(rows), 3),
        "decide_p50_ms": pct(decided, 50),
        "decide_p90_ms": pct(decided, 90),
        "beeps": len(with_beep),
        "beep_found_within_100ms": round(within / len(with_beep), 3) if with_beep else None,
        "beep_onset_err_p50_ms": pct(errs, 50),
        "beep_onset_err_p90_ms": pct(errs, 90),
        "false_beeps": sum(r["beep_ms"] is not None for r in no_beep),
        "calls_without_beep": len(no_beep),
        "cue_0_300ms_after_beep_end": round(cue_after / len(with_beep), 3) if with_beep else None,
        "cue_after_beep_end_p50_ms": pct(cue_errs, 50),
        "cue_after_beep_end_p90_ms": pct(cue_errs, 90),
        "cue_greeting_end_no_beep": f"{cue_end}/{len(nb_machines)}",
        "cpu_ms_per_audio_s": round(sum(r["cpu_ms"] for r in rows) / audio_s, 2),
    }


def main() -> int:
    """Build the sets, run both parameter sets on them, print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("report", "tune", "both"), default="both")
    ap.add_argument("--cache", type=Path, default=REPO / "build" / "amd-voices")
    ap.add_argument("--errors", action="store_true", help="list every wrong decision")
    ap.add_argument(
        "--grid", action="store_true", help="also run the threshold search on the tuning set"
    )
    args = ap.parse_args()
    sets = ("tune", "report") if args.set == "both" else (args.set,)
    voices = sorted({v for s in sets for v in VOICES[s]})
    if missing := missing_tools(voices):
        raise SystemExit(f"missing voice tools: {', '.join(missing)}")
    if not OSR.exists() or not FSDD.exists():
        raise SystemExit(f"real speech not found under {SPEECH}")
    if not VAD.exists():
        raise SystemExit(f"Silero VAD not in the model store: {VAD} (./build.sh setup)")
    t0 = time.perf_counter()
    calls = {s: build(s, args.cache) for s in sets}
    build_s = time.perf_counter() - t0
    profiles = {"asterisk_defaults": ASTERISK_DEFAULTS, "tuned": TUNED}
    result: dict[str, object] = {
        "device": device(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "params": {k: asdict(v) for k, v in profiles.items()},
        "build_s": round(build_s, 1),
        "sets": {},
    }
    print(f"\nDevice: {result['device']}")
    head = (
        f"{'set':7} {'params':18} {'calls':>5} {'M prec':>6} {'M rec':>6} {'H rec':>6} "
        f"{'acc':>6} {'unk':>5} {'P50 ms':>7} {'P90 ms':>7} {'beep±100':>8} {'err P90':>7} "
        f"{'false':>5} {'cue ok':>6}"
    )
    print(head)
    for s, cs in calls.items():
        by_source: dict[str, int] = {}
        for c in cs:
            key = f"{c.source}/{c.truth}"
            by_source[key] = by_source.get(key, 0) + 1
        set_out: dict[str, object] = {"composition": by_source}
        for pname, params in profiles.items():
            rows = [run_one(c, params) for c in cs]
            summ = summarise(rows)
            per_source = {
                src: summarise([r for r, c in zip(rows, cs, strict=True) if c.source == src])
                for src in sorted({c.source for c in cs})
            }
            set_out[pname] = {"summary": summ, "by_source": per_source, "calls": rows}
            print(
                f"{s:7} {pname:18} {summ['calls']:>5} {summ['machine_precision']!s:>6} "
                f"{summ['machine_recall']!s:>6} {summ['human_recall']!s:>6} "
                f"{summ['accuracy']!s:>6} {summ['unknown_rate']!s:>5} "
                f"{summ['decide_p50_ms']!s:>7} {summ['decide_p90_ms']!s:>7} "
                f"{summ['beep_found_within_100ms']!s:>8} {summ['beep_onset_err_p90_ms']!s:>7} "
                f"{summ['false_beeps']!s:>5} {summ['cue_0_300ms_after_beep_end']!s:>6}"
            )
            if args.errors:
                for r in rows:
                    if r["truth"] != r["decision"]:
                        why = f"{r['decision']} ({r['cause']} at {r['decided_ms']} ms)"
                        print(f"    wrong: {r['name']}: {why}")
        result["sets"][s] = set_out  # type: ignore[index]
    for s in calls:
        print(f"composition {s}: {result['sets'][s]['composition']}")  # type: ignore[index]
    if args.grid and "tune" in calls:
        t1 = time.perf_counter()
        grid = grid_search(calls["tune"])
        result["grid_tune"] = {"points": grid, "seconds": round(time.perf_counter() - t1, 1)}
        print("threshold search on the tuning set, best first:")
        for row in grid[:8]:
            print(f"  {row}")
    print(f"build {build_s:.1f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"amd-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
