"""supervisord runs the agent where there is no systemd: start, ready, status, drain-stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.server import PHRASE_CACHE, free_udp_port

pytestmark = pytest.mark.e2e
CONF = Path(__file__).resolve().parents[2] / "systemd" / "supervisord.conf"


def test_supervisord_runs_and_stops_the_agent(tmp_path: Path, store: Path) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "supervisord").exists():
        pytest.skip("supervisor is not installed")
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(
        f'[sip]\nbind = "127.0.0.1:{free_udp_port()}"\nrtp_port = 48500\n'
        f'[models]\nstore = "{store}"\nphrase_cache = "{PHRASE_CACHE}"\n'
    )
    env = {
        **os.environ,
        "APPLIANCE_VENV": str(bindir.parent),
        "APPLIANCE_CONFIG": str(cfg),
        "APPLIANCE_VAR": str(tmp_path),
    }
    sup = subprocess.Popen(
        [str(bindir / "supervisord"), "-c", str(CONF)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ctl = [str(bindir / "supervisorctl"), "-c", str(CONF)]
    log = tmp_path / "appliance-agent.log"
    try:
        deadline = time.monotonic() + 300  # a cold phrase cache renders every fixed phrase
        while time.monotonic() < deadline:
            if log.exists() and "ready: accepting" in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        assert "ready: accepting" in log.read_text(errors="replace"), log.read_text(
            errors="replace"
        )[-2000:]
        deadline = time.monotonic() + 15  # RUNNING once up for startsecs
        while True:
            status = subprocess.run(
                [*ctl, "status"], env=env, capture_output=True, text=True, timeout=30
            )
            if "RUNNING" in status.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "appliance-agent" in status.stdout and "RUNNING" in status.stdout, status.stdout
        stop = subprocess.run(
            [*ctl, "stop", "appliance-agent"], env=env, capture_output=True, text=True, timeout=60
        )
        assert "stopped" in stop.stdout, stop.stdout + stop.stderr
        assert "draining" in log.read_text(errors="replace")
    finally:
        subprocess.run([*ctl, "shutdown"], env=env, capture_output=True, timeout=60)
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
