"""Quality review: random samples of answered calls, reviewer corrections and the real WER.

The quality reviewer draws a uniformly random sample of answered calls not reviewed before,
reads each call's caller turns (the recogniser's text, fetched from the agent through control
op ``call.transcript``, which puts the view on the audit log) and types what the caller really
said. Only the word counts of that comparison are kept (:class:`appliance.text.wer.WordEdits`:
substitutions, deletions, insertions and reference words per turn), never either text: the
admin process holds no audit keys, so it keeps no content at all.

WER = sum(S + D + I) / sum(N) over the corrected turns (corpus WER, as NIST sclite and jiwer
compute it); the alert threshold is 8 % (:data:`WER_ALERT`, issue 12's launch threshold).

Tables in ``admin.sqlite`` (migrations ``quality_...``):

- ``quality_samples``: one row per drawn call (``call_id`` unique, so a call is never drawn
  twice), who drew it and when, and who reviewed it and when.
- ``quality_turns``: per reviewed caller turn its edit counts.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.migrations import apply_migrations
from appliance.text.wer import WordEdits, word_edits

#: WER above which the quality page raises an alert (issue 12: "alert above 8%").
WER_ALERT = 0.08
#: Largest sample drawn at once.
MAX_SAMPLE = 200


def _q001_samples(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE quality_samples (
            id INTEGER PRIMARY KEY,
            call_id TEXT NOT NULL UNIQUE,
            answered_at REAL,
            drawn_at REAL NOT NULL,
            drawn_by TEXT NOT NULL,
            reviewed_at REAL,
            reviewed_by TEXT
        )
        """
    )
    conn.execute(
        """
        CREATE TABLE quality_turns (
            sample_id INTEGER NOT NULL REFERENCES quality_samples(id),
            turn INTEGER NOT NULL,
            t REAL,
            substitutions INTEGER NOT NULL,
            deletions INTEGER NOT NULL,
            insertions INTEGER NOT NULL,
            reference_words INTEGER NOT NULL,
            PRIMARY KEY (sample_id, turn)
        )
        """
    )
    conn.execute("CREATE INDEX quality_samples_reviewed ON quality_samples(reviewed_at)")


MIGRATIONS = [("quality_001_samples", _q001_samples)]


class QualityError(ValueError):
    """A quality-review request cannot be done (unknown sample, wrong number of turns...)."""


@dataclass(frozen=True)
class Sample:
    """A drawn call; ``reviewed_at`` is ``None`` until corrected (epoch seconds)."""

    id: int
    call_id: str
    answered_at: float | None
    drawn_at: float
    drawn_by: str
    reviewed_at: float | None
    reviewed_by: str | None
    turns: int
    errors: int
    words: int

    @property
    def wer(self) -> float | None:
        """This call's WER, ``None`` before review or without reference words."""
        return self.errors / self.words if self.reviewed_at is not None and self.words else None


def open_store(path: Path) -> sqlite3.Connection:
    """Open ``admin.sqlite`` (WAL) and apply the ``quality_...`` migrations.

    Raises:
        sqlite3.Error: The database cannot be opened or migrated.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the pending quality migrations; return the names applied now."""
    return apply_migrations(conn, MIGRATIONS, conn)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction, also on an autocommit connection (admin.db)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _metrics_ro(metrics_db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(metrics_db).resolve()}?mode=ro", uri=True)


