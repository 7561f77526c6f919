"""Dial throughput with the TCPA gates on (issue 15's benchmark), over real SIP on loopback.

Run: ``.venv/bin/python -m benchmarks.dial_throughput [--records N] [--dials N]``. Prints a
table and writes JSON to ``benchmarks/results/dial-throughput-<timestamp>.json``.

What runs: the box's real dialler (:class:`appliance.app.dialler.Dialler`) with the real gate
(:class:`appliance.policy.outbound_gate.OutboundGate`: consent and DNC SQLite files holding
``--records`` consent records and as many DNC entries, and the calling window) and its real
pjsua2 user agent behind :class:`~appliance.app.dialler.SipPlacer`, dialling a sipp UAS that
answers each INVITE with 200 + SDP and takes the BYE. The conversation seam hangs up at once,
so what is timed is the dial path: queue, rate limit, concurrency cap, the gate at dial time,
INVITE, answer, BYE. The dial list mixes allowed numbers (90 %) with numbers on the DNC list
and without consent (5 % each): those must be refused without an INVITE.

Reference, in the same run: sipp as the UAC placing as many calls at the same concurrency to
the same kind of sipp UAS (``-l``), with no rate limit, so the ratio shows what the dialler's
own work and its configured rate limit cost against the bare SIP path.

Settings as a clinic would run them: ``max_concurrent`` 2 (of ``[sip] max_calls`` 3, one left
for inbound callers) and the highest ``rate_per_minute`` allowed (600). The rate limit is a
window of that many dials per minute (``pyrate-limiter``), so up to 600 dials go as fast as the
concurrency cap allows and the 601st waits for the window: ``--dials`` above 600 shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import re
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.app.dialler import DialJob, Dialler, DialResult, OutcomeStore, SipPlacer
from appliance.config.outbound import OutboundSettings
from appliance.config.settings import SipSettings
from appliance.events import Event
from appliance.media.sip import CallHandle, SipUserAgent
from appliance.policy.calling_window import CallingWindow
from appliance.policy.consent import ConsentStore
from appliance.policy.dnc import DncList
from appliance.policy.outbound_gate import OutboundGate
from benchmarks.run import RESULTS, device, pct
from benchmarks.tcpa_gates import numbers
from tests.e2e.sipp import free_udp_port, render_uac_scenario, start_sipp
from tests.e2e.test_outbound import UAS_ANSWER

#: 16:00 in New York, 11:00 in Honolulu, 12:00 in Anchorage: inside every US calling window.
T0 = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
MAX_CONCURRENT = 2
RATE_PER_MINUTE = 600


def _gate(d: Path, records: int, rng: random.Random) -> tuple[OutboundGate, list[str], list[str]]:
    """A gate on ``records`` consent records and DNC entries; (gate, consented, on DNC)."""
    taken: set[str] = set()
    consented = numbers(records, rng, taken)
    blocked = numbers(records, rng, taken)
    sink: list[Event] = []
    dnc = DncList(d / "dnc.sqlite")
    consent = ConsentStore(d / "consent.sqlite", sink.append, dnc=dnc)
    roster = io.StringIO("number,scope,method,timestamp,evidence\n")
    roster.seek(0, io.SEEK_END)
    for n in consented + blocked:
        roster.write(f"{n},reminders,written,2026-03-01T09:30:00Z,intake form\n")
    consent.import_csv(roster.getvalue())
    dnc.import_list("\n".join(blocked), "national")
    return OutboundGate(consent, dnc, CallingWindow(), lambda _e: None), consented, blocked


async def _dialler_run(
    d: Path, gate: OutboundGate, jobs: list[DialJob], callee_port: int
) -> dict[str, object]:
    settings = OutboundSettings.model_validate(
        {
            "enabled": True,
            "trunk_uri": f"sip:{{number}}@127.0.0.1:{callee_port}",
            "caller_id": "+12125550100",
            "consent_db": d / "consent.sqlite",
            "dnc_db": d / "dnc.sqlite",
            "outcomes_db": d / "dialler.sqlite",
            "max_concurrent": MAX_CONCURRENT,
            "rate_per_minute": RATE_PER_MINUTE,
            "max_attempts": 1,
            "ring_timeout_s": 10.0,
        }
    )
    gate_s: list[float] = []
    check = gate.check

    def timed_check(*args: object, **kwargs: object) -> object:
        t = time.perf_counter()
        try:
            return check(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            gate_s.append(time.perf_counter() - t)

    gate.check = timed_check  # type: ignore[method-assign]
    placed_at: dict[str, float] = {}
    answer_s: list[float] = []

    async def converse(job: DialJob, handle: CallHandle) -> str:
        answer_s.append(time.monotonic() - placed_at.get(handle.call_id, time.monotonic()))
        return "confirmed"

    loop = asyncio.get_running_loop()
    sip = SipSettings(bind=f"127.0.0.1:{free_udp_port()}", rtp_port=free_udp_port(count=8))
    ua = SipUserAgent(sip, loop, None)
    ua.start()
    placer = SipPlacer(ua)
    place = placer.place

    async def timed_place(
        call_id: str, uri: str, headers: dict[str, str], ring_timeout_s: float
    ) -> DialResult:
        placed_at[call_id] = time.monotonic()
        return await place(call_id, uri, headers, ring_timeout_s)

    placer.place = timed_place  # type: ignore[method-assign]
    start = time.monotonic()
    try:
        dialler = Dialler(
            settings,
            gate,
            placer,
            OutcomeStore(settings.outcomes_db),
            converse=converse,
            clock=lambda: T0 + timedelta(seconds=time.monotonic() - start),
        )
        for job in jobs:
            dialler.submit(job)
        await asyncio.wait_for(dialler.run_until_idle(), 60 + 2 * len(jobs))
        elapsed = time.monotonic() - start
        await asyncio.sleep(0.3)
        outcomes: dict[str, int] = {}
        for job in jobs:
            out = str(dialler.store.outcome(job.job_id))
            outcomes[out] = outcomes.get(out, 0) + 1
    finally:
        ua.stop()
    return {
        "elapsed_s": round(elapsed, 2),
        "dials_per_minute": round(60 * len(jobs) / elapsed, 1),
        "answered_per_minute": round(60 * outcomes.get("confirmed", 0) / elapsed, 1),
        "outcomes": outcomes,
        "gate_check_ms_p50": pct([s * 1000 for s in gate_s], 50),
        "gate_check_ms_p90": pct([s * 1000 for s in gate_s], 90),
        "invite_to_answer_ms_p50": pct([s * 1000 for s in answer_s], 50),
        "invite_to_answer_ms_p90": pct([s * 1000 for s in answer_s], 90),
    }


def _sipp_reference(calls: int, d: Path) -> dict[str, object]:
    """The bare SIP path: a sipp UAC calls a sipp UAS, ``MAX_CONCURRENT`` at once, no limit."""
    port = free_udp_port()
    uas = start_sipp(UAS_ANSWER, None, sip_port=port, workdir=d / "ref-uas", calls=calls)
    time.sleep(0.5)
    t = time.monotonic()
    uac = start_sipp(
        render_uac_scenario(codecs=("PCMU",)), f"127.0.0.1:{port}", workdir=d / "ref-uac",
        calls=calls, extra_args=("-l", str(MAX_CONCURRENT), "-r", "1000"), timeout_s=60 + calls,
    )  # fmt: skip
    result = uac.wait()
    elapsed = time.monotonic() - t
    uas.terminate()
    return {
        "elapsed_s": round(elapsed, 2),
        "calls_per_minute": round(60 * calls / elapsed, 1),
        "all_calls_ok": result.returncode == 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=100_000, help="consent records and DNC entries")
    ap.add_argument("--dials", type=int, default=200, help="dials queued (90 %% allowed)")
    args = ap.parse_args()
    rng = random.Random(15)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        gate, consented, blocked = _gate(d, args.records, rng)
        setup_s = time.perf_counter() - t
        allowed = rng.sample(consented, args.dials * 9 // 10)
        refused = rng.sample(blocked, args.dials // 20) + numbers(
            args.dials - len(allowed) - args.dials // 20, rng, set(consented) | set(blocked)
        )
        dial_list = allowed + refused
        rng.shuffle(dial_list)
        jobs = [DialJob(n, campaign="bench") for n in dial_list]
        callee_port = free_udp_port()
        callee = start_sipp(
            UAS_ANSWER, None, sip_port=callee_port, workdir=d / "callee", calls=len(allowed),
            timeout_s=120 + 2 * len(jobs),
        )  # fmt: skip
        time.sleep(0.5)
        dialler = asyncio.run(_dialler_run(d, gate, jobs, callee_port))
        callee.terminate()
        reference = _sipp_reference(len(allowed), d)
    ratio = (
        round(float(reference["calls_per_minute"]) / float(dialler["answered_per_minute"]), 2)  # type: ignore[arg-type]
        if dialler["answered_per_minute"]
        else None
    )
    result = {
        "benchmark": "dial_throughput",
        "device": device(),
        "records": args.records,
        "dials": len(jobs),
        "allowed": len(allowed),
        "refused_expected": len(refused),
        "max_concurrent": MAX_CONCURRENT,
        "rate_per_minute": RATE_PER_MINUTE,
        "gate_setup_s": round(setup_s, 1),
        "dialler": dialler,
        "reference_sipp": reference,
        "reference_over_dialler": ratio,
    }
    print(f"\nDial throughput ({device()}), {args.records:,} consent records + DNC entries")
    print(f"{'path':<34}{'calls/min':>10}{'elapsed s':>11}")
    print(
        f"{'dialler (gates on, answered)':<34}{dialler['answered_per_minute']:>10}"
        f"{dialler['elapsed_s']:>11}"
    )
    print(
        f"{'dialler (all dials incl. refused)':<34}{dialler['dials_per_minute']:>10}"
        f"{dialler['elapsed_s']:>11}"
    )
    print(
        f"{'sipp UAC reference':<34}{reference['calls_per_minute']:>10}{reference['elapsed_s']:>11}"
    )
    print(f"outcomes: {dialler['outcomes']}")
    print(f"gate check ms P50/P90: {dialler['gate_check_ms_p50']} / {dialler['gate_check_ms_p90']}")
    print(f"INVITE to answer ms P50/P90: {dialler['invite_to_answer_ms_p50']} / "
          f"{dialler['invite_to_answer_ms_p90']}; reference/dialler: {ratio}")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"dial-throughput-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    ok = dialler["outcomes"].get("confirmed") == len(allowed)  # type: ignore[union-attr]
    refused_ok = sum(v for k, v in dialler["outcomes"].items() if re.match("refused", k))  # type: ignore[union-attr]
    return 0 if ok and refused_ok == len(refused) else 1


if __name__ == "__main__":
    raise SystemExit(main())
