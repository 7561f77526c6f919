"""Read-only queries over the agent's call metadata database for the dashboard and call list.

The admin page opens ``settings.store.metadata_db`` (written only by the agent's
:class:`appliance.metrics.store.CallMetadataStore`) read-only, ``mode=ro`` (SQLite URI
filenames, https://sqlite.org/uri.html), and never writes it. Schema: ``calls``,
``turn_latency``, ``call_scores`` and ``call_media`` (migrations in
:mod:`appliance.metrics.store`; ``006_admin_indexes`` adds the indexes these queries use).

Times are epoch seconds (UTC); latencies seconds. Buckets are aligned to UTC: hours and days
on the epoch, weeks on Mondays 00:00 UTC.

Percentiles use the nearest-rank method (the smallest value with at least ``q`` of the
values at or below it; NIST/Hyndman & Fan definition 1) over all of a window's rows, computed
in Python on the rows SQLite returns. No interpolation: every figure shown is one measured turn.

What the store does not record is reported as such, never estimated: there is no STT
confidence column (``stt_confidence`` is always ``None``) and no workflow per call.
Transfers are known per call from the post-call score only: a call with a transfer attempt
has a non-NULL ``transfer_appropriate``, and one whose transfer succeeded is not
``contained`` (:mod:`appliance.policy.scoring`), so the transfer success rate is
calls with a successful transfer / calls with an attempt (per call, not per REFER, and
attended and blind transfers together).
"""

from __future__ import annotations

import math
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Bucket sizes in seconds, and how many buckets a chart shows.
BUCKETS: dict[str, tuple[int, int]] = {
    "hour": (3600, 48),
    "day": (86400, 30),
    "week": (7 * 86400, 26),
}
#: The epoch (1970-01-01) was a Thursday: week buckets start 4 days later, on Mondays.
_WEEK_OFFSET = 4 * 86400

#: Per-turn stage columns of ``turn_latency`` in the order the breakdown stacks them
#: (``voice_to_voice_s == endpointing_s + agent_s + reply_s``; ``stt_s`` overlaps the
#: endpointing; ``llm_ttft_s`` and ``tts_ttfa_s`` lie inside ``reply_s``).
STAGES = ("endpointing_s", "stt_s", "agent_s", "reply_s", "llm_ttft_s", "tts_ttfa_s")

#: Sortable call-list outcomes (those :mod:`appliance.policy.scoring` writes) and filters.
OUTCOMES = ("resolved", "transferred", "message_taken", "abandoned", "caller_silent")


class MetricsUnavailable(Exception):
    """The call metadata database cannot be opened or read (not created yet, unreadable)."""


@contextmanager
def open_metrics(path: Path) -> Iterator[sqlite3.Connection]:
    """Open the metadata database read-only for the ``with`` block.

    Raises:
        MetricsUnavailable: The file is missing or not a readable SQLite database, or a query
            inside the block failed with a ``sqlite3.Error``.
    """
    if not Path(path).is_file():
        raise MetricsUnavailable("no call metadata yet")
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise MetricsUnavailable("call metadata database cannot be opened") from exc
    try:
        yield conn
    except sqlite3.Error as exc:
        raise MetricsUnavailable("call metadata database cannot be read") from exc
    finally:
        conn.close()


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; ``None`` for none.

    Args:
        sorted_values: Ascending values.
        q: Fraction in (0, 1], e.g. 0.9 for P90.
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def bucket_start(t: float, bucket: str) -> float:
    """Start (epoch s) of the ``bucket`` (``hour``/``day``/``week``) holding ``t``."""
    size = BUCKETS[bucket][0]
    offset = _WEEK_OFFSET if bucket == "week" else 0
    return math.floor((t - offset) / size) * size + offset


def _rate(n: int | None, d: int | None) -> float | None:
    return (n or 0) / d if d else None


_SCORE_SQL = """
    SUM(contained), SUM(outcome = 'resolved'), SUM(outcome = 'transferred'),
    COUNT(transfer_appropriate), SUM(transfer_appropriate IS NOT NULL AND contained = 0),
    SUM(disclosure_ok = 0 OR identity_before_phi_ok = 0 OR no_card_number_ok = 0),
    COUNT(*)
"""


