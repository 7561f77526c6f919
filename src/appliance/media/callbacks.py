"""Guarding pjsua2 director callbacks: no Python exception may return into pjsua2."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

_LOGGER = logging.getLogger("appliance.media.sip")


def guarded(what: str) -> Callable[[Callable[[Any, Any], None]], Callable[[Any, Any], None]]:
    """Wrap a pjsua2 director callback so that no exception ever returns into pjsua2.

    An exception escaping a SWIG director becomes a C++ exception thrown through pjsip's C
    frames: at best the process aborts, at worst a lock stays held and the agent goes silent.
    Every failure is logged with its traceback instead (never with call content).
    """

    def decorate(fn: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        @functools.wraps(fn)
        def callback(self: Any, prm: Any) -> None:
            try:
                fn(self, prm)
            except BaseException:  # noqa: BLE001 - nothing may reach pjsua2
                try:
                    _LOGGER.exception("pjsua2 %s callback failed (%s)", what, self)
                except BaseException:  # noqa: BLE001, S110 - logging itself failed
                    pass

        return callback

    return decorate
