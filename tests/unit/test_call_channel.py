"""Test calls are marked apart: ``CallAnswered.channel`` and metrics migration 005."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from appliance.events import CallAnswered
from appliance.metrics.store import MIGRATIONS, CallMetadataStore
from appliance.migrations import apply_migrations


def test_channel_is_written_per_call(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    store.on_event(CallAnswered("sip1", codec="PCMU"))
    store.on_event(CallAnswered("web1", codec="opus", channel="webrtc"))
    store.close()
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT call_id, channel FROM calls").fetchall())
    assert rows == {"sip1": "sip", "web1": "webrtc"}


def test_calls_from_before_the_migration_are_sip(tmp_path: Path) -> None:
    db_path = tmp_path / "calls.sqlite"
    db = sqlite_utils.Database(db_path)
    before = [m for m in MIGRATIONS if m[0] < "005"]
    apply_migrations(db.conn, before, db)
    db.table("calls").insert({"call_id": "old", "codec": "PCMA", "turns": 0, "barge_ins": 0})
    assert "channel" not in db.table("calls").columns_dict
    db.conn.close()

    CallMetadataStore(db_path).close()  # applies 005 and later
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT channel FROM calls WHERE call_id = 'old'").fetchone() == (
            "sip",
        )
        names = [r[0] for r in conn.execute("SELECT name FROM pragma_table_info('calls')")]
    assert "channel" in names
