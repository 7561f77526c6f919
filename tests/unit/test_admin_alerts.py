"""Alert rules at the launch thresholds, on metadata written by the agent's own store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.admin import alerts
from appliance.control import ControlError
from appliance.metrics.store import CallMetadataStore
from tests.unit.test_admin_queries import NOW, add_call

OK_STATUS: dict[str, Any] = {"audit": {"failed": False}, "stages": {"stt": "ok", "llm": "ok"}}


def _by_key(readings: list[alerts.Reading]) -> dict[str, alerts.Reading]:
    return {r.rule.key: r for r in readings}


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    """20 calls yesterday and 20 today, all contained and clean, turns well under 3.5 s."""
    path = tmp_path / "calls.sqlite"
    store = CallMetadataStore(path)
    for i in range(20):
        add_call(store, f"y{i}", NOW - 86400 - 3600 - i * 60, [1.0, 1.2])
        add_call(store, f"t{i}", NOW - 3000 + i * 60, [1.0 + i / 100, 1.5])
    store.close()
    return path


def test_no_data_no_transitions(tmp_path: Path) -> None:
    readings = alerts.evaluate(tmp_path / "missing.sqlite", None, NOW)
    assert [r.rule.key for r in readings] == [rule.key for rule in alerts.RULES]
    assert all(r.firing is None for r in readings)
    store = alerts.AlertStore(tmp_path / "admin.sqlite")
    assert store.record(readings, NOW) == []


def test_healthy_fires_nothing(healthy: Path, tmp_path: Path) -> None:
    readings = _by_key(alerts.evaluate(healthy, OK_STATUS, NOW))
    assert readings["v2v_p90"].value == 1.5 and readings["v2v_p90"].firing is False
    assert readings["containment_drop"].value == pytest.approx(0.0)
    assert readings["compliance_flags"].value == 0.0
    assert readings["transfer_failures"].value is None  # no transfer attempted
    assert readings["wer"].value is None
    assert readings["audit_verification"].firing is False
    assert readings["model_stage"].firing is False


def test_latency_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    store = CallMetadataStore(path)
    # 100 turns in the last hour: 85 at 1 s, 10 at 4 s, 5 at 6 s -> P90 4 s, P99 6 s.
    add_call(store, "a", NOW - 1800, [1.0] * 85 + [4.0] * 10 + [6.0] * 5)
    store.close()
    r = _by_key(alerts.evaluate(path, OK_STATUS, NOW))
    assert r["v2v_p90"].value == 4.0 and r["v2v_p90"].firing is True
    assert r["v2v_p99"].value == 6.0 and r["v2v_p99"].firing is True
    assert r["v2v_p90"].rule.severity == "warning" and r["v2v_p99"].rule.severity == "alert"


def test_exactly_at_threshold_does_not_fire(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    store = CallMetadataStore(path)
    add_call(store, "a", NOW - 1800, [3.5] * 10)
    store.close()
    assert _by_key(alerts.evaluate(path, OK_STATUS, NOW))["v2v_p90"].firing is False


def test_rates_and_agent_status(healthy: Path) -> None:
    store = CallMetadataStore(healthy)
    # Today: 2 more calls, one transferred (drops containment 100% -> 20/22), one with a
    # failed disclosure flag, and one transfer attempt that failed (still contained).
    add_call(
        store, "x1", NOW - 100, [1.0], outcome="transferred", contained=False,
        transfer_appropriate=True,
    )  # fmt: skip
    add_call(
        store, "x2", NOW - 90, [1.0], outcome="message_taken", transfer_appropriate=True,
        disclosure_ok=False,
    )  # fmt: skip
    add_call(store, "x3", NOW - 80, [1.0], outcome="transferred", contained=False)
    store.close()
    status = {"audit": {"failed": True}, "stages": {"stt": "ok", "tts": "failed"}}
    wer_calls: list[tuple[Path, float]] = []

    def wer(db: Path, since: float) -> dict[str, Any]:
        wer_calls.append((db, since))
        return {"wer": 0.11, "calls": 3}

    r = _by_key(alerts.evaluate(healthy, status, NOW, reviews_db=Path("admin.sqlite"), wer_fn=wer))
    assert r["containment_drop"].value == pytest.approx(100 - 21 / 23 * 100)
    assert r["containment_drop"].firing is True
    assert r["compliance_flags"].value == pytest.approx(1 / 23) and r["compliance_flags"].firing
    assert r["transfer_failures"].value == pytest.approx(0.5) and r["transfer_failures"].firing
    # No transfer result recorded in the window: derived from the post-call scores, and said so.
    assert r["transfer_failures"].detail == "2 calls with a transfer, from post-call scores"
    assert r["wer"].value == 0.11 and r["wer"].firing is True
    assert wer_calls == [(Path("admin.sqlite"), NOW - 7 * 86400)]
    assert r["audit_verification"].firing is True
    assert r["model_stage"].firing is True and r["model_stage"].detail == "tts"


def test_history_records_transitions_once(healthy: Path, tmp_path: Path) -> None:
    store = alerts.AlertStore(tmp_path / "admin.sqlite")
    bad = {"audit": {"failed": True}, "stages": {}}
    first = store.record(alerts.evaluate(healthy, bad, NOW), NOW)
    assert [(t["rule"], t["state"]) for t in first] == [("audit_verification", "fired")]
    assert store.record(alerts.evaluate(healthy, bad, NOW + 60), NOW + 60) == []
    # Agent unreachable: state kept, nothing recorded.
    assert store.record(alerts.evaluate(healthy, None, NOW + 120), NOW + 120) == []
    cleared = store.record(alerts.evaluate(healthy, OK_STATUS, NOW + 180), NOW + 180)
    assert [(t["rule"], t["state"], t["value"]) for t in cleared] == [
        ("audit_verification", "cleared", 0.0)
    ]
    history = store.history()
    assert [(h["state"], h["t"]) for h in history] == [("cleared", NOW + 180), ("fired", NOW)]
    assert store.current()["audit_verification"]["state"] == "cleared"
    assert store.history(rule="wer") == []


def test_evaluate_and_record_with_unreachable_agent(healthy: Path, tmp_path: Path) -> None:
    class Down:
        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            raise ControlError("unavailable", "agent not reachable")

    ctx = SimpleNamespace(
        settings=SimpleNamespace(store=SimpleNamespace(metadata_db=healthy)),
        db_path=tmp_path / "admin.sqlite",
        control=Down(),
    )
    readings, transitions = asyncio.run(alerts.evaluate_and_record(ctx, now=NOW))
    assert transitions == []
    assert _by_key(readings)["audit_verification"].detail == "agent unreachable"


def test_alert_loop_keeps_running_after_a_failure(tmp_path: Path) -> None:
    calls: list[str] = []

    class Flaky:
        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("status")
            if len(calls) == 1:
                raise RuntimeError("first evaluation fails")
            return {"audit": {"failed": True}, "stages": {}}

    ctx = SimpleNamespace(
        settings=SimpleNamespace(store=SimpleNamespace(metadata_db=tmp_path / "none.sqlite")),
        db_path=tmp_path / "sub" / "admin.sqlite",
        control=Flaky(),
    )

    async def run() -> None:
        task = asyncio.create_task(alerts.alert_loop(ctx, interval=0.01))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert len(calls) >= 2
    history = alerts.AlertStore(ctx.db_path).history()
    assert [(h["rule"], h["state"]) for h in history] == [("audit_verification", "fired")]


def test_transfer_failures_come_from_transfer_results(healthy: Path) -> None:
    store = CallMetadataStore(healthy)
    # Scores alone would read 0% failed (the one attempt's call was transferred) ...
    add_call(
        store, "x1", NOW - 100, [1.0], outcome="transferred", contained=False,
        transfer_appropriate=True,
        transfers=[("attended", False, 480), ("blind", True, 200)],
    )  # fmt: skip
    # ... the agent's transfer results say 1 of 3 REFERs failed; one 2 days ago is outside.
    add_call(store, "x2", NOW - 90, [1.0], transfers=[("blind", True, 202)])
    add_call(store, "old", NOW - 2 * 86400, [1.0], transfers=[("blind", False, 0)] * 5)
    store.close()
    r = _by_key(alerts.evaluate(healthy, OK_STATUS, NOW))["transfer_failures"]
    assert r.value == pytest.approx(1 / 3) and r.firing is True
    assert r.detail == "3 transfer results"


def test_transfer_results_all_ok_clear_the_alert(healthy: Path, tmp_path: Path) -> None:
    store = CallMetadataStore(healthy)
    add_call(store, "x1", NOW - 100, [1.0], transfers=[("blind", False, 486)])
    store.close()
    history = alerts.AlertStore(tmp_path / "admin.sqlite")
    fired = history.record(alerts.evaluate(healthy, OK_STATUS, NOW), NOW)
    assert [(t["rule"], t["state"], t["value"]) for t in fired] == [
        ("transfer_failures", "fired", 1.0)
    ]
    store = CallMetadataStore(healthy)
    for i in range(30):
        add_call(store, f"ok{i}", NOW - 80 + i, [1.0], transfers=[("blind", True, 200)])
    store.close()
    later = NOW + 60
    cleared = history.record(alerts.evaluate(healthy, OK_STATUS, later), later)
    assert [(t["rule"], t["state"]) for t in cleared] == [("transfer_failures", "cleared")]
    assert cleared[0]["value"] == pytest.approx(1 / 31)
