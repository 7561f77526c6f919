"""Packet capture on the loopback interface for wire-level assertions in end-to-end tests.

:class:`LoopbackCapture` runs ``tshark`` (or ``dumpcap``) on ``lo`` for the duration of a
``with`` block and leaves a complete classic pcap file, ready for
``tests.kit.pcap.read_rtp_streams``. Capturing needs root or the capabilities that
Debian's ``wireshark-common`` grants to dumpcap (CAP_NET_RAW, CAP_NET_ADMIN).
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

_LOGGER = logging.getLogger(__name__)


def capture_binary() -> str | None:
    """Return the path of tshark, else dumpcap, else None."""
    return shutil.which("tshark") or shutil.which("dumpcap")


class LoopbackCapture:
    """Capture loopback traffic to a pcap file while the ``with`` block runs.

    Entering starts the capture and returns only once the capturer reports that it is
    capturing and the file exists; leaving stops it with SIGINT and waits, so the file is
    complete when the block ends.

    Example::

        with LoopbackCapture(tmp_path / "call.pcap", bpf="udp"):
            run_sipp(...)
        streams = read_rtp_streams(tmp_path / "call.pcap")
    """

    def __init__(
        self,
        pcap_path: str | Path,
        bpf: str = "udp",
        *,
        interface: str = "lo",
        start_timeout_s: float = 15.0,
    ):
        """Prepare a capture.

        Args:
            pcap_path: Output file (classic pcap format).
            bpf: Capture filter in BPF syntax, for example "udp" or "udp port 5070".
            interface: Interface to capture on.
            start_timeout_s: How long to wait for the capture to start, in seconds.
        """
        self.pcap_path = Path(pcap_path)
        self.bpf = bpf
        self.interface = interface
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []
        self._started = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def stderr(self) -> str:
        """What the capturer wrote to standard error so far."""
        return "".join(self._stderr)

    def start(self) -> None:
        """Start capturing and wait until the capture is running.

        Raises:
            FileNotFoundError: If neither tshark nor dumpcap is installed.
            RuntimeError: If the capture does not start in time (permissions, bad filter).
        """
        binary = capture_binary()
        if binary is None:
            raise FileNotFoundError("tshark/dumpcap not found: install tshark")
        self.pcap_path.parent.mkdir(parents=True, exist_ok=True)
        self.pcap_path.unlink(missing_ok=True)
        cmd = [binary, "-i", self.interface, "-f", self.bpf, "-w", str(self.pcap_path), "-q"]
        # Classic pcap (not pcapng) so any pcap reader, and sipp, can open the file.
        cmd[1:1] = ["-F", "pcap"] if Path(binary).name == "tshark" else ["-P"]
        _LOGGER.info("starting capture: %s", " ".join(cmd))
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._started.is_set() and self.pcap_path.exists():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"capture did not start: {self.stderr.strip() or 'no output'}")

    def stop(self) -> None:
        """Stop the capture with SIGINT and wait until the file is complete."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # Let packets already queued in the kernel reach the capturer before stopping it.
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _LOGGER.error("capture did not stop on SIGINT; killing pid %d", proc.pid)
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def _read_stderr(self) -> None:
        proc = self.proc
        if proc is None or proc.stderr is None:
            return
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            self._stderr.append(line)
            if line.startswith("Capturing on"):
                self._started.set()

    def __enter__(self) -> LoopbackCapture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
