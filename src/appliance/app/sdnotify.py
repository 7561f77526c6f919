"""systemd service notifications (``sd_notify(3)``): readiness, status, watchdog.

The protocol is one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside systemd (no
``$NOTIFY_SOCKET``) every call is a no-op, so the same code runs under supervisor or by hand.
"""

from __future__ import annotations

import logging
import os
import socket

_LOGGER = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends ``sd_notify`` messages when running under systemd ``Type=notify``."""

    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: Half the watchdog timeout, in seconds, or ``None`` when no watchdog is configured.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if watched else None

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return bool(self._addr)

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (e.g. ``"READY=1"``) in one datagram; ``False`` if not sent."""
        if not self._addr:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._addr)
                sock.sendall("\n".join(lines).encode())
            return True
        except OSError:
            _LOGGER.warning("sd_notify failed")
            return False
