"""Benchmark: voice-to-voice latency on the wire, stage breakdown, barge-in, STT WER/RTF, CPU.

Run with ``./build.sh bench`` (or ``.venv/bin/python -m benchmarks.run [--quick]``). Prints a
table and writes JSON to ``benchmarks/results/``. Absolute times are only meaningful for the
device named in the JSON; every figure also has a reference measured in the same run:

* wire latency vs. an echo UA on the same media stack (the measurement floor);
* LLM TTFT with the system prompt's KV prefix reused vs. a cold prompt;
* STT and TTS real-time factors (processing time / audio time).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.wire import Echo, barge_in_call, concurrent_cpu, conversation_call
from tests.conftest import STORE, read_pcm, speech_dir
from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.speech import osr_sentences

RESULTS = Path(__file__).resolve().parent / "results"
LONG_GREETING = (
    "I can tell you our opening hours, our address, and where to park. "
    "I can also take a message for our staff, or put you through to a person. "
    "Please tell me in a few words what you need today, and I will do my best to help."
)


def pct(values: list[float], q: float) -> float | None:
    """Percentile (linear interpolation) or ``None`` for no data."""
    vals = [v for v in values if v is not None]
    return round(float(np.percentile(vals, q)), 3) if vals else None


def device() -> str:
    """CPU model, core count, GPU presence (nvidia-smi on PATH), architecture."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "NVIDIA GPU (nvidia-smi present)" if shutil.which("nvidia-smi") else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu} ({platform.machine()})"


def bench_components(quick: bool) -> dict[str, object]:
    from appliance.config.settings import ModelSettings
    from appliance.models.engines import load_models
    from tests.kit.wer import word_error_rate

    models = load_models(ModelSettings(store=STORE))
    rows = list(csv.DictReader((speech_dir() / "manifest.tsv").open(), delimiter="\t"))
    digits = [r for r in rows if r["path"].startswith("fsdd/")]
    if quick:
        digits = digits[::5]
    refs, hyps, rtf_d = [], [], []
    for r in digits:
        res = models.stt.transcribe(read_pcm(speech_dir() / r["path"]).tobytes())
        refs.append(r["transcript"])
        hyps.append(res.text)
        rtf_d.append(res.elapsed_s / res.audio_s)
    wer_digits = word_error_rate(refs, hyps)
    parts, texts = osr_sentences()
    import soxr

    hyps_s, rtf_s = [], []
    for p in parts:
        pcm16 = soxr.resample(p, 8000, 16000).astype(np.int16)
        res = models.stt.transcribe(pcm16.tobytes())
        hyps_s.append(res.text)
        rtf_s.append(res.elapsed_s / res.audio_s)
    wer_sent = word_error_rate(texts, hyps_s)

    from appliance.config.settings import ApplianceSettings
    from appliance.pipeline.builder import initial_messages

    prefix = initial_messages(ApplianceSettings())
    questions = [
        "Do you take my insurance?",
        "Is the doctor in on Friday?",
        "Can I bring my child?",
        "How long is the wait?",
        "Do you do blood tests?",
        "Can I get a sick note?",
    ]

    def ttft(messages: list[dict[str, str]]) -> float:
        t0 = time.perf_counter()
        for _ in models.llm.stream(messages, max_tokens=1):
            break
        return time.perf_counter() - t0

    warm, cold = [], []
    models.llm.warm_messages(prefix)
    for q in questions:
        warm.append(ttft([*prefix, {"role": "user", "content": q}]))
        # A different, equally long system prompt defeats the prefix cache: the cold reference.
        other = [{"role": "system", "content": prefix[0]["content"][::-1]}, *prefix[1:]]
        cold.append(ttft([*other, {"role": "user", "content": q}]))
        models.llm.warm_messages(prefix)
    tts_first, tts_rtf = [], []
    for sentence in [
        "We're open Monday to Friday, 8 AM to 5 PM.",
        "I'll pass your question to our staff.",
        "Free parking is available behind the building.",
        "I'm not sure, so I'll pass your question to our staff.",
    ]:
        t0 = time.perf_counter()
        audio = models.tts.synthesize(sentence, 1.1)
        el = time.perf_counter() - t0
        tts_first.append(el)
        tts_rtf.append(el / (len(audio) / models.tts.sample_rate))
    return {
        "stt": {
            "wer_digits": round(wer_digits, 4),
            "wer_sentences": round(wer_sent, 4),
            "n_digits": len(digits),
            "n_sentences": len(parts),
            "rtf_digits_p50": pct(rtf_d, 50),
            "rtf_digits_p90": pct(rtf_d, 90),
            "rtf_sentences_p50": pct(rtf_s, 50),
            "rtf_sentences_p90": pct(rtf_s, 90),
        },
        "llm": {
            "ttft_prefix_reused_p50_s": pct(warm, 50),
            "ttft_prefix_reused_p90_s": pct(warm, 90),
            "ttft_cold_p50_s": pct(cold, 50),
            "ttft_cold_p90_s": pct(cold, 90),
            "cold_over_reused_ratio": round(statistics.median(cold) / statistics.median(warm), 2),
        },
        "tts": {
            "first_audio_p50_s": pct(tts_first, 50),
            "first_audio_p90_s": pct(tts_first, 90),
            "rtf_p50": pct(tts_rtf, 50),
            "rtf_p90": pct(tts_rtf, 90),
        },
    }


