"""Call metadata store: named migrations, single writer, and no caller content stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.events import (
    AgentSpoke,
    CallAnswered,
    CallEnded,
    CallRejected,
    CallScored,
    DtmfReceived,
    TurnEnded,
    TurnLatency,
)
from appliance.metrics.store import MIGRATIONS, CallMetadataStore


def test_events_become_rows_without_content(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    store.on_event(CallAnswered("c1", codec="PCMU"))
    store.on_event(TurnEnded("c1", user_text="my date of birth is 4 March 1982"))
    store.on_event(DtmfReceived("c1", digit="7", method="rfc4733"))
    store.on_event(AgentSpoke("c1", text="We're open nine to five.", interrupted=False, source="x"))
    store.on_event(
        TurnLatency(
            "c1",
            endpointing_s=0.6,
            stt_s=0.4,
            llm_ttft_s=None,
            tts_ttfa_s=0.5,
            voice_to_voice_s=1.4,
        )
    )
    store.on_event(CallRejected("-", status=503, reason="at_capacity"))
    store.on_event(CallEnded("c1", disposition="caller_hangup", duration_s=12.5))
    store.close()

    conn = sqlite3.connect(db)
    call = conn.execute("SELECT codec, turns, disposition, duration_s FROM calls").fetchone()
    assert call == ("PCMU", 1, "caller_hangup", 12.5)
    assert conn.execute("SELECT voice_to_voice_s FROM turn_latency").fetchone() == (1.4,)
    assert conn.execute("SELECT status, reason FROM rejections").fetchone() == (503, "at_capacity")
    dump = "\n".join(conn.iterdump())
    for content in ("1982", "nine to five", "'7'"):
        assert content not in dump
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == [
        name for name, _ in MIGRATIONS
    ]


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    CallMetadataStore(db).close()
    CallMetadataStore(db).close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM _migrations").fetchone() == (len(MIGRATIONS),)


def _score(call_id: str, **overrides: object) -> CallScored:
    fields: dict[str, object] = {
        "outcome": "resolved",
        "contained": True,
        "transfer_appropriate": None,
        "disclosure_ok": True,
        "identity_before_phi_ok": True,
        "no_card_number_ok": True,
        "sentiment": 0.25,
        "judge": "rules",
        "summary": "Caller intent: reschedule. Outcome: resolved.",
    }
    fields.update(overrides)
    return CallScored(call_id, **fields)  # type: ignore[arg-type]


def test_scores_are_stored_without_summary(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    store.record_score("c1", _score("c1", summary="SECRET-SUMMARY mentions 4 March 1982"))
    store.on_event(_score("c2", outcome="transferred", contained=False, transfer_appropriate=False))
    # A re-score replaces the earlier row.
    store.record_score("c1", _score("c1", sentiment=-0.5, judge="llm:m"))
    store.close()
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT call_id, outcome, contained, transfer_appropriate, sentiment, judge "
        "FROM call_scores ORDER BY call_id"
    ).fetchall()
    assert rows == [
        ("c1", "resolved", 1, None, -0.5, "llm:m"),
        ("c2", "transferred", 0, 0, 0.25, "rules"),
    ]
    dump = "\n".join(conn.iterdump())
    assert "SECRET-SUMMARY" not in dump and "1982" not in dump
    assert "summary" not in [r[1] for r in conn.execute("PRAGMA table_info(call_scores)")]


def test_rates_of_an_empty_store_and_after_close(tmp_path: Path) -> None:
    store = CallMetadataStore(tmp_path / "calls.sqlite")
    rates = store.rates()
    assert rates["calls"] == 0
    assert rates["containment_rate"] is None and rates["mean_sentiment"] is None
    store.close()
    with pytest.raises(RuntimeError):
        store.record_score("c1", _score("c1"))


def test_upgrade_from_001_adds_call_scores(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    conn.execute("CREATE TABLE calls (call_id TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO _migrations VALUES ('001_calls', datetime('now'))")
    conn.commit()
    conn.close()
    store = CallMetadataStore(db)
    store.record_score("c1", _score("c1"))
    assert store.rates()["task_completion_rate"] == 1.0
    store.close()
