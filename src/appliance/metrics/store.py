"""Call metadata store: times, durations, dispositions and latencies, never content.

SQLite through sqlite-utils with one writer thread per database (the practice of
``simonw/datasette: database.py``'s ``execute_write_fn``): listeners enqueue, the writer
commits. Named migrations are applied in order, each in a transaction. No transcript, digit or
caller number is stored here; the encrypted audit log (a later issue) holds content.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from appliance.events import (
    BargeIn,
    CallAnswered,
    CallEnded,
    CallRejected,
    DisclosurePlayed,
    Event,
    TurnLatency,
)

_LOGGER = logging.getLogger(__name__)


def _m001_calls(db: sqlite_utils.Database) -> None:
    db["calls"].create(
        {
            "call_id": str,
            "answered_at": float,
            "disclosure_at": float,
            "ended_at": float,
            "duration_s": float,
            "disposition": str,
            "codec": str,
            "turns": int,
            "barge_ins": int,
        },
        pk="call_id",
    )
    db["turn_latency"].create(
        {
            "call_id": str,
            "t": float,
            "endpointing_s": float,
            "stt_s": float,
            "llm_ttft_s": float,
            "tts_ttfa_s": float,
            "voice_to_voice_s": float,
        }
    )
    db["rejections"].create({"t": float, "status": int, "reason": str})


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_calls", _m001_calls),
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending named migrations, each in its own transaction; return those applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with db.conn:
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", [name])
        applied.append(name)
    return applied


class CallMetadataStore:
    """Single-writer call metadata database; subscribe :meth:`on_event` to the event bus.

    Args:
        path: SQLite file (created with its directory).

    Raises:
        sqlite3.Error: The database cannot be opened or migrated.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
        db.execute("PRAGMA journal_mode=WAL")
        migrate(db)
        db.conn.close()
        self._thread = threading.Thread(target=self._writer, name="metadata-writer", daemon=True)
        self._thread.start()

    def on_event(self, event: Event) -> None:
        """Queue an event for the writer (content fields are never stored)."""
        if isinstance(
            event,
            CallAnswered | CallEnded | CallRejected | TurnLatency | BargeIn | DisclosurePlayed,
        ):
            self._queue.put(event)

    def close(self) -> None:
        """Flush queued writes and stop the writer."""
        self._queue.put(None)
        self._thread.join(10)

    def _writer(self) -> None:
        db = sqlite_utils.Database(sqlite3.connect(str(self.path)))
        while True:
            event = self._queue.get()
            if event is None:
                break
            try:
                with db.conn:
                    self._write(db, event)
            except sqlite3.Error:
                _LOGGER.exception("call metadata write failed (%s)", event.kind)
        db.conn.close()

    @staticmethod
    def _write(db: sqlite_utils.Database, event: Event) -> None:
        calls = db["calls"]
        if isinstance(event, CallAnswered):
            calls.upsert(  # type: ignore[union-attr]
                {
                    "call_id": event.call_id,
                    "answered_at": event.t,
                    "codec": event.codec,
                    "turns": 0,
                    "barge_ins": 0,
                },
                pk="call_id",
            )
        elif isinstance(event, DisclosurePlayed):
            calls.upsert({"call_id": event.call_id, "disclosure_at": event.t}, pk="call_id")  # type: ignore[union-attr]
        elif isinstance(event, TurnLatency):
            db["turn_latency"].insert(  # type: ignore[union-attr]
                {
                    "call_id": event.call_id,
                    "t": event.t,
                    "endpointing_s": event.endpointing_s,
                    "stt_s": event.stt_s,
                    "llm_ttft_s": event.llm_ttft_s,
                    "tts_ttfa_s": event.tts_ttfa_s,
                    "voice_to_voice_s": event.voice_to_voice_s,
                }
            )
            db.execute("UPDATE calls SET turns = turns + 1 WHERE call_id = ?", [event.call_id])
        elif isinstance(event, BargeIn):
            db.execute(
                "UPDATE calls SET barge_ins = barge_ins + 1 WHERE call_id = ?", [event.call_id]
            )
        elif isinstance(event, CallEnded):
            calls.upsert(  # type: ignore[union-attr]
                {
                    "call_id": event.call_id,
                    "ended_at": event.t,
                    "duration_s": event.duration_s,
                    "disposition": event.disposition,
                },
                pk="call_id",
            )
        elif isinstance(event, CallRejected):
            db["rejections"].insert({"t": event.t, "status": event.status, "reason": event.reason})  # type: ignore[union-attr]


def summary(path: Path) -> dict[str, object]:
    """Return a small JSON-able summary of the store (for status output and tests)."""
    db = sqlite_utils.Database(path)
    rows = list(db.query("SELECT disposition, COUNT(*) AS n FROM calls GROUP BY disposition"))
    return {"dispositions": json.loads(json.dumps(rows))}
