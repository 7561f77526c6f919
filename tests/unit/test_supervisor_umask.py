"""Under supervisord (hosts without systemd) the PHI files are owner-only and no core is dumped.

The repository's ``systemd/supervisord.conf`` runs for real, with ``APPLIANCE_VENV`` pointing at a
directory whose ``bin/appliance`` is this project's interpreter running :data:`WRITER`: it
creates the files the agent creates (audit KEK, checkpoint signing key, audit log, call
metadata, calendar) with the project's own functions, in the process supervisord started, then
reports their modes, its umask, its core limit and its environment (issue 14, Deliver 4).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "systemd" / "supervisord.conf"
SUPERVISORD = Path(sys.executable).with_name("supervisord")

pytestmark = pytest.mark.skipif(not SUPERVISORD.exists(), reason="supervisord not installed")

#: Stands in for ``appliance serve``: the same file-creating code, then waits to be stopped.
WRITER = """
import json, os, resource, sys, time
from pathlib import Path
from appliance.agent.calendar import SqliteCalendar
from appliance.audit import envelope
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.store import connect, migrate
from appliance.metrics.store import CallMetadataStore

if sys.argv[1] == "admin":  # the admin program: nothing to write here
    while True:
        time.sleep(1)
assert sys.argv[1:3] == ["serve", "--config"], sys.argv
state = Path(sys.argv[3]).parent / "state"
envelope.load_kek(state / "keys" / "audit-kek", create=True)
load_or_create_signing_key(state / "keys" / "audit-signing.key")
(state / "audit").mkdir(parents=True)  # as AuditLog does, under the umask
db = connect(state / "audit" / "audit.sqlite")
migrate(db)
calendar = SqliteCalendar(state / "calendar.sqlite")
calls = CallMetadataStore(state / "calls.sqlite")
umask = os.umask(0)
os.umask(umask)
report = {
    "umask": umask,
    "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
    "hf_offline": os.environ.get("HF_HUB_OFFLINE"),
    "transformers_offline": os.environ.get("TRANSFORMERS_OFFLINE"),
    "pid": os.getpid(),
    "modes": {
        str(p.relative_to(state)): p.stat().st_mode & 0o777
        for p in sorted(state.rglob("*"))
    },
}
tmp = state.parent / "report.json.tmp"
tmp.write_text(json.dumps(report))
tmp.rename(state.parent / "report.json")
while True:
    time.sleep(1)
"""


def _fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    script = venv / "bin" / "appliance"
    script.write_text(f"#!{sys.executable}\n{WRITER}")
    script.chmod(0o755)
    return venv


def test_supervisor_agent_writes_owner_only_files_and_dumps_no_core(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    var = tmp_path / "var"
    var.mkdir()
    config = tmp_path / "etc" / "appliance.toml"
    config.parent.mkdir()
    config.write_text("")
    env = {
        **os.environ,
        "APPLIANCE_VENV": str(venv),
        "APPLIANCE_CONFIG": str(config),
        "APPLIANCE_VAR": str(var),
        "PYTHONPATH": str(REPO / "src"),
    }
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    proc = subprocess.Popen(
        [str(SUPERVISORD), "-c", str(CONF)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    report_file = tmp_path / "etc" / "report.json"
    try:
        deadline = time.monotonic() + 45
        while not report_file.exists():
            assert proc.poll() is None, "supervisord exited"
            log = var / "appliance-agent.log"
            if log.exists() and "Traceback" in log.read_text():
                pytest.fail(log.read_text()[-3000:])
            assert time.monotonic() < deadline, (var / "appliance-agent.log").read_text()[-2000:]
            time.sleep(0.2)
        report = json.loads(report_file.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert report["umask"] == 0o077
    assert report["core"][0] == 0  # soft RLIMIT_CORE: no core file, whatever the pattern
    assert report["hf_offline"] == "1" and report["transformers_offline"] == "1"
    modes = report["modes"]
    for secret in (
        "keys/audit-kek",
        "keys/audit-signing.key",
        "audit/audit.sqlite",
        "audit/audit.sqlite-wal",
    ):
        assert modes[secret] == 0o600, (secret, oct(modes[secret]))
    for directory in ("keys", "audit"):
        assert modes[directory] == 0o700, (directory, oct(modes[directory]))
    # Group-shared with the admin page by design (its own user, group appliance on the box);
    # never readable by other users.
    assert modes["calendar.sqlite"] == 0o660
    assert modes["calls.sqlite"] == 0o640
    for name, mode in modes.items():
        assert not mode & stat.S_IRWXO, (name, oct(mode))
    assert not list(tmp_path.rglob("core*")), "a core file was written"
