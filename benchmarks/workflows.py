"""Workflow benchmark: scripted calls over the default use cases, on the wire, at 8 kHz.

Each call is a sipp UAC whose voice is espeak-ng (a different engine from the agent's Kokoro),
converted to 8 kHz PCMU; transfers are answered by sipp itself (202 + NOTIFY sipfrag). The
script's phrasing varies per call. Reported:

* task-completion rate (the call reached the outcome its script expects) and containment rate
  (no live agent needed), against the seed's production figures (50-60% containment in the first
  60 days, 70% at steady state for well-scoped use cases);
* warm-transfer success rate (REFER accepted and NOTIFY 200 / transfers attempted);
* voice-to-voice P50/P90 on the wire (last voiced caller packet to first voiced agent packet,
  tshark capture on loopback) for pre-rendered replies and for knowledge-base answers, with the
  time after the transcript (endpointing and STT excluded) from the agent's own stage timings;
* a same-run reference: the echo UA (our media stack, no models) measured the same way.

Run: ``python -m benchmarks.workflows`` (about 20 minutes on 2 cores); JSON goes to
``benchmarks/results/workflows-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.wire import Echo, conversation_call, turns_from_capture
from tests.e2e.capture import LoopbackCapture
from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import ExpectRefer, Pause, Play, render_uac_scenario, run_sipp
from tests.e2e.voices import caller_pcap
from tests.kit.pcap import dtmf_rtp_pcap

RESULTS = Path(__file__).resolve().parent / "results"
OPENING_MS = 9000
RTP_BASE = 46000


@dataclass
class Script:
    """One scripted call: caller turns (text or DTMF digits, then listen ms), expected outcome."""

    name: str
    turns: list[tuple[str, int]]
    expect: str  # resolved | transferred | message_taken
    refer: bool | None = None  # accept (True), decline (False), none expected (None)
    after_refer: list[tuple[str, int]] = field(default_factory=list)


def faq(name: str, question: str, wait: int = 9000) -> Script:
    return Script(name, [(question, wait), ("No.", 500)], "resolved")


SCRIPTS: list[Script] = [
    faq("hours", "What time do you open on Saturday?"),
    faq("hours-2", "When are you open during the week?"),
    faq("parking", "Where can I park?", 7000),
    faq("parking-2", "Is there parking at the clinic?", 7000),
    faq("insurance", "Do you take Blue Cross insurance?", 11000),
    faq("insurance-2", "Which insurance plans do you accept?", 11000),
    faq("address", "What is your address?", 7000),
    faq("walk-in", "Do you take walk-ins?", 10000),
    faq("cancel-policy", "Is there a fee if I cancel late?", 11000),
    faq("first-visit", "What should I bring to my first visit?", 12000),
    Script(
        "reschedule",
        [
            ("I need to reschedule my appointment.", 10000),
            ("My name is Maria Lopez.", 6000),
            ("March fourth nineteen eighty two.", 5500),
            ("Yes that's right.", 12500),
            ("Next Wednesday at eleven in the morning.", 10500),
            ("Yes that's right.", 11000),
            ("No.", 500),
        ],
        "resolved",
    ),
    Script(
        "reschedule-2",
        [
            ("Can I move my appointment to another day?", 10000),
            ("It's Maria Lopez.", 6000),
            ("DTMF:03041982", 12500),
            ("Thursday at two in the afternoon.", 10500),
            ("Yes please.", 11000),
            ("No thanks.", 500),
        ],
        "resolved",
    ),
    Script(
        "reschedule-3",
        [
            ("I can't make my appointment so can we change it?", 10000),
            ("My name is James Carter.", 6000),
            ("November twentieth nineteen seventy five.", 5500),
            ("Yes.", 12500),
            ("Next Friday at ten in the morning.", 10500),
            ("Yes.", 11000),
            ("No.", 500),
        ],
        "resolved",
    ),
    Script(
        "book",
        [
            ("I'd like to make an appointment.", 10000),
            ("My name is Aisha Khan.", 6000),
            ("July fifteenth nineteen ninety.", 5500),
            ("Yes that's right.", 9000),
            ("Next Monday at nine in the morning.", 10000),
            ("Yes.", 9500),
            ("No.", 500),
        ],
        "resolved",
    ),
    Script(
        "book-2",
        [
            ("Can I book an appointment with the doctor?", 10000),
            ("Aisha Khan.", 6000),
            ("DTMF:07151990", 9000),
            ("Tuesday at three in the afternoon.", 10000),
            ("Sure.", 9500),
            ("No.", 500),
        ],
        "resolved",
    ),
    Script(
        "cancel",
        [
            ("I need to cancel my appointment.", 10000),
            ("My name is James Carter.", 6000),
            ("DTMF:11201975", 11000),
            ("Yes.", 7000),
            ("No.", 500),
        ],
        "resolved",
    ),
    Script("person", [("Let me talk to a person.", 0)], "transferred", refer=True),
    Script("person-2", [("Can I speak to a representative?", 0)], "transferred", refer=True),
    Script("person-3", [("Operator.", 0)], "transferred", refer=True),
    Script(
        "person-declined",
        [("I want to talk to a real person.", 0)],
        "message_taken",
        refer=False,
        after_refer=[("Please call me back about my bill.", 500)],
    ),
    Script(
        "refill",
        [
            ("I need a refill of my blood pressure medication.", 8500),
            ("My name is Maria Lopez.", 4500),
            ("DTMF:03041982", 0),
        ],
        "transferred",
        refer=True,
    ),
    Script(
        "results",
        [
            ("Are my test results back?", 8500),
            ("My name is James Carter.", 4500),
            ("DTMF:11201975", 0),
        ],
        "transferred",
        refer=True,
    ),
    Script(
        "refill-declined",
        [
            ("I'm running out of my pills.", 8500),
            ("My name is Aisha Khan.", 4500),
            ("DTMF:07151990", 0),
        ],
        "message_taken",
        refer=False,
        after_refer=[("Please have the nurse call me back.", 500)],
    ),
    Script(
        "copay",
        [
            ("I want to pay my bill by card.", 8000),
            ("DTMF:4111111111111111#", 7000),
            ("No.", 500),
        ],
        "resolved",
    ),
    Script(
        "copay-2",
        [
            ("Can I make a payment over the phone?", 8000),
            ("DTMF:5555555555554444#", 7000),
            ("No thanks.", 500),
        ],
        "resolved",
    ),
    Script(
        "callback",
        [("Can someone call me back?", 8000), ("It's about my bill thank you.", 500)],
        "message_taken",
    ),
    Script(
        "callback-2",
        [
            ("I'd like to leave a message for the office.", 8000),
            ("Please call me about my referral.", 500),
        ],
        "message_taken",
    ),
    Script(
        "two-questions",
        [
            ("Where are you located?", 7000),
            ("Yes.", 3000),
            ("Where can I park?", 7000),
            ("No.", 500),
        ],
        "resolved",
    ),  # fmt: skip
    Script(
        "out-of-scope",
        [("What's the weather going to be tomorrow?", 9000), ("No.", 5000), ("No.", 500)],
        "resolved",
    ),
    faq("hours-3", "Are you open on Sunday?"),
]


def steps_for(script: Script, work: Path) -> tuple[list[object], list[tuple[float, float]]]:
    """Sipp steps and the caller's speech windows (seconds from call start)."""
    steps: list[object] = [Pause(OPENING_MS)]
    windows: list[tuple[float, float]] = []
    t = OPENING_MS / 1000

    def add(turns: list[tuple[str, int]]) -> None:
        nonlocal t
        for text, wait in turns:
            if text.startswith("DTMF:"):
                digits = text[5:]
                path = work / f"dtmf-{digits.replace('#', 'H')}.pcap"
                t += dtmf_rtp_pcap(digits, path)
                steps.append(Play(str(path)))
            else:
                pcap = caller_pcap(text, work)
                seconds = _pcap_seconds(pcap)
                steps.append(Play(str(pcap)))
                windows.append((t, t + seconds))
                t += seconds
            if wait:
                steps.append(Pause(wait))
                t += wait / 1000

    add(script.turns)
    if script.refer is not None:
        steps.append(ExpectRefer(accept=script.refer, notify_status=200))
        if not script.refer:
            steps.append(Pause(9500))
            t += 9.5
        add(script.after_refer)
    # A real caller hangs up a few seconds after the last reply; if the agent hung up first
    # (goodbye, transfer) the call is already over and this pause never runs.
    steps.append(Pause(6000))
    return steps, windows


