"""TCPA gate benchmark: gate check time per dial with 100,000 consent records and DNC entries.

Run: ``.venv/bin/python -m benchmarks.tcpa_gates [--records N] [--checks N]``. Prints a table
and writes JSON to ``benchmarks/results/tcpa-gates-<timestamp>.json``.

What is timed: :meth:`appliance.policy.outbound_gate.OutboundGate.check` on real SQLite files
(WAL) holding ``--records`` consent records (imported through the roster CSV path, one
``ConsentRecorded`` event each) and as many DNC entries (an imported list), for a mix of dials:
allowed, on the DNC list, without consent. Reference in the same run: the bare indexed SQLite
lookups the gate makes (one primary-key read on each file, numbers already E.164), and the
gate's other parts alone (``phonenumbers`` normalisation, the zone lookup and window check),
so the gate's own overhead is visible next to the floor.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from appliance.events import Event
from appliance.policy.calling_window import CallingWindow, callee_zones
from appliance.policy.consent import ConsentStore
from appliance.policy.dnc import DncList
from appliance.policy.outbound_gate import OutboundGate
from appliance.policy.phone import normalize_number
from benchmarks.run import RESULTS, device

# Area codes in every US zone (Eastern to Hawaii, Arizona, and Idaho's two zones).
AREAS = (212, 617, 404, 305, 312, 713, 303, 602, 208, 415, 206, 907, 808)
NOW = datetime(2026, 7, 15, 19, 0, tzinfo=UTC)  # 15:00 New York, 09:00 Honolulu


def numbers(n: int, rng: random.Random, taken: set[str]) -> list[str]:
    """``n`` distinct valid E.164 numbers not in ``taken`` (which they are added to)."""
    out: list[str] = []
    while len(out) < n:
        raw = f"+1{rng.choice(AREAS)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        if raw in taken:
            continue
        try:
            e164 = normalize_number(raw)
        except ValueError:
            continue
        taken.add(e164)
        out.append(e164)
    return out


def timed_us(fn: Callable[[str], object], items: list[str]) -> list[float]:
    """Per-call wall time in microseconds."""
    out = []
    for item in items:
        t0 = time.perf_counter_ns()
        fn(item)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def stats(us: list[float]) -> dict[str, float]:
    a = np.asarray(us)
    return {
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p90_us": round(float(np.percentile(a, 90)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "checks_per_s": round(len(a) / (float(a.sum()) / 1e6)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=100_000, help="consent records and DNC entries")
    ap.add_argument("--checks", type=int, default=20_000, help="timed gate checks")
    args = ap.parse_args()
    rng = random.Random(15)
    taken: set[str] = set()
    consented = numbers(args.records, rng, taken)
    dnc_numbers = numbers(args.records, rng, taken)
    strangers = numbers(max(args.checks // 4, 1), rng, taken)
    events: list[int] = [0, 0]

    def sink(event: Event) -> None:
        events[0 if event.kind == "ConsentRecorded" else 1] += 1

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        dnc = DncList(d / "dnc.sqlite")
        consent = ConsentStore(d / "consent.sqlite", sink, dnc=dnc)
        gate = OutboundGate(consent, dnc, CallingWindow(), sink)
        roster = io.StringIO()
        roster.write("number,scope,method,timestamp,evidence\n")
        for i, n in enumerate(consented):
            roster.write(f"{n},reminders,written,2026-03-01T09:30:00Z,intake form {i}\n")
        t0 = time.perf_counter()
        assert consent.import_csv(roster.getvalue()) == args.records
        import_consent_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert dnc.import_list("\n".join(dnc_numbers), "national") == args.records
        import_dnc_s = time.perf_counter() - t0
        assert events[0] == args.records

        # The dial mix: half allowed, a quarter on the DNC list, a quarter without consent.
        half = args.checks // 2
        quarter = args.checks // 4
        mix = (
            rng.sample(consented, half)
            + rng.sample(dnc_numbers, quarter)
            + rng.sample(strangers, min(quarter, len(strangers)))
        )
        rng.shuffle(mix)
        written = [f"({n[2:5]}) {n[5:8]}-{n[8:]}" for n in mix]  # as a roster writes them
        for n in written[:500]:  # warm the page cache and the zone cache
            gate.check(n, "reminders", NOW)
        refused_before = events[1]
        gate_us = timed_us(lambda n: gate.check(n, "reminders", NOW), written)
        decisions = [gate.check(n, "reminders", NOW) for n in written]
        reasons: dict[str, int] = {}
        for dec in decisions:
            reasons[dec.reason] = reasons.get(dec.reason, 0) + 1
        refused = events[1] - refused_before

        # Reference: the bare indexed reads, on a second connection to the same files.
        cdb = sqlite3.connect(d / "consent.sqlite")
        ddb = sqlite3.connect(d / "dnc.sqlite")

        def bare(e164: str) -> object:
            ddb.execute("SELECT 1 FROM dnc WHERE number = ? LIMIT 1", (e164,)).fetchone()
            return cdb.execute(
                "SELECT granted FROM consent WHERE number = ? AND scope = ?", (e164, "reminders")
            ).fetchone()

        bare_us = timed_us(bare, mix)
        parse_us = timed_us(normalize_number, written)
        window = CallingWindow()
        window_us = timed_us(lambda n: window.check(NOW, callee_zones(n)), mix)
        sizes = {
            "consent_file_mb": round((d / "consent.sqlite").stat().st_size / 2**20, 1),
            "dnc_file_mb": round((d / "dnc.sqlite").stat().st_size / 2**20, 1),
        }
        cdb.close()
        ddb.close()
        consent.close()
        dnc.close()

    result = {
        "device": device(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "consent_records": args.records,
        "dnc_entries": args.records,
        "checks": len(written),
        "reasons": reasons,
        "refusal_events": refused,
        "build": {
            "consent_csv_import_s": round(import_consent_s, 1),
            "consent_import_records_per_s": round(args.records / import_consent_s),
            "dnc_import_s": round(import_dnc_s, 1),
            **sizes,
        },
        "gate_check": stats(gate_us),
        "reference": {
            "bare_indexed_sqlite_lookups": stats(bare_us),
            "phonenumbers_normalise": stats(parse_us),
            "parse_zone_lookup_and_window": stats(window_us),
        },
    }
    print(f"\nDevice: {result['device']}")
    print(
        f"{args.records:,} consent records, {args.records:,} DNC entries, "
        f"{len(written):,} checks: {reasons}"
    )
    print(f"{'per dial':40} {'P50 us':>9} {'P90 us':>9} {'P99 us':>9} {'checks/s':>10}")
    rows = {"gate check (OutboundGate.check)": result["gate_check"]}
    rows |= {f"  ref: {k}": v for k, v in result["reference"].items()}  # type: ignore[attr-defined]
    for name, s in rows.items():
        print(
            f"{name:40} {s['p50_us']:>9} {s['p90_us']:>9} {s['p99_us']:>9} {s['checks_per_s']:>10}"
        )
    print(f"build: {result['build']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tcpa-gates-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
