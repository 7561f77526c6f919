"""Audit durability: kill -9 during a burst of appends, and a full disk (tmpfs).

Every record acknowledged (``append`` returned its index) must survive and the log must verify.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from appliance.audit import envelope
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.observer import AuditObserver
from appliance.audit.store import AuditError, AuditLog, Entry
from appliance.audit.verify import verify
from appliance.events import TurnEnded

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from appliance.audit import envelope
    from appliance.audit.checkpoint import load_or_create_signing_key
    from appliance.audit.store import AuditLog, Entry
    d = Path(sys.argv[1])
    log = AuditLog(d / "audit.sqlite", envelope.load_kek(d / "kek", create=True),
                   load_or_create_signing_key(d / "sign.key"), origin="test/audit",
                   checkpoint_file=d / "cp.log")
    n = 0
    while True:
        batch = [Entry("TurnEnded", f"call{n % 7}", content={"user_text": "x" * 200})
                 for _ in range(5)]
        idx = log.append(batch)
        print(idx[-1], flush=True)
        n += 1
        if n % 50 == 0:
            log.checkpoint()
    """
)


def test_kill_9_during_appends_loses_nothing_acknowledged(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    acknowledged = -1
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while acknowledged < 1500 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acknowledged = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert acknowledged >= 1500, "the writer did not get far enough"
    signing = load_or_create_signing_key(tmp_path / "sign.key")
    report = verify(tmp_path / "audit.sqlite", signing.public_key(), origin="test/audit")
    assert report.ok, report.summary()
    assert report.size >= acknowledged + 1
    # The log can be reopened and extended after the crash.
    log = AuditLog(
        tmp_path / "audit.sqlite",
        envelope.load_kek(tmp_path / "kek"),
        signing,
        origin="test/audit",
        checkpoint_file=tmp_path / "cp.log",
    )
    assert log.append([Entry("Recovered")]) == [report.size]


def test_full_disk_fails_closed_and_loses_nothing(tmp_path: Path, tiny_fs: Path) -> None:
    kek = envelope.load_kek(tmp_path / "kek", create=True)
    signing = load_or_create_signing_key(tmp_path / "sign.key")
    log = AuditLog(
        tiny_fs / "audit.sqlite",
        kek,
        signing,
        origin="test/audit",
        checkpoint_file=tmp_path / "cp.log",
    )
    failures: list[AuditError] = []
    observer = AuditObserver(log, on_failure=failures.append)
    acked_before = 0
    for i in range(50):
        observer(TurnEnded(f"call{i % 3}", user_text="hello " * 20))
    assert observer.flush(10)
    acked_before = observer.acknowledged
    assert acked_before == 50 and observer.healthy
    log.checkpoint()
    filler = tiny_fs / "filler"
    with filler.open("wb", buffering=0) as f:  # take every free byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    for _ in range(200):
        observer(TurnEnded("call9", user_text="this must not be acknowledged " * 20))
    assert observer.flush(10)
    assert not observer.healthy and failures, "a full disk did not fail closed"
    assert observer.acknowledged == acked_before
    filler.unlink()  # space returns
    log.close()
    report = verify(tiny_fs / "audit.sqlite", signing.public_key(), origin="test/audit")
    assert report.ok, report.summary()
    assert report.size == acked_before
