"""Event-loop lag: how late the agent's asyncio loop runs what is due (issue 13, item 4).

Every call's pipeline, the SIP callbacks' hand-offs and the control socket share one asyncio
loop. A blocking call on it (a model run, a SQLite commit, a long regex) delays every other
call's frames by its own length: an agent whose loop stalls 300 ms adds 300 ms to the
voice-to-voice latency of every call in progress. :class:`LoopLagMonitor` measures that
directly, the way Node.js's ``perf_hooks.monitorEventLoopDelay`` and aiodebug do: a task asks to
wake every ``interval_s`` and records how much later than asked it actually ran.

The figures go into the control op ``status`` (``loop_lag``) and from there into the admin
page's Prometheus exposition (``appliance_event_loop_lag_seconds{quantile}``), so a regression
that puts blocking work back on the loop shows on a dashboard rather than as slow calls.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Wake-up period, s. Short enough to see a 50 ms stall; 10 wake-ups/s costs nothing.
INTERVAL_S = 0.1
#: Samples kept (at INTERVAL_S: the last 60 s).
WINDOW = 600
#: A stall this long, s, is counted: a 20 ms audio frame is then 5 frames late.
STALL_S = 0.1


@dataclass(frozen=True)
class LoopLag:
    """Lag over the recent window, seconds (``samples`` wake-ups; 0 when none yet).

    ``stalls`` counts wake-ups at least :data:`STALL_S` late since the monitor started;
    ``max_s`` is the worst since the monitor started.
    """

    samples: int
    p50_s: float
    p99_s: float
    window_max_s: float
    max_s: float
    stalls: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON-able figures, rounded to 0.1 ms."""
        return {
            "samples": self.samples,
            "p50_s": round(self.p50_s, 4),
            "p99_s": round(self.p99_s, 4),
            "window_max_s": round(self.window_max_s, 4),
            "max_s": round(self.max_s, 4),
            "stalls": self.stalls,
        }


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted ``ordered`` (0 for an empty list)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class LoopLagMonitor:
    """Measures the running loop's lag until :meth:`stop` (or the task is cancelled).

    Args:
        interval_s: Wake-up period, s (> 0).
        window: Samples kept for the quantiles (>= 1).
        clock: Monotonic clock, s (tests may pass their own).

    Raises:
        ValueError: A non-positive interval or window.
    """

    def __init__(
        self,
        interval_s: float = INTERVAL_S,
        window: int = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0 or window < 1:
            raise ValueError("interval_s must be > 0 and window >= 1")
        self.interval_s = interval_s
        self._clock = clock
        self._lags: collections.deque[float] = collections.deque(maxlen=window)
        self._max = 0.0
        self._stalls = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """Start measuring on the running loop; returns the task."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="loop-lag")
        return self._task

    def stop(self) -> None:
        """Stop measuring (the figures stay readable)."""
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        """Sleep ``interval_s`` again and again, recording how late each wake-up came."""
        while True:
            asked = self._clock()
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, self._clock() - asked - self.interval_s))

    def record(self, lag_s: float) -> None:
        """Add one wake-up's lag, s."""
        self._lags.append(lag_s)
        self._max = max(self._max, lag_s)
        if lag_s >= STALL_S:
            self._stalls += 1

    def snapshot(self) -> LoopLag:
        """The figures now (cheap: sorts at most ``window`` floats)."""
        ordered = sorted(self._lags)
        return LoopLag(
            samples=len(ordered),
            p50_s=_quantile(ordered, 0.5),
            p99_s=_quantile(ordered, 0.99),
            window_max_s=ordered[-1] if ordered else 0.0,
            max_s=self._max,
            stalls=self._stalls,
        )