def stage_breakdown(events: list[dict]) -> dict[str, object]:
    lat = [e for e in events if e["kind"] == "TurnLatency"]
    out: dict[str, object] = {"turns": len(lat)}
    for key in ("endpointing_s", "stt_s", "llm_ttft_s", "tts_ttfa_s", "voice_to_voice_s"):
        vals = [e[key] for e in lat if e.get(key) is not None]
        out[key] = {"p50": pct(vals, 50), "p90": pct(vals, 90)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer turns and clips")
    args = ap.parse_args()
    speech_dir()
    report: dict[str, object] = {
        "device": device(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "models": "default profile (models/manifest.toml)",
    }
    print("components ...", flush=True)
    report["components"] = bench_components(args.quick)
    work = Path(tempfile.mkdtemp(prefix="appliance-bench-"))
    sentences = list(range(5)) if args.quick else list(range(10))
    calls = 1 if args.quick else 2

    print("reference: echo UA ...", flush=True)
    port = free_udp_port()
    echo = Echo(port, 47000)
    (work / "echo").mkdir()
    try:
        ref = conversation_call(
            f"127.0.0.1:{port}",
            47000,
            work / "echo",
            sentences[:5],
            reply_wait_ms=1500,
            opening_ms=500,
        )
    finally:
        echo.close()
    ref_lat = [t.latency for t in ref if t.latency is not None]

    print("appliance: conversation calls ...", flush=True)
    (work / "agent").mkdir()
    # The scripted callers stay silent for long stretches: keep the idle hang-up out of the way.
    proc = ApplianceProcess(
        work / "agent",
        sip_port=free_udp_port(),
        rtp_port=48000,
        max_calls=4,
        extra_toml="[agent]\nidle_timeout_s = 600\n",
    )
    proc.start()
    turns = []
    try:
        for c in range(calls):
            (work / f"call{c}").mkdir()
            turns += conversation_call(proc.uri, 48000, work / f"call{c}", sentences)
        events = proc.events()  # the conversation turns only, before the load test
        print("appliance: CPU per concurrent call ...", flush=True)
        cpu = []
        for n in (1, 2, 4):
            (work / f"cpu{n}").mkdir()
            cpu.append(
                concurrent_cpu(
                    proc.uri,
                    proc.proc.pid,
                    work / f"cpu{n}",
                    n,  # type: ignore[union-attr]
                    seconds=15 if args.quick else 30,
                )
            )
    finally:
        proc.stop()
    lat = [t.latency for t in turns if t.latency is not None]

    print("appliance: barge-in ...", flush=True)
    (work / "barge").mkdir()
    bproc = ApplianceProcess(
        work / "barge",
        sip_port=free_udp_port(),
        rtp_port=49000,
        extra_toml=f'[agent]\ngreeting = "{LONG_GREETING}"\nidle_timeout_s = 600\n',
    )
    bproc.start()
    reactions = []
    try:
        for _ in range(2 if args.quick else 4):
            r = barge_in_call(bproc.uri, 49000, work / "barge")
            if r is not None:
                reactions.append(r)
    finally:
        bproc.stop()

    report.update(
        {
            "voice_to_voice_p50_s": pct(lat, 50),
            "voice_to_voice_p90_s": pct(lat, 90),
            "voice_to_voice": {
                "turns_measured": len(lat),
                "turns_unanswered": len(turns) - len(lat),
                "min_s": round(min(lat), 3) if lat else None,
                "max_s": round(max(lat), 3) if lat else None,
                "reference_echo_p50_s": pct(ref_lat, 50),
                "reference_echo_p90_s": pct(ref_lat, 90),
                "ratio_p50_vs_echo": round(pct(lat, 50) / pct(ref_lat, 50), 1)
                if lat and ref_lat
                else None,
            },
            "stages_internal": stage_breakdown(events),
            "barge_in_reaction": {
                "n": len(reactions),
                "p50_s": pct(reactions, 50),
                "p90_s": pct(reactions, 90),
            },
            "cpu_per_concurrent_call": cpu,
            "target": {"p50_s": 1.5, "p90_s": 2.5},
        }
    )
    print_table(report)
    RESULTS.mkdir(exist_ok=True)
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2))
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS / name}")
    return 0