def _score_rates(row: Sequence[Any]) -> dict[str, float | int | None]:
    contained, resolved, transferred, attempted, transferred_ok, flagged, scored = row
    return {
        "scored": scored or 0,
        "containment_rate": _rate(contained, scored),
        "task_completion_rate": _rate(resolved, scored),
        "escalation_rate": _rate(transferred, scored),
        "transfer_attempts": attempted or 0,
        "transfer_success_rate": _rate(transferred_ok, attempted),
        "transfer_failure_rate": _rate((attempted or 0) - (transferred_ok or 0), attempted),
        "compliance_flag_rate": _rate(flagged, scored),
    }


def score_rates(conn: sqlite3.Connection, since: float, until: float) -> dict[str, Any]:
    """Rates over the calls scored in ``[since, until)`` (``call_scores.scored_at``).

    Returns:
        ``scored`` (calls), ``containment_rate``, ``task_completion_rate`` (outcome
        ``resolved``), ``escalation_rate`` (outcome ``transferred``), ``transfer_attempts``
        (calls with one), ``transfer_success_rate`` / ``transfer_failure_rate`` (of those),
        ``compliance_flag_rate`` (calls with any compliance flag false: disclosure,
        identity before PHI, card number). A rate is ``None`` when its denominator is 0.
    """
    row = conn.execute(
        f"SELECT {_SCORE_SQL} FROM call_scores WHERE scored_at >= ? AND scored_at < ?",
        [since, until],
    ).fetchone()
    return _score_rates(row)