def draw_sample(
    conn: sqlite3.Connection,
    metrics_db: Path,
    n: int,
    since: float,
    seed: int | None = None,
    *,
    actor: str = "",
    now: float | None = None,
) -> list[Sample]:
    """Draw up to ``n`` answered, ended calls uniformly at random, none drawn before.

    Candidates: calls in the metrics DB (opened read-only) answered at or after ``since``
    (epoch s) that have ended, are not browser test calls (``channel`` ``webrtc``, when the
    column exists) and are not already in ``quality_samples``. The draw is
    ``random.Random(seed).sample`` (uniform without replacement).

    Args:
        conn: The admin database (migrated).
        metrics_db: The agent's call metadata SQLite file.
        n: How many calls, 1..:data:`MAX_SAMPLE`.
        since: Earliest answer time, epoch seconds.
        seed: Seed for a reproducible draw (tests); ``None``: fresh randomness.
        actor: Who drew it (``"user:<id>"``).
        now: Draw time (epoch s); the current time by default.

    Returns:
        The new samples (fewer than ``n`` when fewer calls are eligible).

    Raises:
        QualityError: ``n`` is out of range.
        sqlite3.Error: A database cannot be read.
    """
    if not 1 <= n <= MAX_SAMPLE:
        raise QualityError(f"sample size must be 1..{MAX_SAMPLE}")
    try:
        metrics = _metrics_ro(metrics_db)
    except sqlite3.OperationalError:
        return []  # no metrics database yet: no calls
    try:
        cols = {r[1] for r in metrics.execute("PRAGMA table_info(calls)")}
        if not cols:
            return []
        test_filter = " AND COALESCE(channel, 'sip') != 'webrtc'" if "channel" in cols else ""
        rows = metrics.execute(
            "SELECT call_id, answered_at FROM calls WHERE answered_at >= ? "
            "AND ended_at IS NOT NULL" + test_filter + " ORDER BY call_id",
            [since],
        ).fetchall()
    finally:
        metrics.close()
    drawn = {r[0] for r in conn.execute("SELECT call_id FROM quality_samples")}
    candidates = [(str(c), a) for c, a in rows if c not in drawn]
    chosen = random.Random(seed).sample(candidates, min(n, len(candidates)))
    at = time.time() if now is None else now
    ids: list[int] = []
    with _transaction(conn):
        for call_id, answered_at in chosen:
            cur = conn.execute(
                "INSERT INTO quality_samples (call_id, answered_at, drawn_at, drawn_by) "
                "VALUES (?, ?, ?, ?)",
                [call_id, answered_at, at, actor],
            )
            ids.append(int(cur.lastrowid or 0))
    return [s for s in list_samples(conn) if s.id in set(ids)]


_SAMPLE_SQL = """
    SELECT s.id, s.call_id, s.answered_at, s.drawn_at, s.drawn_by, s.reviewed_at, s.reviewed_by,
           COUNT(q.turn), COALESCE(SUM(q.substitutions + q.deletions + q.insertions), 0),
           COALESCE(SUM(q.reference_words), 0)
    FROM quality_samples s LEFT JOIN quality_turns q ON q.sample_id = s.id
"""


def list_samples(conn: sqlite3.Connection, limit: int = 500) -> list[Sample]:
    """The most recent samples first (pending and reviewed)."""
    rows = conn.execute(
        _SAMPLE_SQL + " GROUP BY s.id ORDER BY s.drawn_at DESC, s.id DESC LIMIT ?", [limit]
    ).fetchall()
    return [Sample(*r) for r in rows]


def get_sample(conn: sqlite3.Connection, sample_id: int) -> Sample:
    """One sample.

    Raises:
        QualityError: No such sample.
    """
    row = conn.execute(_SAMPLE_SQL + " WHERE s.id = ? GROUP BY s.id", [sample_id]).fetchone()
    if row is None:
        raise QualityError(f"no quality sample {sample_id}")
    return Sample(*row)


def caller_turns(transcript: dict[str, Any]) -> list[tuple[float, str]]:
    """The caller turns ``(t, text)`` of a ``call.transcript`` result, in order.

    Raises:
        QualityError: The result is not shaped like ``{"turns": [{"t", "speaker", "text"}]}``.
    """
    turns = transcript.get("turns") if isinstance(transcript, dict) else None
    if not isinstance(turns, list):
        raise QualityError("the agent's transcript has no turns")
    out: list[tuple[float, str]] = []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("speaker") != "caller":
            continue
        t = turn.get("t")
        out.append((float(t) if isinstance(t, int | float) else 0.0, str(turn.get("text", ""))))
    return out


