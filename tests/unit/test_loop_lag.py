"""The event-loop lag monitor on a real asyncio loop, and its figures in /metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.admin.prometheus import CallMetricsCollector
from appliance.metrics.loop_lag import STALL_S, LoopLagMonitor


async def test_a_blocking_call_on_the_loop_shows_as_lag_and_a_stall() -> None:
    monitor = LoopLagMonitor(interval_s=0.02)
    monitor.start()
    await asyncio.sleep(0.3)  # a free loop: wake-ups come (almost) on time
    quiet = monitor.snapshot()
    assert quiet.samples >= 5
    assert quiet.p50_s < 0.05
    time.sleep(0.25)  # what a model run or a SQLite commit on the loop would do  # noqa: ASYNC251
    await asyncio.sleep(0.1)
    monitor.stop()
    after = monitor.snapshot()
    assert after.stalls >= quiet.stalls + 1
    assert 0.2 <= after.max_s < 1.0 and after.window_max_s == after.max_s
    assert after.p50_s < STALL_S  # one stall does not move the median
    assert set(after.as_dict()) == {"samples", "p50_s", "p99_s", "window_max_s", "max_s", "stalls"}


def test_quantiles_are_nearest_rank_over_the_window() -> None:
    monitor = LoopLagMonitor(window=100)
    for lag in [0.001] * 98 + [0.2, 0.5]:
        monitor.record(lag)
    snap = monitor.snapshot()
    assert snap.p50_s == 0.001 and snap.p99_s == 0.2 and snap.window_max_s == 0.5
    assert snap.stalls == 2
    for _ in range(100):  # the window moves on; the all-time maximum stays
        monitor.record(0.002)
    later = monitor.snapshot()
    assert later.window_max_s == 0.002 and later.max_s == 0.5 and later.stalls == 2
    with pytest.raises(ValueError):
        LoopLagMonitor(interval_s=0)


class _Control:
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def call(self, op: str, args: dict[str, Any], actor: str, timeout: float = 0) -> Any:
        assert op == "status"
        return self.status


def test_metrics_export_loop_lag_and_underruns(tmp_path: Path) -> None:
    import sqlite3

    from prometheus_client import CollectorRegistry, generate_latest

    db = tmp_path / "calls.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE call_media (call_id TEXT, rx_frames INT, rx_dropped INT, tx_frames INT, "
        "tx_underruns INT, callback_errors INT)"
    )
    conn.executemany(
        "INSERT INTO call_media VALUES (?, 100, ?, 100, ?, 0)", [("a", 1, 7), ("b", 0, 5)]
    )
    conn.commit()
    conn.close()
    monitor = LoopLagMonitor()
    for lag in (0.001, 0.002, 0.3):
        monitor.record(lag)
    status = {"ready": True, "loop_lag": monitor.snapshot().as_dict()}
    registry = CollectorRegistry()
    registry.register(CallMetricsCollector(db, _Control(status)))  # type: ignore[arg-type]
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert families["appliance_media_tx_underruns"].samples[0].value == 12
    lag = {
        s.labels["quantile"]: s.value for s in families["appliance_event_loop_lag_seconds"].samples
    }
    assert lag == {"0.5": 0.002, "0.99": 0.3, "1": 0.3}
    assert families["appliance_event_loop_stalls"].samples[0].value == 1
