"""Liveness of an agent worker: the event loop and the SIP thread, end to end.

Every ``interval_s`` the asyncio loop sends a no-op through the pjsua2 thread's command queue
and waits for the reply to come back to the loop (:meth:`SipUserAgent.probe`). That round
trip needs both threads turning and the GIL free: the same path an INVITE takes to be
answered or refused and to reach its pipeline. Each success

* re-arms a stdlib :func:`faulthandler.dump_traceback_later` deadline of ``timeout_s``;
* pets the systemd watchdog (``WATCHDOG=1``, ``sd_notify(3)``) when one is configured;
* stamps :attr:`SipUserAgent.loop_heartbeat`, so a SIP thread that still turns while the loop
  is stuck refuses INVITEs with 503 instead of answering into dead air.

When the round trip stops, the faulthandler deadline fires on its own C thread, which needs
neither the loop nor the GIL: it writes every thread's stack to stderr (file, function and
line only: no call content) and ends the process with ``_exit(1)``. systemd
(``Restart=on-failure``) or supervisor (``autorestart=unexpected``) then restarts the worker,
and the next start records the unclean exit on the audit log (:class:`RunMarker`). The
systemd watchdog (``WatchdogSec``) stays as a second line.
"""

from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

_LOGGER = logging.getLogger(__name__)

#: Test-only fault hook: with this environment variable set to ``1``, SIGUSR2 stalls the SIP
#: thread and SIGUSR1 holds the GIL, both for good (the liveness test's stand-ins for the
#: deadlocks it must catch). Never set in production; the worker warns when it is.
TEST_FAULT_ENV = "APPLIANCE_TEST_FAULTS"


class _Probed(Protocol):
    loop_heartbeat: float | None

    def probe(self) -> asyncio.Future[float]: ...


class _Stallable(Protocol):
    def stall_for_test(self) -> None: ...


def install_test_faults(loop: asyncio.AbstractEventLoop, ua: _Stallable) -> bool:
    """Arm the test-only fault hook (:data:`TEST_FAULT_ENV`) on SIGUSR1/SIGUSR2, if asked.

    Returns whether it was armed.
    """
    if os.environ.get(TEST_FAULT_ENV, "") != "1":
        return False
    _LOGGER.warning("TEST FAULT HOOK ARMED (SIGUSR1, SIGUSR2): never in production")

    def hold_gil() -> None:
        _LOGGER.critical("TEST FAULT: holding the GIL on purpose")
        # ctypes.PyDLL keeps the GIL held across the foreign call.
        ctypes.PyDLL(None).sleep(3600)

    loop.add_signal_handler(signal.SIGUSR1, hold_gil)
    loop.add_signal_handler(signal.SIGUSR2, ua.stall_for_test)
    return True


class Liveness:
    """Probe the worker's threads and stop the process when they stall.

    Args:
        target: The SIP user agent (its :meth:`probe` and ``loop_heartbeat``).
        timeout_s: Seconds without a successful round trip before the process exits (status 1).
        notify: Sends ``sd_notify`` lines (``SystemdNotifier.notify``), or ``None``.
        watchdog_interval_s: How often to send ``WATCHDOG=1`` (half of ``WatchdogSec``), or
            ``None`` when no systemd watchdog is configured.
        interval_s: Probe period in seconds.
    """

    def __init__(
        self,
        target: _Probed,
        timeout_s: float,
        *,
        notify: Callable[..., bool] | None = None,
        watchdog_interval_s: float | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._notify = notify
        self._watchdog_interval_s = watchdog_interval_s
        self.interval_s = min(interval_s, watchdog_interval_s or interval_s)
        #: Seconds of the slowest round trip so far.
        self.worst_round_trip_s = 0.0
        self._armed = False

    def arm(self) -> None:
        """Start (or restart) the deadline: the process exits ``timeout_s`` from now."""
        faulthandler.dump_traceback_later(self.timeout_s, exit=True, file=sys.stderr)
        self._armed = True

    def disarm(self) -> None:
        """Cancel the deadline (a clean stop)."""
        if self._armed:
            faulthandler.cancel_dump_traceback_later()
            self._armed = False

    async def run(self) -> None:
        """Probe until cancelled; the deadline stays armed between successes."""
        self.arm()
        beat = asyncio.create_task(self._heartbeat())
        last_ping = 0.0
        late = False
        try:
            while True:
                try:
                    rtt = await asyncio.wait_for(self.target.probe(), self.timeout_s / 2)
                except TimeoutError:
                    if not late:
                        _LOGGER.error(
                            "liveness: the SIP thread has not answered for %.1f s; withholding "
                            "the watchdog, the process exits at %.0f s",
                            self.timeout_s / 2,
                            self.timeout_s,
                        )
                    late = True
                    continue
                if late:
                    _LOGGER.warning("liveness: the SIP thread answers again (%.1f s)", rtt)
                    late = False
                self.worst_round_trip_s = max(self.worst_round_trip_s, rtt)
                self.arm()
                now = time.monotonic()
                if (
                    self._notify is not None
                    and self._watchdog_interval_s is not None
                    and now - last_ping >= self._watchdog_interval_s
                ):
                    self._notify("WATCHDOG=1")
                    last_ping = now
                await asyncio.sleep(self.interval_s)
        finally:
            beat.cancel()
            self.disarm()

    async def _heartbeat(self) -> None:
        while True:
            self.target.loop_heartbeat = time.monotonic()
            await asyncio.sleep(0.5)


class RunMarker:
    """A file that exists while the worker runs: found at start, the last run ended unclean.

    Args:
        path: The marker file (in the worker's state directory).

    The file holds the pid of the run that wrote it. A clean stop removes it; a crash, a kill
    or the liveness deadline leaves it behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def begin(self) -> str:
        """Write the marker; return ``"unclean"`` if the last run left one, else ``""``."""
        previous = "unclean" if self.path.exists() else ""
        try:
            self.path.write_text(f"{os.getpid()}\n")
        except OSError:
            _LOGGER.warning("could not write the run marker %s", self.path)
        return previous

    def end(self) -> None:
        """Remove the marker (a clean stop)."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            _LOGGER.warning("could not remove the run marker %s", self.path)