def record_review(
    conn: sqlite3.Connection,
    sample_id: int,
    turns: Sequence[tuple[float, str]],
    references: Sequence[str],
    *,
    actor: str = "",
    now: float | None = None,
) -> list[WordEdits]:
    """Compare each caller turn with the reviewer's text and store the counts only.

    A second review of the same sample replaces the first.

    Args:
        conn: The admin database.
        sample_id: The sample reviewed.
        turns: The caller turns ``(t, hypothesis)`` (:func:`caller_turns`).
        references: What the caller really said, one per turn (may be empty).
        actor: The reviewer.
        now: Review time (epoch s); the current time by default.

    Returns:
        The edit counts per turn.

    Raises:
        QualityError: Unknown sample, or ``references`` and ``turns`` differ in length.
    """
    get_sample(conn, sample_id)
    if len(references) != len(turns):
        raise QualityError(f"expected {len(turns)} corrected turns, got {len(references)}")
    edits = [word_edits(ref, hyp) for (_, hyp), ref in zip(turns, references, strict=True)]
    at = time.time() if now is None else now
    with _transaction(conn):
        conn.execute("DELETE FROM quality_turns WHERE sample_id = ?", [sample_id])
        conn.executemany(
            "INSERT INTO quality_turns (sample_id, turn, t, substitutions, deletions, "
            "insertions, reference_words) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (sample_id, i, t, e.substitutions, e.deletions, e.insertions, e.reference_words)
                for i, ((t, _), e) in enumerate(zip(turns, edits, strict=True))
            ],
        )
        conn.execute(
            "UPDATE quality_samples SET reviewed_at = ?, reviewed_by = ? WHERE id = ?",
            [at, actor, sample_id],
        )
    return edits


def wer_between(
    conn: sqlite3.Connection, since: float, until: float | None = None
) -> dict[str, Any]:
    """Corpus WER of reviews made in ``[since, until)`` (epoch s; ``until`` ``None``: open).

    Returns:
        ``{"wer": float | None, "calls": int, "words": int}`` as :func:`wer_summary`.
    """
    where, params = "s.reviewed_at >= ?", [since]
    if until is not None:
        where, params = where + " AND s.reviewed_at < ?", [since, until]
    calls, errors, words = conn.execute(
        "SELECT COUNT(DISTINCT s.id), SUM(q.substitutions + q.deletions + q.insertions), "
        "SUM(q.reference_words) FROM quality_samples s JOIN quality_turns q "
        "ON q.sample_id = s.id WHERE " + where,
        params,
    ).fetchone()
    words = int(words or 0)
    return {"wer": (errors or 0) / words if words else None, "calls": calls, "words": words}


def wer_summary(db_path: Path, since: float) -> dict[str, float | int | None]:
    """Corpus WER of the corrections made at or after ``since``.

    Args:
        db_path: ``admin.sqlite``; a missing file or one without quality tables means no
            corrections yet (nothing is created).
        since: Epoch seconds.

    Returns:
        ``{"wer": float | None, "calls": int, "words": int}``: WER as a fraction (0.08 is
        8 %), ``None`` without reference words; reviewed calls; reference words.
    """
    empty: dict[str, float | int | None] = {"wer": None, "calls": 0, "words": 0}
    if not Path(db_path).exists():
        return empty
    conn = sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True)
    try:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quality_turns'"
        ).fetchone():
            return empty
        return dict(wer_between(conn, since))
    finally:
        conn.close()


def period_start(t: float, period: str) -> float:
    """Start (epoch s, UTC midnight) of the day or ISO week (Monday) holding ``t``.

    Raises:
        QualityError: ``period`` is not ``"day"`` or ``"week"``.
    """
    day = datetime.fromtimestamp(t, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        day -= timedelta(days=day.weekday())
    elif period != "day":
        raise QualityError(f"period must be 'day' or 'week', not {period!r}")
    return day.timestamp()


def next_period(start: float, period: str) -> float:
    """The start of the day or week after the one starting at ``start`` (epoch s, UTC)."""
    step = timedelta(weeks=1) if period == "week" else timedelta(days=1)
    return (datetime.fromtimestamp(start, UTC) + step).timestamp()


def wer_trend(
    conn: sqlite3.Connection, since: float, period: str = "week", until: float | None = None
) -> list[dict[str, Any]]:
    """WER per day or ISO week (UTC) of review time, oldest first, empty periods included.

    Returns:
        ``[{"start": epoch s, "wer": float | None, "calls": int, "words": int}, ...]``.

    Raises:
        QualityError: Bad ``period``.
    """
    end = time.time() if until is None else until
    out = []
    start = period_start(since, period)
    while start < end:
        nxt = next_period(start, period)
        out.append({"start": start, **wer_between(conn, start, nxt)})
        start = nxt
    return out
