"""Audit log benchmark: append throughput (FULL vs NORMAL, batched per turn) and verify speed.

Run: ``.venv/bin/python -m benchmarks.audit [--records N]``. Prints a table and writes JSON to
``benchmarks/results/``. Reference in the same run: unbatched appends (one transaction per event).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from appliance.audit import envelope
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.store import AuditLog, Entry
from appliance.audit.verify import verify
from benchmarks.run import RESULTS, device

TURN = 4  # events per caller turn: TurnEnded, AgentSpoke, TurnLatency, DtmfReceived


def turn(call: str) -> list[Entry]:
    return [
        Entry("TurnEnded", call, content={"user_text": "I need to move my appointment to Tuesday"}),
        Entry(
            "AgentSpoke",
            call,
            meta={"interrupted": False, "source": "template"},
            content={"text": "I can help with that. What is your date of birth?"},
        ),
        Entry("TurnLatency", call, meta={"voice_to_voice_s": 1.37, "stt_s": 0.38}),
        Entry("DtmfReceived", call, meta={"method": "rfc4733"}, content={"digit": "4"}),
    ]


def open_log(d: Path, synchronous: str) -> AuditLog:
    return AuditLog(
        d / "audit.sqlite",
        envelope.load_kek(d / "kek", create=True),
        load_or_create_signing_key(d / "sign.key"),
        origin="bench/audit",
        checkpoint_file=d / "cp.log",
        synchronous=synchronous,
    )


def throughput(synchronous: str, batched: bool, events: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        log = open_log(Path(tmp), synchronous)
        t0 = time.perf_counter()
        done = 0
        while done < events:
            entries = turn(f"call{done // 400}")
            if batched:
                log.append(entries)
            else:
                for e in entries:
                    log.append([e])
            done += TURN
        rate = done / (time.perf_counter() - t0)
        log.close()
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=1_000_000, help="records for the verify run")
    args = ap.parse_args()
    rows = {}
    for sync in ("FULL", "NORMAL"):
        rows[f"{sync}_batched_per_turn"] = statistics.median(
            throughput(sync, True, 20_000) for _ in range(3)
        )
        rows[f"{sync}_one_tx_per_event"] = statistics.median(
            throughput(sync, False, 4_000) for _ in range(3)
        )
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = open_log(d, "NORMAL")
        t0 = time.perf_counter()
        n = 0
        while n < args.records:
            batch = []
            for _ in range(250):
                batch += turn(f"call{n // 400}")
            log.append(batch[: args.records - n])
            n += len(batch[: args.records - n])
            if n % 100_000 < 1000:
                log.checkpoint()
        log.checkpoint()
        build_s = time.perf_counter() - t0
        log.close()
        t0 = time.perf_counter()
        report = verify(
            d / "audit.sqlite",
            load_or_create_signing_key(d / "sign.key").public_key(),
            origin="bench/audit",
        )
        verify_s = time.perf_counter() - t0
        assert report.ok, report.summary()
    result = {
        "device": device(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "append_events_per_s": {k: round(v) for k, v in rows.items()},
        "verify": {
            "records": report.size,
            "seconds": round(verify_s, 1),
            "records_per_s": round(report.size / verify_s),
            "checkpoints": report.checkpoints,
            "build_seconds": round(build_s, 1),
        },
        "targets": {"append_batched_events_per_s": 5000, "verify_1m_s": 60},
    }
    print(f"\nDevice: {result['device']}")
    print(f"{'append throughput (events/s)':44} {'value':>10}")
    for k, v in result["append_events_per_s"].items():
        print(f"  {k:42} {v:>10}")
    print(
        f"verify {report.size} records: {verify_s:.1f} s ({report.size / verify_s:,.0f} records/s)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
