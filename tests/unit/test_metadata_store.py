"""Call metadata store: named migrations, single writer, and no caller content stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.events import (
    AgentSpoke,
    CallAnswered,
    CallEnded,
    CallRejected,
    DtmfReceived,
    TurnEnded,
    TurnLatency,
)
from appliance.metrics.store import CallMetadataStore


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
    assert [r[0] for r in conn.execute("SELECT name FROM _migrations")] == ["001_calls"]


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    CallMetadataStore(db).close()
    CallMetadataStore(db).close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM _migrations").fetchone() == (1,)
