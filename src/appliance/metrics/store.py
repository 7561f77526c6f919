"""Call metadata store: times, durations, dispositions and latencies, never content.

SQLite through sqlite-utils with one writer thread per database (the practice of
``simonw/datasette: database.py``'s ``execute_write_fn``): listeners enqueue, the writer
commits. Named migrations (:mod:`appliance.migrations`) are applied in order, each in a
transaction. No transcript, digit or caller number is stored here; the encrypted audit log
(a later issue) holds content.

Post-call scores (:class:`~appliance.events.CallScored`, made by ``appliance.policy.scoring``)
go to ``call_scores`` without their ``summary`` (content); :meth:`CallMetadataStore.rates`
aggregates them into containment, escalation, task completion and compliance failure rates.

Per-turn STT confidence (0..1, :attr:`~appliance.events.TurnLatency.stt_confidence`) is a
``turn_latency`` column (``007_turn_stt_confidence``). Transfer results
(:class:`~appliance.events.TransferResult`) go to ``transfers`` (``008_transfers``): call id,
time, mode, ok, final SIP status and webhook delivery; never the target URI (a configured
extension can be one person's phone) nor the handoff id (the figures need neither).
Workflow outcomes (:class:`~appliance.events.WorkflowOutcome`: fixed workflow, outcome and
intent identifiers) go to ``call_workflows`` (``009_call_workflows``), one row per event.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlite_utils

from appliance.events import (
    BargeIn,
    CallAnswered,
    CallEnded,
    CallRejected,
    CallScored,
    DisclosurePlayed,
    Event,
    MediaStats,
    TransferResult,
    TurnLatency,
    WorkflowOutcome,
)
from appliance.migrations import apply_migrations

_LOGGER = logging.getLogger(__name__)


def _m001_calls(db: sqlite_utils.Database) -> None:
    db.table("calls").create(
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
    db.table("turn_latency").create(
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
    db.table("rejections").create({"t": float, "status": int, "reason": str})


def _m002_call_scores(db: sqlite_utils.Database) -> None:
    # Booleans as 0/1; transfer_appropriate is NULL when no transfer was attempted. No summary.
    db.table("call_scores").create(
        {
            "call_id": str,
            "scored_at": float,
            "outcome": str,
            "contained": int,
            "transfer_appropriate": int,
            "disclosure_ok": int,
            "identity_before_phi_ok": int,
            "no_card_number_ok": int,
            "sentiment": float,
            "judge": str,
        },
        pk="call_id",
        not_null={
            "scored_at",
            "outcome",
            "contained",
            "disclosure_ok",
            "identity_before_phi_ok",
            "no_card_number_ok",
            "sentiment",
            "judge",
        },
    )
    db.table("call_scores").create_index(["scored_at"])


def _m003_media_stats(db: sqlite_utils.Database) -> None:
    # One row per call: 20 ms frame counts and media callback failures (MediaStats).
    db.table("call_media").create(
        {
            "call_id": str,
            "rx_frames": int,
            "rx_dropped": int,
            "tx_frames": int,
            "tx_underruns": int,
            "callback_errors": int,
        },
        pk="call_id",
    )


def _m004_turn_stages(db: sqlite_utils.Database) -> None:
    # The dialogue's own time and the reply's time to first audio; the expected answer kind.
    table = db.table("turn_latency")
    if not table.exists():
        return  # a store that never had per-turn figures gets them with its next rebuild
    table.add_column("agent_s", float)
    table.add_column("reply_s", float)
    table.add_column("listening", str)


def _m005_call_channel(db: sqlite_utils.Database) -> None:
    # "sip" or "webrtc" (a browser test call from the admin page); rows before this are SIP.
    table = db.table("calls")
    if table.exists() and "channel" not in table.columns_dict:
        table.add_column("channel", str, not_null_default="sip")


def _m006_admin_indexes(db: sqlite_utils.Database) -> None:
    # The admin page's time-window and per-call reads (appliance.admin.queries).
    wanted = [
        ("calls", ["answered_at"]),
        ("turn_latency", ["t"]),
        ("turn_latency", ["call_id", "t"]),
    ]
    for table, columns in wanted:
        if set(columns) <= set(db.table(table).columns_dict):
            db.table(table).create_index(columns, if_not_exists=True)


def _m007_turn_stt_confidence(db: sqlite_utils.Database) -> None:
    # The STT's confidence 0..1 per caller turn; NULL for turns recorded before this.
    # Read through the turn_latency(t) index with the other per-turn figures: no index of its own.
    table = db.table("turn_latency")
    if table.exists() and "stt_confidence" not in table.columns_dict:
        table.add_column("stt_confidence", float)


def _m008_transfers(db: sqlite_utils.Database) -> None:
    # One row per TransferResult: ok 0/1, the final SIP status (0: timed out), the webhook's
    # delivery 0/1, mode "blind"/"attended" ("" when the emitter gave none). No target URI.
    db.execute(
        """CREATE TABLE IF NOT EXISTS transfers (
            call_id TEXT NOT NULL,
            t REAL NOT NULL,
            mode TEXT NOT NULL DEFAULT '',
            ok INTEGER NOT NULL,
            status INTEGER NOT NULL,
            webhook_delivered INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_transfers_t ON transfers (t, mode, ok)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_transfers_call_id ON transfers (call_id)")


def _m009_call_workflows(db: sqlite_utils.Database) -> None:
    # One row per WorkflowOutcome (a call can finish several workflows); workflow "" is an
    # outcome outside any workflow (abandoned, caller silent). Fixed identifiers only.
    db.execute(
        """CREATE TABLE IF NOT EXISTS call_workflows (
            call_id TEXT NOT NULL,
            t REAL NOT NULL,
            workflow TEXT NOT NULL,
            outcome TEXT NOT NULL,
            intent TEXT NOT NULL DEFAULT ''
        )"""
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_call_workflows_call_id ON call_workflows (call_id, t)"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_call_workflows_workflow "
        "ON call_workflows (workflow, call_id)"
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_calls", _m001_calls),
    ("002_call_scores", _m002_call_scores),
    ("003_media_stats", _m003_media_stats),
    ("004_turn_stages", _m004_turn_stages),
    ("005_call_channel", _m005_call_channel),
    ("006_admin_indexes", _m006_admin_indexes),
    ("007_turn_stt_confidence", _m007_turn_stt_confidence),
    ("008_transfers", _m008_transfers),
    ("009_call_workflows", _m009_call_workflows),
]


@dataclass(frozen=True)
class _ScoreWrite:
    call_id: str
    score: CallScored


_Item = Event | _ScoreWrite | threading.Event | None


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the pending :data:`MIGRATIONS` (:func:`appliance.migrations.apply_migrations`).

    Each runs in its own ``BEGIN IMMEDIATE`` transaction and is recorded in ``_migrations``
    (databases written by earlier versions, ``(name, applied_at)``, are read as they are).

    Returns:
        The names applied now, in order (empty for an up-to-date database).

    Raises:
        sqlite3.Error: A migration failed; it was rolled back and later ones were not run.
    """
    return apply_migrations(db.conn, MIGRATIONS, db)


#: The call metadata (no content: ids, times, outcomes) is read by the admin page's group.
METADATA_MODE = 0o640


class CallMetadataStore:
    """Single-writer call metadata database; subscribe :meth:`on_event` to the event bus.

    Args:
        path: SQLite file (created with its directory).

    Raises:
        sqlite3.Error: The database cannot be opened or migrated.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # The admin page (group appliance) reads it; the agent's umask (0077) would hide it.
            # SQLite gives the -wal and -shm files the database file's mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, METADATA_MODE))
            os.chmod(path, METADATA_MODE)
        self.path = path
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closed = False
        db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
        db.execute("PRAGMA journal_mode=WAL")
        migrate(db)
        db.conn.close()
        self._thread = threading.Thread(target=self._writer, name="metadata-writer", daemon=True)
        self._thread.start()

    def on_event(self, event: Event) -> None:
        """Queue an event for the writer (content fields are never stored)."""
        if isinstance(event, CallScored):
            self._queue.put(_ScoreWrite(event.call_id, event))
        elif isinstance(
            event,
            CallAnswered
            | CallEnded
            | CallRejected
            | TurnLatency
            | BargeIn
            | DisclosurePlayed
            | MediaStats
            | TransferResult
            | WorkflowOutcome,
        ):
            self._queue.put(event)

    def record_score(self, call_id: str, score: CallScored, *, timeout: float = 10.0) -> None:
        """Store a call's score (a re-score replaces it) and wait until the writer has it.

        The ``summary`` is content and is never stored. A failed write is logged, like every
        metadata write.

        Args:
            call_id: The call scored (normally ``score.call_id``).
            score: The post-call score.
            timeout: Seconds to wait for the writer.

        Raises:
            RuntimeError: The store is closed.
            TimeoutError: The writer did not get to it in time.
        """
        if self._closed:
            raise RuntimeError("call metadata store is closed")
        done = threading.Event()
        self._queue.put(_ScoreWrite(call_id, score))
        self._queue.put(done)
        if not done.wait(timeout):
            raise TimeoutError("call metadata writer did not record the score")

    def rates(self, since: float | None = None) -> dict[str, float | int | None]:
        """Aggregate the scores of calls scored at or after ``since`` (epoch seconds; all).

        Returns:
            ``calls``; ``containment_rate`` (contained / calls); ``escalation_rate``
            (outcome ``transferred`` / calls); ``task_completion_rate`` (outcome ``resolved``
            / calls); ``inappropriate_transfer_rate`` (inappropriate / calls with a transfer
            attempt); ``disclosure_failure_rate``, ``identity_before_phi_failure_rate`` and
            ``card_number_failure_rate`` (flag false / calls); ``mean_sentiment``. A rate is
            ``None`` when its denominator is 0.
        """
        where, params = ("", []) if since is None else ("WHERE scored_at >= ?", [since])
        conn = sqlite3.connect(str(self.path))
        try:
            row = conn.execute(
                """
                SELECT COUNT(*),
                       SUM(contained),
                       SUM(outcome = 'transferred'),
                       SUM(outcome = 'resolved'),
                       COUNT(transfer_appropriate),
                       SUM(transfer_appropriate = 0),
                       SUM(disclosure_ok = 0),
                       SUM(identity_before_phi_ok = 0),
                       SUM(no_card_number_ok = 0),
                       AVG(sentiment)
                FROM call_scores
                """
                + where,
                params,
            ).fetchone()
        finally:
            conn.close()
        calls, contained, transferred, resolved, attempted, inappropriate = row[:6]
        disclosure_bad, identity_bad, card_bad, mood = row[6:]

        def rate(n: int | None, d: int) -> float | None:
            return (n or 0) / d if d else None

        return {
            "calls": calls,
            "containment_rate": rate(contained, calls),
            "escalation_rate": rate(transferred, calls),
            "task_completion_rate": rate(resolved, calls),
            "inappropriate_transfer_rate": rate(inappropriate, attempted),
            "disclosure_failure_rate": rate(disclosure_bad, calls),
            "identity_before_phi_failure_rate": rate(identity_bad, calls),
            "card_number_failure_rate": rate(card_bad, calls),
            "mean_sentiment": mood,
        }

    def close(self) -> None:
        """Flush queued writes and stop the writer."""
        self._closed = True
        self._queue.put(None)
        self._thread.join(10)

    def _writer(self) -> None:
        db = sqlite_utils.Database(sqlite3.connect(str(self.path)))
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                with db.conn:
                    if isinstance(item, _ScoreWrite):
                        self._write_score(db, item)
                    else:
                        self._write(db, item)
            except sqlite3.Error:
                kind = "CallScored" if isinstance(item, _ScoreWrite) else item.kind
                _LOGGER.exception("call metadata write failed (%s)", kind)
        db.conn.close()

    @staticmethod
    def _write_score(db: sqlite_utils.Database, item: _ScoreWrite) -> None:
        score = item.score
        db.table("call_scores").insert(
            {
                "call_id": item.call_id,
                "scored_at": score.t,
                "outcome": score.outcome,
                "contained": int(score.contained),
                "transfer_appropriate": (
                    None if score.transfer_appropriate is None else int(score.transfer_appropriate)
                ),
                "disclosure_ok": int(score.disclosure_ok),
                "identity_before_phi_ok": int(score.identity_before_phi_ok),
                "no_card_number_ok": int(score.no_card_number_ok),
                "sentiment": score.sentiment,
                "judge": score.judge,
            },
            pk="call_id",
            replace=True,
        )

    @staticmethod
    def _write(db: sqlite_utils.Database, event: Event) -> None:
        calls = db.table("calls")
        if isinstance(event, CallAnswered):
            calls.upsert(
                {
                    "call_id": event.call_id,
                    "answered_at": event.t,
                    "codec": event.codec,
                    "channel": event.channel,
                    "turns": 0,
                    "barge_ins": 0,
                },
                pk="call_id",
            )
        elif isinstance(event, DisclosurePlayed):
            calls.upsert({"call_id": event.call_id, "disclosure_at": event.t}, pk="call_id")
        elif isinstance(event, TurnLatency):
            db.table("turn_latency").insert(
                {
                    "call_id": event.call_id,
                    "t": event.t,
                    "endpointing_s": event.endpointing_s,
                    "stt_s": event.stt_s,
                    "llm_ttft_s": event.llm_ttft_s,
                    "tts_ttfa_s": event.tts_ttfa_s,
                    "voice_to_voice_s": event.voice_to_voice_s,
                    "agent_s": event.agent_s,
                    "reply_s": event.reply_s,
                    "listening": event.listening,
                    "stt_confidence": event.stt_confidence,
                }
            )
            db.execute("UPDATE calls SET turns = turns + 1 WHERE call_id = ?", [event.call_id])
        elif isinstance(event, BargeIn):
            db.execute(
                "UPDATE calls SET barge_ins = barge_ins + 1 WHERE call_id = ?", [event.call_id]
            )
        elif isinstance(event, CallEnded):
            calls.upsert(
                {
                    "call_id": event.call_id,
                    "ended_at": event.t,
                    "duration_s": event.duration_s,
                    "disposition": event.disposition,
                },
                pk="call_id",
            )
        elif isinstance(event, MediaStats):
            row = asdict(event)
            del row["t"]
            db.table("call_media").upsert(row, pk="call_id")
        elif isinstance(event, TransferResult):
            db.execute(
                "INSERT INTO transfers (call_id, t, mode, ok, status, webhook_delivered) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    event.call_id,
                    event.t,
                    event.mode,
                    int(event.ok),
                    event.status,
                    int(event.webhook_delivered),
                ],
            )
        elif isinstance(event, WorkflowOutcome):
            db.execute(
                "INSERT INTO call_workflows (call_id, t, workflow, outcome, intent) "
                "VALUES (?, ?, ?, ?, ?)",
                [event.call_id, event.t, event.workflow, event.outcome, event.intent],
            )
        elif isinstance(event, CallRejected):
            db.table("rejections").insert(
                {"t": event.t, "status": event.status, "reason": event.reason}
            )


def summary(path: Path) -> dict[str, object]:
    """Return a small JSON-able summary of the store (for status output and tests)."""
    db = sqlite_utils.Database(path)
    rows = list(db.query("SELECT disposition, COUNT(*) AS n FROM calls GROUP BY disposition"))
    media = next(
        db.query(
            "SELECT COUNT(*) AS calls, COALESCE(SUM(callback_errors), 0) AS callback_errors, "
            "COALESCE(SUM(rx_dropped), 0) AS rx_dropped FROM call_media"
        )
    )
    return {"dispositions": json.loads(json.dumps(rows)), "media": dict(media)}
