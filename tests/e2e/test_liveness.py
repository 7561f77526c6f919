"""A stalled worker is restarted and answers calls again (supervisord, as where no systemd runs).

The worker runs with the test-only fault hook (``APPLIANCE_TEST_FAULTS=1``): SIGUSR2 blocks its
SIP thread for good, SIGUSR1 makes its event loop hold the GIL for good, the two ways the
agent was seen to go silent. Each time, the liveness deadline ends the process (status 1,
thread stacks on stderr), supervisord starts a new one, a real call over SIP/RTP (sipp) is
answered with the AI disclosure, and the new start is on the audit log as a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.server import PHRASE_CACHE, free_udp_port
from tests.e2e.sipp import Pause, render_uac_scenario, run_sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
]
CONF = Path(__file__).resolve().parents[2] / "systemd" / "supervisord.conf"
LIVENESS_TIMEOUT_S = 4
#: From the stall to a call answered by the new worker: the liveness deadline plus a start
#: (models load from a warm page cache; fixed phrases come from the shared cache).
RESTART_BUDGET_S = 90


def _pid(ctl: list[str], env: dict[str, str]) -> int:
    out = subprocess.run([*ctl, "pid", "appliance-agent"], env=env, capture_output=True, text=True)
    return int(out.stdout.strip()) if out.stdout.strip().isdigit() else 0


def _wait_ready(log: Path, count: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count("ready: accepting") >= count:
            return True
        time.sleep(0.2)
    return False


def _starts(audit_db: Path) -> list[dict[str, object]]:
    """ServiceStarted records' clear metadata, read from the audit log without any key."""
    with sqlite3.connect(audit_db) as db:
        rows = db.execute("SELECT data FROM records ORDER BY idx").fetchall()
    docs = [json.loads(bytes(r[0])[1:]) for r in rows]
    return [d.get("meta", {}) for d in docs if d.get("kind") == "ServiceStarted"]


def _greeted_calls(metadata_db: Path) -> int:
    with sqlite3.connect(metadata_db) as db:
        return int(
            db.execute("SELECT COUNT(*) FROM calls WHERE disclosure_at IS NOT NULL").fetchone()[0]
        )


def _call_with_greeting(target: str, metadata_db: Path, work: Path) -> None:
    before = _greeted_calls(metadata_db)
    result = run_sipp(render_uac_scenario(steps=[Pause(9500)]), target, timeout_s=60, workdir=work)
    assert result.returncode == 0, result.messages[-2000:]
    deadline = time.monotonic() + 15
    while _greeted_calls(metadata_db) <= before and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _greeted_calls(metadata_db) == before + 1, "the call got no AI disclosure"


def test_a_stalled_worker_is_restarted_and_answers_again(tmp_path: Path, store: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "supervisord").exists():
        pytest.skip("supervisor is not installed")
    port = free_udp_port()
    cfg = tmp_path / "appliance.toml"
    metadata_db = tmp_path / "calls.sqlite"
    cfg.write_text(
        f'[sip]\nbind = "127.0.0.1:{port}"\nrtp_port = 49500\n'
        f"liveness_timeout_s = {LIVENESS_TIMEOUT_S}\n"
        f'[models]\nstore = "{store}"\nphrase_cache = "{PHRASE_CACHE}"\n'
        f'[store]\nmetadata_db = "{metadata_db}"\n'
    )
    env = {
        **os.environ,
        "APPLIANCE_VENV": str(bindir.parent),
        "APPLIANCE_CONFIG": str(cfg),
        "APPLIANCE_VAR": str(tmp_path),
        "APPLIANCE_TEST_FAULTS": "1",
    }
    sup = subprocess.Popen(
        [str(bindir / "supervisord"), "-c", str(CONF)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctl = [str(bindir / "supervisorctl"), "-c", str(CONF)]
    log = tmp_path / "appliance-agent.log"
    target = f"127.0.0.1:{port}"
    try:
        assert _wait_ready(log, 1, 300), log.read_text(errors="replace")[-3000:]
        _call_with_greeting(target, metadata_db, tmp_path / "call-0")
        restarts = []
        for n, (sig, what) in enumerate(
            [(signal.SIGUSR2, "SIP thread"), (signal.SIGUSR1, "GIL")], start=1
        ):
            pid = _pid(ctl, env)
            assert pid > 0
            stalled_at = time.monotonic()
            os.kill(pid, sig)
            assert _wait_ready(log, n + 1, RESTART_BUDGET_S), log.read_text(errors="replace")[
                -3000:
            ]
            _call_with_greeting(target, metadata_db, tmp_path / f"call-{n}")
            restarts.append(round(time.monotonic() - stalled_at, 1))
            new_pid = _pid(ctl, env)
            assert new_pid not in (0, pid), f"{what}: still pid {pid}"
            assert restarts[-1] <= RESTART_BUDGET_S, f"{what}: answered again after {restarts}"
        print(f"stall -> answered again (s): {restarts}")
        text = log.read_text(errors="replace")
        # faulthandler's dump: every thread's stack, then the exit; no call content.
        assert text.count("Timeout (0:00:0") >= 2, text[-3000:]
        assert "Thread 0x" in text and "(most recent call first)" in text
        assert "stall_for_test" in text or "threading.py" in text
        starts = _starts(tmp_path / "var" / "audit" / "audit.sqlite")
        assert [s.get("previous_exit", "") for s in starts] == ["", "unclean", "unclean"], starts
    finally:
        subprocess.run([*ctl, "shutdown"], env=env, capture_output=True, timeout=60)
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
