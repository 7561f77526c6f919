"""Admin page load times: the dashboard (``/``) and the call list (``/calls``) at 100,000 calls.

Run: ``.venv/bin/python -m benchmarks.admin_pages [--calls 100000] [--loads 30]``. Prints a
table and writes JSON to ``benchmarks/results/admin-pages-<stamp>.json``.

The app is the real one (:func:`appliance.admin.web.create_app`) driven in-process through
Starlette's ``TestClient`` (no TLS, no network: the figures are the app's own time), signed
in through the real password and TOTP forms as an owner. No agent listens on the control
socket, so the dashboard's status request fails at once (as with the agent down) and every
dashboard load still evaluates all alert rules and records transitions.

The call metadata database is built with the agent's own migrations
(:class:`appliance.metrics.store.CallMetadataStore`) and filled by bulk SQL inserts matching
that schema: ``--calls`` calls spread uniformly over the last 90 days, each with 4 turns
(``turn_latency``, with an STT confidence), a post-call score, media counters and a workflow
outcome (``call_workflows``); transferred calls also get a transfer result (``transfers``,
one in ten failed, blind and attended alternating). Reference in the same run: the same
pages at 1,000 calls; the ratio is 100k over reference (P50).

Percentiles: nearest rank over the ``--loads`` timed loads, after 3 warm-up loads of which the
first (``first_ms``: settled chart buckets not yet in the dashboard's memory) is reported too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import pyotp
from fastapi.testclient import TestClient

from appliance.admin.rbac import Role
from appliance.admin.web import create_app
from appliance.config import load_settings
from appliance.metrics.store import CallMetadataStore

RESULTS = Path(__file__).resolve().parent / "results"
PASSWORD = "correct horse battery staple"
DAYS = 90
TURNS = 4
PAGES = {
    "dashboard /": "/",
    "dashboard /?bucket=week": "/?bucket=week",
    "call list /calls": "/calls",
    "call list /calls?page=1000": "/calls?page=1000",
    "call list /calls?outcome=transferred": "/calls?outcome=transferred",
    "call list /calls?workflow=reschedule": "/calls?workflow=reschedule",
}
WORKFLOWS = ["reschedule", "cancel", "new_patient", "faq", "refill"]


def device() -> str:
    """CPU model and core count."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores ({platform.machine()})"


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def seed(path: Path, calls: int, now: float, rng: random.Random) -> None:
    """``calls`` calls over the last :data:`DAYS` days, by bulk inserts into the migrated schema."""
    CallMetadataStore(path).close()  # creates the schema with the agent's migrations
    conn = sqlite3.connect(path)
    outcomes = ["resolved"] * 6 + ["message_taken"] * 2 + ["transferred", "abandoned"]
    call_rows, turn_rows, score_rows, media_rows = [], [], [], []
    transfer_rows, workflow_rows = [], []
    for i in range(calls):
        cid = f"c{i:07d}-{rng.getrandbits(32):08x}"
        at = now - rng.random() * DAYS * 86400
        duration = rng.uniform(20, 400)
        call_rows.append(
            (cid, at, at + 2, at + duration, duration, "caller_hangup", "PCMU", TURNS, 0)
        )
        for k in range(TURNS):
            end, agent, reply = rng.uniform(0.2, 0.8), rng.uniform(0.1, 1.5), rng.uniform(0.2, 1)
            turn_rows.append(
                (
                    cid,
                    at + 10 + 15 * k,
                    end,
                    end * 0.8,
                    None,
                    reply * 0.4,
                    end + agent + reply,
                    agent,
                    reply,
                    "free",
                    min(1.0, max(0.0, rng.gauss(0.85, 0.15))),
                )  # fmt: skip
            )
        outcome = rng.choice(outcomes)
        transferred = outcome == "transferred"
        score_rows.append(
            (
                cid,
                at + duration + 1,
                outcome,
                int(not transferred),
                1 if transferred else None,
                int(rng.random() > 0.01),
                1,
                1,
                rng.uniform(-0.5, 0.8),
                "rules",
            )  # fmt: skip
        )
        media_rows.append((cid, 3000, 0, 2900, 3, 0))
        end_at = at + duration
        workflow_rows.append((cid, end_at - 5, rng.choice(WORKFLOWS), outcome, "intent"))
        if transferred:
            ok = rng.random() > 0.1
            mode = "attended" if i % 2 else "blind"
            transfer_rows.append((cid, end_at - 10, mode, int(ok), 200 if ok else 486, 1))
    with conn:
        conn.executemany(
            "INSERT INTO calls (call_id, answered_at, disclosure_at, ended_at, duration_s,"
            " disposition, codec, turns, barge_ins) VALUES (?,?,?,?,?,?,?,?,?)",
            call_rows,
        )
        conn.executemany(
            "INSERT INTO turn_latency (call_id, t, endpointing_s, stt_s, llm_ttft_s, tts_ttfa_s,"
            " voice_to_voice_s, agent_s, reply_s, listening, stt_confidence)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            turn_rows,
        )
        conn.executemany(
            "INSERT INTO transfers (call_id, t, mode, ok, status, webhook_delivered)"
            " VALUES (?,?,?,?,?,?)",
            transfer_rows,
        )
        conn.executemany(
            "INSERT INTO call_workflows (call_id, t, workflow, outcome, intent) VALUES (?,?,?,?,?)",
            workflow_rows,
        )
        conn.executemany(
            "INSERT INTO call_scores (call_id, scored_at, outcome, contained,"
            " transfer_appropriate, disclosure_ok, identity_before_phi_ok, no_card_number_ok,"
            " sentiment, judge) VALUES (?,?,?,?,?,?,?,?,?,?)",
            score_rows,
        )
        conn.executemany(
            "INSERT INTO call_media (call_id, rx_frames, rx_dropped, tx_frames, tx_underruns,"
            " callback_errors) VALUES (?,?,?,?,?,?)",
            media_rows,
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def settings_file(root: Path) -> Path:
    path = root / "appliance.toml"
    path.write_text(
        f"""
[admin]
db = "{root}/admin.sqlite"
control_socket = "{root}/run/control.sock"
tls_dir = "{root}/tls"
enrolment_hash = "{root}/enrolment.argon2"
metrics_token_file = "{root}/keys/metrics-token"

[store]
metadata_db = "{root}/calls.sqlite"
""",
        encoding="utf-8",
    )
    return path


def signed_in_client(app: Any) -> TestClient:
    """A client signed in as an owner through the password and TOTP forms."""
    accounts = app.state.ctx.accounts
    user = accounts.create("bench", frozenset({Role.OWNER}), created_by="bench")
    accounts.set_password(user.id, PASSWORD)
    secret = accounts.new_totp_secret()
    totp = pyotp.TOTP(secret)
    assert accounts.enrol_totp(user.id, secret, totp.now())
    c = TestClient(app, base_url="https://testserver", follow_redirects=False)
    c.__enter__()
    r = c.post("/login", data={"username": "bench", "password": PASSWORD})
    assert r.status_code == 303, r.text
    page = c.get("/login/totp").text
    m = re.search(r'name="csrf-token" content="([^"]*)"', page)
    time.sleep(max(0.0, 30.5 - time.time() % 30))  # the enrolment code's step is used up
    r = c.post("/login/totp", data={"code": totp.now(), "csrf_token": m.group(1) if m else ""})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    return c


def measure(calls: int, loads: int, rng: random.Random) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        seed(root / "calls.sqlite", calls, time.time(), rng)
        seed_s = time.perf_counter() - t0
        app = create_app(load_settings(settings_file(root)))
        client = signed_in_client(app)
        try:
            out: dict[str, Any] = {"calls": calls, "seed_seconds": round(seed_s, 1)}
            for name, url in PAGES.items():
                t = time.perf_counter()
                assert client.get(url).status_code == 200, url
                first_ms = (time.perf_counter() - t) * 1000
                for _ in range(2):
                    assert client.get(url).status_code == 200, url
                times = []
                for _ in range(loads):
                    t = time.perf_counter()
                    r = client.get(url)
                    times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, (url, r.status_code)
                out[name] = {
                    "p50_ms": round(nearest_rank(times, 0.5), 1),
                    "p90_ms": round(nearest_rank(times, 0.9), 1),
                    "first_ms": round(first_ms, 1),
                    "loads": loads,
                    "bytes": len(r.content),
                }
        finally:
            client.__exit__(None, None, None)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=100_000, help="calls in the metadata DB")
    ap.add_argument("--reference-calls", type=int, default=1_000)
    ap.add_argument("--loads", type=int, default=30, help="timed loads per page")
    args = ap.parse_args()
    rng = random.Random(12)
    reference = measure(args.reference_calls, args.loads, rng)
    full = measure(args.calls, args.loads, rng)
    result = {
        "device": device(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "method": "in-process TestClient, owner signed in, no agent on the socket; "
        "nearest-rank P50/P90 over timed loads after 3 warm-up loads; first_ms is the first load",
        "turns_per_call": TURNS,
        "days": DAYS,
        "reference": reference,
        "full": full,
        "ratio_p50": {
            name: round(full[name]["p50_ms"] / reference[name]["p50_ms"], 2) for name in PAGES
        },
    }
    print(f"\nDevice: {result['device']}")
    head = (
        f"{'page':38} {'ref P50':>8} {'ref P90':>8} {'P50':>8} {'P90':>8} {'ratio':>6} {'first':>8}"
    )
    print(f"{args.reference_calls:,} calls (reference) vs {args.calls:,} calls, ms")
    print(head)
    for name in PAGES:
        ref, got = reference[name], full[name]
        print(
            f"{name:38} {ref['p50_ms']:>8} {ref['p90_ms']:>8} {got['p50_ms']:>8} "
            f"{got['p90_ms']:>8} {result['ratio_p50'][name]:>6} {got['first_ms']:>8}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"admin-pages-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
