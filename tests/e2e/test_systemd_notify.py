"""``appliance serve`` under a Type=notify contract: READY, WATCHDOG while healthy, STOPPING."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.server import ApplianceProcess, free_udp_port

pytestmark = pytest.mark.e2e


def test_ready_watchdog_and_stopping(tmp_path: Path, store: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(1)
    proc = ApplianceProcess(tmp_path, sip_port=free_udp_port(), rtp_port=47500)
    proc.start(extra_env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    assert proc.proc is not None
    proc.proc.pid  # noqa: B018 - WATCHDOG_PID unset: the watchdog applies to the main process
    got: list[str] = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sum("WATCHDOG=1" in g for g in got) < 3:
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
        proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any("STOPPING=1" in g for g in got):
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                pass
    finally:
        assert proc.stop() == 0
        sock.close()
    assert got[0].startswith("READY=1"), got
    assert sum("WATCHDOG=1" in g for g in got) >= 3, got
    assert any("STOPPING=1" in g for g in got), got
