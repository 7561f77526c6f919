#!/usr/bin/env python3
"""Health check of one appliance after a start: ready, SIP OPTIONS answered 200, version.

Standard library only, so it runs with the box's own Python (Ansible's ``script`` module copies
it over). Checks, in order, each bounded by ``--timeout`` in total:

1. ready: with ``--log`` (supervisord), the agent's log must gain the line
   ``ready: accepting SIP calls on`` after byte ``--offset`` (the size before the start); a CLI
   error line (``appliance: ...``, e.g. exit 3 "model error") fails at once. Under systemd the
   caller checks that the unit is active (``Type=notify``: active only after ``READY=1``).
2. SIP: an OPTIONS request to ``--sip HOST:PORT`` is answered ``200``.
3. version: ``--appliance-bin --version`` prints ``appliance --expect-version``.

Prints one JSON object (what was seen, timings) and exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

READY = "ready: accepting SIP calls on"


def options_request(host: str, port: int, local_ip: str, local_port: int) -> bytes:
    """One OPTIONS request (RFC 3261 section 11.1) from ``local_ip:local_port``."""
    lines = [
        f"OPTIONS sip:{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {local_ip}:{local_port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
        "Max-Forwards: 70",
        f"From: <sip:healthcheck@{local_ip}>;tag={uuid.uuid4().hex[:8]}",
        f"To: <sip:{host}:{port}>",
        f"Call-ID: {uuid.uuid4().hex}@{local_ip}",
        "CSeq: 1 OPTIONS",
        f"Contact: <sip:healthcheck@{local_ip}:{local_port}>",
        "Accept: application/sdp",
        "User-Agent: appliance-fleet-healthcheck",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def sip_options(host: str, port: int, timeout_s: float = 1.0) -> tuple[int, str]:
    """Send one OPTIONS; return (status code or 0, status line or reason)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        local_ip, local_port = sock.getsockname()[:2]
        sock.settimeout(timeout_s)
        sock.send(options_request(host, port, local_ip, local_port))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return 0, "no answer"
        except ConnectionRefusedError:
            return 0, "port unreachable"
    first = data.split(b"\r\n", 1)[0].decode("ascii", "replace")
    parts = first.split()
    if len(parts) >= 2 and parts[0] == "SIP/2.0" and parts[1].isdigit():
        return int(parts[1]), first
    return 0, "not a SIP response"


def wait_ready(log: Path, offset: int, deadline: float) -> tuple[bool, str]:
    """Wait for the ready line after ``offset``; fail early on a CLI error line."""
    while time.monotonic() < deadline:
        text = ""
        if log.exists():
            with log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
        for line in text.splitlines():
            if READY in line:
                return True, line.strip()[-200:]
            if line.startswith("appliance: "):
                return False, line.strip()[:300]
        time.sleep(0.5)
    return False, f"no ready line in {log} after byte {offset}"


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sip", required=True, help="HOST:PORT the agent binds")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--appliance-bin", default=None)
    parser.add_argument("--expect-version", default=None)
    args = parser.parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    report: dict[str, object] = {"ok": False}
    host, _, port = args.sip.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")
    if args.log is not None:
        ready, line = wait_ready(args.log, args.offset, deadline)
        report.update(ready=ready, ready_line=line, ready_after_s=round(time.monotonic() - t0, 2))
        if not ready:
            print(json.dumps(report))
            return 1
    code, status = 0, "not tried"
    while time.monotonic() < deadline:
        code, status = sip_options(host, int(port))
        if code == 200:
            break
        time.sleep(0.5)
    report.update(options=status, options_after_s=round(time.monotonic() - t0, 2))
    if code != 200:
        print(json.dumps(report))
        return 1
    if args.appliance_bin:
        out = subprocess.run(
            [args.appliance_bin, "--version"], capture_output=True, text=True, timeout=60
        )
        version = out.stdout.strip()
        report["version"] = version
        if args.expect_version and version != f"appliance {args.expect_version}":
            print(json.dumps(report))
            return 1
    report["ok"] = True
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