def latency_window(conn: sqlite3.Connection, since: float, until: float) -> dict[str, Any]:
    """Voice-to-voice P50/P90/P99 (s, nearest rank) of the turns in ``[since, until)``.

    Returns:
        ``turns`` (with a voice-to-voice figure) and ``p50``, ``p90``, ``p99`` (``None``
        with no turns).
    """
    values = [
        r[0]
        for r in conn.execute(
            "SELECT voice_to_voice_s FROM turn_latency WHERE t >= ? AND t < ? "
            "AND voice_to_voice_s IS NOT NULL ORDER BY voice_to_voice_s",
            [since, until],
        )
    ]
    return {
        "turns": len(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
    }


def summary(conn: sqlite3.Connection, now: float, window_s: float = 86400.0) -> dict[str, Any]:
    """Headline figures of the last ``window_s`` seconds before ``now``.

    Returns:
        ``calls`` (answered in the window), the :func:`score_rates` keys, ``latency``
        (:func:`latency_window`), ``stt_confidence`` (always ``None``: not recorded),
        ``since`` and ``until``.
    """
    since = now - window_s
    (calls,) = conn.execute(
        "SELECT COUNT(*) FROM calls WHERE answered_at >= ? AND answered_at < ?", [since, now]
    ).fetchone()
    return {
        "since": since,
        "until": now,
        "calls": calls,
        **score_rates(conn, since, now),
        "latency": latency_window(conn, since, now),
        "stt_confidence": None,
    }


#: A bucket that ended this long before ``now`` is final (late writes: a call's score comes
#: at its end) and :func:`series` keeps its figures for the life of the process.
SETTLE_S = 15 * 60.0
_CACHE: dict[tuple[str, str, float], dict[str, Any]] = {}
_CACHE_MAX = 4096


def _db_key(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row else ""


def series(conn: sqlite3.Connection, bucket: str, now: float) -> list[dict[str, Any]]:
    """Per-bucket figures for the charts: the last ``BUCKETS[bucket][1]`` buckets up to ``now``.

    Buckets that ended :data:`SETTLE_S` or more before ``now`` are computed once per process
    and database file, then served from memory; the others are read each time.

    Args:
        conn: A connection from :func:`open_metrics`.
        bucket: ``hour``, ``day`` or ``week``.
        now: End of the range (epoch s); its bucket is the last one (partial).

    Returns:
        One dict per bucket, oldest first: ``start`` (epoch s), ``calls``, the
        :func:`score_rates` keys, ``turns``, ``v2v_p50``, ``v2v_p90`` (s) and ``stages``
        (each of :data:`STAGES` to its P50 in s, ``None`` without figures).

    Raises:
        KeyError: ``bucket`` is not one of :data:`BUCKETS`.
    """
    size, count = BUCKETS[bucket]
    last = bucket_start(now, bucket)
    starts = [last - (count - 1 - i) * size for i in range(count)]
    db = _db_key(conn)
    cached = [_CACHE.get((db, bucket, s)) for s in starts]
    todo = [s for s, c in zip(starts, cached, strict=True) if c is None]
    fresh = _compute(conn, bucket, todo[0], last + size) if todo else {}
    if len(_CACHE) > _CACHE_MAX:
        _CACHE.clear()
    for s in todo:
        if s + size <= now - SETTLE_S:
            _CACHE[(db, bucket, s)] = fresh[s]
    return [c if c is not None else fresh[s] for s, c in zip(starts, cached, strict=True)]


def _compute(
    conn: sqlite3.Connection, bucket: str, first: float, end: float
) -> dict[float, dict[str, Any]]:
    size = BUCKETS[bucket][0]
    offset = _WEEK_OFFSET if bucket == "week" else 0
    starts = [first + i * size for i in range(round((end - first) / size))]
    out: dict[float, dict[str, Any]] = {
        s: {"start": s, "calls": 0, **_score_rates((0, 0, 0, 0, 0, 0, 0))} for s in starts
    }
    span = [offset, size, first, end]
    for b, n in conn.execute(
        "SELECT CAST((answered_at - ?) / ? AS INTEGER), COUNT(*) FROM calls "
        "WHERE answered_at >= ? AND answered_at < ? GROUP BY 1",
        span,
    ):
        out[b * size + offset]["calls"] = n
    for row in conn.execute(
        f"SELECT CAST((scored_at - ?) / ? AS INTEGER), {_SCORE_SQL} FROM call_scores "
        "WHERE scored_at >= ? AND scored_at < ? GROUP BY 1",
        span,
    ):
        out[row[0] * size + offset].update(_score_rates(row[1:]))
    columns = ("voice_to_voice_s", *STAGES)
    values: dict[float, list[list[float]]] = {s: [[] for _ in columns] for s in starts}
    rows = conn.execute(
        f"SELECT CAST((t - ?) / ? AS INTEGER), {', '.join(columns)} FROM turn_latency "
        "WHERE t >= ? AND t < ?",
        span,
    ).fetchall()
    for row in rows:
        lists = values[row[0] * size + offset]
        for i, v in enumerate(row[1:]):
            if v is not None:
                lists[i].append(v)
    for s in starts:
        lists = values[s]
        for column in lists:
            column.sort()
        v2v = lists[0]
        out[s]["turns"] = len(v2v)
        out[s]["v2v_p50"] = percentile(v2v, 0.5)
        out[s]["v2v_p90"] = percentile(v2v, 0.9)
        out[s]["stages"] = {stage: percentile(lists[i + 1], 0.5) for i, stage in enumerate(STAGES)}
    return out


@dataclass(frozen=True)
class CallFilter:
    """Call-list search: all fields optional, combined with AND.

    Attributes:
        call_id: Prefix of the opaque call id.
        outcome: One of :data:`OUTCOMES`, or ``"unscored"``.
        disposition: Exact ``calls.disposition`` (``caller_hangup``, ...).
        since: Answered at or after (epoch s).
        until: Answered before (epoch s).
    """

    call_id: str = ""
    outcome: str = ""
    disposition: str = ""
    since: float | None = None
    until: float | None = None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_calls(
    conn: sqlite3.Connection, flt: CallFilter, page: int = 1, per_page: int = 50
) -> tuple[list[dict[str, Any]], int]:
    """One page of calls, newest first, and the number of calls matching ``flt``.

    The row's ``score`` is the number of the post-call checks that passed out of those that
    apply (disclosure, identity before PHI, no card number, and transfer appropriateness when
    a transfer was attempted), e.g. ``(3, 3)``; ``None`` for a call not scored yet.

    Returns:
        ``(rows, total)``; each row has ``call_id``, ``answered_at``, ``duration_s``,
        ``disposition``, ``turns``, ``outcome``, ``contained``, ``sentiment``, ``score``
        (``(passed, checks)`` or ``None``).
    """
    where: list[str] = []
    params: list[Any] = []
    if flt.call_id:
        where.append("c.call_id LIKE ? ESCAPE '\\'")
        params.append(_escape_like(flt.call_id) + "%")
    if flt.outcome == "unscored":
        where.append("s.call_id IS NULL")
    elif flt.outcome:
        where.append("s.outcome = ?")
        params.append(flt.outcome)
    if flt.disposition:
        where.append("c.disposition = ?")
        params.append(flt.disposition)
    if flt.since is not None:
        where.append("c.answered_at >= ?")
        params.append(flt.since)
    if flt.until is not None:
        where.append("c.answered_at < ?")
        params.append(flt.until)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    # Join the scores while filtering only when a filter needs them; page in index order
    # (answered_at, rowid), then join the page's scores.
    joined = "LEFT JOIN call_scores s ON s.call_id = c.call_id" if flt.outcome else ""
    (total,) = conn.execute(f"SELECT COUNT(*) FROM calls c {joined} {clause}", params).fetchone()
    rows = conn.execute(
        "SELECT p.call_id, p.answered_at, p.duration_s, p.disposition, p.turns, s.outcome, "
        "s.contained, s.sentiment, s.disclosure_ok, s.identity_before_phi_ok, "
        "s.no_card_number_ok, s.transfer_appropriate FROM ("
        "SELECT c.rowid AS rid, c.call_id, c.answered_at, c.duration_s, c.disposition, c.turns "
        f"FROM calls c {joined} {clause} ORDER BY c.answered_at DESC, c.rowid DESC "
        "LIMIT ? OFFSET ?) p LEFT JOIN call_scores s ON s.call_id = p.call_id "
        "ORDER BY p.answered_at DESC, p.rid DESC",
        [*params, per_page, (page - 1) * per_page],
    ).fetchall()
    return [_call_row(r) for r in rows], total


def _call_row(r: Sequence[Any]) -> dict[str, Any]:
    checks = [v for v in r[8:12] if v is not None]
    return {
        "call_id": r[0],
        "answered_at": r[1],
        "duration_s": r[2],
        "disposition": r[3],
        "turns": r[4],
        "outcome": r[5],
        "contained": None if r[6] is None else bool(r[6]),
        "sentiment": r[7],
        "score": None if r[5] is None else (sum(checks), len(checks)),
    }


def call_detail(conn: sqlite3.Connection, call_id: str) -> dict[str, Any] | None:
    """One call's metadata: the call, its score flags, media counters and turns.

    Returns:
        ``None`` for an unknown call; else the :func:`list_calls` row plus ``disclosure_at``,
        ``ended_at``, ``codec``, ``barge_ins``, ``flags`` (score flag name to bool, or
        ``None`` when not applicable), ``media`` (``call_media`` row or ``None``) and
        ``turn_rows`` (per turn in time order: ``t`` and the :data:`STAGES` and
        ``voice_to_voice_s`` in s, ``listening``).
    """
    row = conn.execute(
        "SELECT c.call_id, c.answered_at, c.duration_s, c.disposition, c.turns, s.outcome, "
        "s.contained, s.sentiment, s.disclosure_ok, s.identity_before_phi_ok, "
        "s.no_card_number_ok, s.transfer_appropriate, c.disclosure_at, c.ended_at, c.codec, "
        "c.barge_ins, s.judge "
        "FROM calls c LEFT JOIN call_scores s ON s.call_id = c.call_id WHERE c.call_id = ?",
        [call_id],
    ).fetchone()
    if row is None:
        return None
    detail = _call_row(row)
    names = ("disclosure_ok", "identity_before_phi_ok", "no_card_number_ok")
    detail["flags"] = (
        None
        if row[5] is None
        else {
            **{n: bool(v) for n, v in zip(names, row[8:11], strict=True)},
            "transfer_appropriate": None if row[11] is None else bool(row[11]),
        }
    )
    detail.update(
        disclosure_at=row[12], ended_at=row[13], codec=row[14], barge_ins=row[15], judge=row[16]
    )
    media = conn.execute(
        "SELECT rx_frames, rx_dropped, tx_frames, tx_underruns, callback_errors "
        "FROM call_media WHERE call_id = ?",
        [call_id],
    ).fetchone()
    detail["media"] = (
        None
        if media is None
        else dict(
            zip(
                ("rx_frames", "rx_dropped", "tx_frames", "tx_underruns", "callback_errors"),
                media,
                strict=True,
            )
        )
    )
    columns = ("t", "voice_to_voice_s", *STAGES, "listening")
    detail["turn_rows"] = [
        dict(zip(columns, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(columns)} FROM turn_latency WHERE call_id = ? ORDER BY t",
            [call_id],
        )
    ]
    return detail


def dispositions(conn: sqlite3.Connection) -> list[str]:
    """The distinct call dispositions recorded (for the search form)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT disposition FROM calls WHERE disposition IS NOT NULL ORDER BY 1"
        )
    ]