def _pcap_seconds(pcap: Path) -> float:
    from tests.kit.pcap import pcap_duration

    return float(pcap_duration(pcap))


def _new_call(proc: ApplianceProcess, known: set[object]) -> str | None:
    """The id of the call this script placed: the first CallOffered not seen before it."""
    for e in proc.events():
        if e["kind"] == "CallOffered" and e["call_id"] not in known:
            return str(e["call_id"])
    return None


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=len(SCRIPTS), help="how many scripts to run")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="appliance-wf-bench-"))
    scripts = SCRIPTS[: args.calls]

    print("reference: echo UA ...", flush=True)
    port = free_udp_port()
    echo = Echo(port, 47000)
    (work / "echo").mkdir()
    try:
        ref = conversation_call(
            f"127.0.0.1:{port}", 47000, work / "echo", [0, 1, 2], reply_wait_ms=1500,
            opening_ms=500,
        )  # fmt: skip
    finally:
        echo.close()
    ref_lat = [t.latency for t in ref if t.latency is not None]

    (work / "agent").mkdir()
    proc = ApplianceProcess(
        work / "agent",
        sip_port=free_udp_port(),
        rtp_port=RTP_BASE,
        max_calls=2,
        extra_toml=(
            "[agent]\nidle_timeout_s = 600\n[scheduling]\ndemo_seed = true\n"
            '[transfer]\ntarget = "sip:frontdesk@127.0.0.1:5999"\ntimeout_s = 10\n'
        ),
    )
    print("appliance: starting ...", flush=True)
    proc.start()
    rows = []
    fixed: set[str] = set()
    try:
        from appliance.agent.runtime import load_agent
        from appliance.config.settings import load_settings
        from appliance.models.engines import EmbeddingEngine
        from tests.conftest import STORE

        emb = EmbeddingEngine(STORE / "embedding" / "all-MiniLM-L6-v2")
        settings = load_settings(proc.config)
        runtime = load_agent(settings, emb.encode)
        fixed = set(runtime.fixed_phrases())
        kb_answers = runtime.kb.answers
        for i, script in enumerate(scripts):
            cwork = work / f"call{i:02d}-{script.name}"
            cwork.mkdir()
            steps, windows = steps_for(script, cwork)
            known = {e["call_id"] for e in proc.events() if e["kind"] == "CallOffered"}
            cap = cwork / "call.pcap"
            t0 = time.monotonic()
            with LoopbackCapture(cap, bpf="udp"):
                result = run_sipp(render_uac_scenario(steps=steps), proc.uri, timeout_s=240)
            call_id = _new_call(proc, known)
            deadline = time.monotonic() + 60
            while call_id and time.monotonic() < deadline:
                kinds = {e["kind"] for e in proc.events() if e["call_id"] == call_id}
                if "CallScored" in kinds:
                    break
                time.sleep(0.5)
            events = [e for e in proc.events() if call_id and e["call_id"] == call_id]
            score = next((e for e in reversed(events) if e["kind"] == "CallScored"), {})
            transfers = [e for e in events if e["kind"] == "TransferResult"]
            spoken = [e for e in events if e["kind"] == "AgentSpoke" and e["source"] != "opening"]
            try:
                timings = turns_from_capture(cap, RTP_BASE, windows) if windows else []
            except ValueError:  # no agent RTP in the capture (the call was refused)
                timings = []
            turns = []
            for j, timing in enumerate(timings):
                reply = spoken[j] if j < len(spoken) else None
                text = reply["text"] if reply else ""
                sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
                kind = (
                    "kb"
                    if reply and (reply["source"] == "kb" or any(a in text for a in kb_answers))
                    else "pre-rendered"
                    if sentences and all(s in fixed for s in sentences)
                    else "dynamic"
                )
                turns.append({"latency_s": timing.latency, "kind": kind})
            lat = [e for e in events if e["kind"] == "TurnLatency"]
            rows.append(
                {
                    "script": script.name,
                    "sipp_ok": result.returncode == 0,
                    "expected": script.expect,
                    "outcome": score.get("outcome"),
                    "completed": score.get("outcome") == script.expect,
                    "contained": score.get("contained"),
                    "transfer_ok": [t["ok"] for t in transfers],
                    "turns": turns,
                    "stages": [
                        {k: e[k] for k in ("endpointing_s", "stt_s", "tts_ttfa_s")} for e in lat
                    ],
                    "heard": [e["user_text"] for e in events if e["kind"] == "TurnEnded"],
                    "wall_s": round(time.monotonic() - t0, 1),
                }
            )
            r = rows[-1]
            print(
                f"{i + 1:2d}/{len(scripts)} {script.name:16s} outcome={r['outcome']!s:14s} "
                f"expected={script.expect:14s} {'OK' if r['completed'] else 'MISS'}",
                flush=True,
            )
    finally:
        proc.stop()

    def lat_of(kind: str) -> list[float]:
        return [
            t["latency_s"]
            for r in rows
            for t in r["turns"]
            if t["kind"] == kind and t["latency_s"] is not None
        ]

    stage_after_stt = [
        s["tts_ttfa_s"] for r in rows for s in r["stages"] if s.get("tts_ttfa_s") is not None
    ]
    n = len(rows)
    transfers = [ok for r in rows for ok in r["transfer_ok"]]
    accepted_scripts = [r for r, s in zip(rows, scripts, strict=True) if s.refer is True]

    def dist(values: list[float]) -> dict[str, float | int | None]:
        return {"p50": pct(values, 0.5), "p90": pct(values, 0.9), "n": len(values)}

    accepted_ok = sum(1 for r in accepted_scripts if True in r["transfer_ok"])
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "calls": n,
        "task_completion_rate": round(sum(r["completed"] for r in rows) / n, 3),
        "containment_rate": round(sum(bool(r["contained"]) for r in rows) / n, 3),
        "warm_transfer_success_rate": (
            round(accepted_ok / len(accepted_scripts), 3) if accepted_scripts else None
        ),
        "transfers_attempted": len(transfers),
        "v2v_prerendered_s": dist(lat_of("pre-rendered")),
        "v2v_kb_s": dist(lat_of("kb")),
        "v2v_dynamic_s": dist(lat_of("dynamic")),
        "tts_first_audio_after_reply_s": dist(stage_after_stt),
        "reference_echo_v2v_s": dist(ref_lat),
        "seed_containment_benchmarks": {"first_60_days": "50-60%", "steady_state": "70%"},
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"workflows-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print()
    print(f"{'metric':40s} value")
    for key in ("calls", "task_completion_rate", "containment_rate", "warm_transfer_success_rate"):
        print(f"{key:40s} {report[key]}")
    for key in ("v2v_prerendered_s", "v2v_kb_s", "v2v_dynamic_s", "tts_first_audio_after_reply_s",
                "reference_echo_v2v_s"):  # fmt: skip
        print(f"{key:40s} {report[key]}")
    print(f"misses: {[r['script'] for r in rows if not r['completed']]}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
