"""Call metadata store: named migrations, single writer, and no caller content stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from appliance.events import (
    AgentSpoke,
    CallAnswered,
    CallEnded,
    CallRejected,
    CallScored,
    DtmfReceived,
    TransferAttempted,
    TransferResult,
    TurnEnded,
    TurnLatency,
    WorkflowOutcome,
)
from appliance.metrics.store import MIGRATIONS, CallMetadataStore
from appliance.migrations import apply_migrations


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


def _turn(call_id: str, t: float, confidence: float | None) -> TurnLatency:
    return TurnLatency(
        call_id,
        t=t,
        endpointing_s=0.5,
        stt_s=0.3,
        llm_ttft_s=None,
        tts_ttfa_s=0.2,
        voice_to_voice_s=1.2,
        agent_s=0.4,
        reply_s=0.3,
        listening="free",
        stt_confidence=confidence,
    )


def test_turn_confidence_transfers_and_workflows_become_rows(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    store.on_event(CallAnswered("c1", codec="PCMU", t=100.0))
    store.on_event(TurnEnded("c1", user_text="I need to move my appointment", t=104.0))
    store.on_event(_turn("c1", 105.0, 0.82))
    store.on_event(_turn("c1", 110.0, None))  # the STT gave no confidence
    store.on_event(
        TransferAttempted(
            "c1", mode="attended", target="sip:dr.jones@clinic.example", handoff_id="H-77", t=120.0
        )  # fmt: skip
    )
    store.on_event(
        TransferResult(
            "c1",
            handoff_id="H-77",
            ok=False,
            status=480,
            webhook_delivered=True,
            mode="attended",
            t=135.0,
        )  # fmt: skip
    )
    store.on_event(TransferResult("c1", handoff_id="H-78", ok=True, status=200, t=150.0))
    store.on_event(
        WorkflowOutcome(
            "c1", workflow="reschedule", outcome="transferred", intent="reschedule", t=151.0
        )
    )
    store.on_event(WorkflowOutcome("c1", workflow="", outcome="abandoned", t=160.0))
    store.on_event(CallEnded("c1", disposition="caller_hangup", duration_s=60.0, t=160.0))
    store.close()

    conn = sqlite3.connect(db)
    assert conn.execute("SELECT t, stt_confidence FROM turn_latency ORDER BY t").fetchall() == [
        (105.0, 0.82),
        (110.0, None),
    ]
    assert conn.execute("SELECT turns FROM calls").fetchone() == (2,)
    assert conn.execute(
        "SELECT call_id, t, mode, ok, status, webhook_delivered FROM transfers ORDER BY t"
    ).fetchall() == [("c1", 135.0, "attended", 0, 480, 1), ("c1", 150.0, "", 1, 200, 0)]
    assert conn.execute(
        "SELECT call_id, t, workflow, outcome, intent FROM call_workflows ORDER BY t"
    ).fetchall() == [
        ("c1", 151.0, "reschedule", "transferred", "reschedule"),
        ("c1", 160.0, "", "abandoned", ""),
    ]
    # Neither the transfer target (a person's extension) nor the handoff id, nor content.
    dump = "\n".join(conn.iterdump())
    for absent in ("dr.jones", "H-77", "H-78", "move my appointment"):
        assert absent not in dump
    assert {r[1] for r in conn.execute("PRAGMA table_info(transfers)")} == {
        "call_id", "t", "mode", "ok", "status", "webhook_delivered"
    }  # fmt: skip
    indexes = {
        r[1] for r in conn.execute("SELECT type, name FROM sqlite_master") if r[0] == "index"
    }
    assert {
        "idx_transfers_t",
        "idx_transfers_call_id",
        "idx_call_workflows_call_id",
        "idx_call_workflows_workflow",
    } <= indexes


def test_upgrade_from_006_keeps_rows_and_records_the_new_figures(tmp_path: Path) -> None:
    """A database an agent at 006 wrote: 007..009 add to it, its rows stay as they were."""
    db = tmp_path / "calls.sqlite"
    old = sqlite_utils.Database(sqlite3.connect(db))
    names = [name for name, _ in MIGRATIONS]
    upto = names.index("006_admin_indexes") + 1
    assert apply_migrations(old.conn, MIGRATIONS[:upto], old) == names[:upto]
    old.conn.execute(
        "INSERT INTO turn_latency (call_id, t, voice_to_voice_s) VALUES ('before', 1.0, 1.5)"
    )
    old.conn.commit()
    old.conn.close()

    store = CallMetadataStore(db)
    store.on_event(CallAnswered("after", codec="PCMU", t=200.0))
    store.on_event(_turn("after", 205.0, 0.4))
    store.on_event(TransferResult("after", handoff_id="h", ok=True, status=202, mode="blind"))
    store.on_event(WorkflowOutcome("after", workflow="faq", outcome="resolved"))
    store.close()

    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")] == names
    assert conn.execute(
        "SELECT call_id, stt_confidence FROM turn_latency ORDER BY t"
    ).fetchall() == [
        ("before", None),
        ("after", 0.4),
    ]
    assert conn.execute("SELECT mode, ok, status FROM transfers").fetchall() == [("blind", 1, 202)]
    assert conn.execute("SELECT workflow, outcome FROM call_workflows").fetchall() == [
        ("faq", "resolved")
    ]


def test_upgrade_from_001_without_turn_table_gets_the_new_tables(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    conn.execute("CREATE TABLE calls (call_id TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO _migrations VALUES ('001_calls', datetime('now'))")
    conn.commit()
    conn.close()
    store = CallMetadataStore(db)
    store.on_event(TransferResult("c1", handoff_id="h", ok=False, status=0, mode="blind"))
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT ok, status FROM transfers").fetchall() == [(0, 0)]
    assert conn.execute("SELECT COUNT(*) FROM call_workflows").fetchone() == (0,)