def print_table(r: dict) -> None:
    comp = r["components"]
    st = r["stages_internal"]
    rows = [
        ("voice-to-voice on the wire", r["voice_to_voice_p50_s"], r["voice_to_voice_p90_s"], "s"),
        (
            "  reference: echo UA (floor)",
            r["voice_to_voice"]["reference_echo_p50_s"],
            r["voice_to_voice"]["reference_echo_p90_s"],
            "s",
        ),
    ]
    for key, label in (
        ("endpointing_s", "  endpointing (VAD+smart-turn)"),
        ("stt_s", "  STT finalisation"),
        ("llm_ttft_s", "  LLM TTFT"),
        ("tts_ttfa_s", "  TTS time to first audio"),
        ("voice_to_voice_s", "  in-process voice-to-voice"),
    ):
        rows.append((label, st[key]["p50"], st[key]["p90"], "s"))
    rows += [
        (
            "barge-in reaction (wire)",
            r["barge_in_reaction"]["p50_s"],
            r["barge_in_reaction"]["p90_s"],
            "s",
        ),
        (
            "LLM TTFT, prefix reused",
            comp["llm"]["ttft_prefix_reused_p50_s"],
            comp["llm"]["ttft_prefix_reused_p90_s"],
            "s",
        ),
        (
            "LLM TTFT, cold (reference)",
            comp["llm"]["ttft_cold_p50_s"],
            comp["llm"]["ttft_cold_p90_s"],
            "s",
        ),
        (
            "TTS first audio (1 sentence)",
            comp["tts"]["first_audio_p50_s"],
            comp["tts"]["first_audio_p90_s"],
            "s",
        ),
        ("TTS RTF", comp["tts"]["rtf_p50"], comp["tts"]["rtf_p90"], "x"),
        (
            "STT RTF sentences",
            comp["stt"]["rtf_sentences_p50"],
            comp["stt"]["rtf_sentences_p90"],
            "x",
        ),
        ("STT RTF digits", comp["stt"]["rtf_digits_p50"], comp["stt"]["rtf_digits_p90"], "x"),
    ]
    print(f"\nDevice: {r['device']}")
    print(f"{'metric':40} {'P50':>8} {'P90':>8}")
    for label, p50, p90, unit in rows:
        a = "-" if p50 is None else f"{p50:.3f}{unit}"
        b = "-" if p90 is None else f"{p90:.3f}{unit}"
        print(f"{label:40} {a:>8} {b:>8}")
    print(
        f"STT WER sentences {comp['stt']['wer_sentences']:.1%} (n={comp['stt']['n_sentences']}), "
        f"digits {comp['stt']['wer_digits']:.1%} (n={comp['stt']['n_digits']})"
    )
    print(
        "CPU per concurrent call:",
        ", ".join(
            f"{c['calls']} call(s): {c['cpu_pct_per_call']}% of a core/call "
            f"({c['completed']}/{c['calls']} completed)"
            for c in r["cpu_per_concurrent_call"]
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
