"""Runs ``appliance serve`` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, STORE

#: Fixed-phrase audio shared by every test process (rendered once per voice, then reused).
PHRASE_CACHE = REPO / "var" / "test-phrase-cache"


def free_udp_port() -> int:
    """An unused UDP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApplianceProcess:
    """An ``appliance serve`` subprocess with its own config, port and event stream.

    Args:
        workdir: Directory for the config, metadata DB, event stream and log.
        sip_port: SIP UDP port on 127.0.0.1.
        rtp_port: First RTP port.
        extra_toml: Extra TOML appended to the config (e.g. a ``[agent]`` section).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        sip_port: int,
        rtp_port: int,
        extra_toml: str = "",
        max_calls: int = 2,
    ) -> None:
        self.workdir = workdir
        self.sip_port = sip_port
        self.config = workdir / "appliance.toml"
        self.events_path = workdir / "events.jsonl"
        self.log_path = workdir / "serve.log"
        self.config_text = (
            f'[sip]\nbind = "127.0.0.1:{sip_port}"\nrtp_port = {rtp_port}\n'
            f"max_calls = {max_calls}\nretry_after_s = 17\ndrain_timeout_s = 30\n"
            f'[models]\nstore = "{STORE}"\nphrase_cache = "{PHRASE_CACHE}"\n'
            f'[store]\nmetadata_db = "{workdir / "calls.sqlite"}"\n{extra_toml}'
        )
        self.config.write_text(self.config_text)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``HOST:PORT`` target for sipp."""
        return f"127.0.0.1:{self.sip_port}"

    def start(self, timeout_s: float = 300, extra_env: dict[str, str] | None = None) -> None:
        """Start and wait for the ``ready`` log line."""
        self.launch(extra_env=extra_env)
        self.wait_ready(timeout_s)

    def launch(
        self, extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
    ) -> None:
        """Start without waiting (several processes then load their models in parallel)."""
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance.cli",
                "serve",
                "--config",
                str(self.config),
                *extra_args,
                "--test-events",
                str(self.events_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})},
        )

    def wait_ready(self, timeout_s: float = 300) -> None:
        """Wait for the ``ready`` log line; kill the process if it does not come in time."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "ready: accepting" in self.log():  # not "N fixed phrases ready"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"appliance exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        # A fixture whose start() raised never reaches its stop(): do not leave the process
        # loading models on the cores every later test needs.
        self.proc.kill()
        self.proc.wait(10)
        raise TimeoutError(f"appliance not ready in {timeout_s}s:\n{self.log()[-6000:]}")

    def log(self) -> str:
        """The process output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, object]]:
        """The test event stream so far."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_event(self, kind: str, *, count: int = 1, timeout_s: float = 20) -> list[dict]:
        """Wait until ``count`` events of ``kind`` were written; return them."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.events() if e["kind"] == kind]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 40) -> int:
        """SIGTERM, wait, return the exit code (kill after ``timeout_s``)."""
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)
