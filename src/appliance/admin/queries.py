"""Read-only queries over the agent's call metadata database for the dashboard and call list.

The admin page opens ``settings.store.metadata_db`` (written only by the agent's
:class:`appliance.metrics.store.CallMetadataStore`) read-only, ``mode=ro`` (SQLite URI
filenames, https://sqlite.org/uri.html), and never writes it. Schema: ``calls``,
``turn_latency``, ``call_scores``, ``call_media``, ``transfers`` and ``call_workflows``
(migrations in :mod:`appliance.metrics.store`; ``006_admin_indexes``, ``008_transfers`` and
``009_call_workflows`` add the indexes these queries use). A database from an agent that
predates ``007``..``009`` reads as having no STT confidence, transfer results or workflows.

Times are epoch seconds (UTC); latencies seconds. Buckets are aligned to UTC: hours and days
on the epoch, weeks on Mondays 00:00 UTC.

Percentiles use the nearest-rank method (the smallest value with at least ``q`` of the
values at or below it; NIST/Hyndman & Fan definition 1) over all of a window's rows, computed
in Python on the rows SQLite returns. No interpolation: every figure shown is one measured turn.

STT confidence is the STT's own 0..1 figure per caller turn (``turn_latency.stt_confidence``,
``NULL`` for turns without one, which are left out): its P50 and the share of turns below
:data:`LOW_CONFIDENCE`.

Transfers are counted from the agent's transfer results (``transfers``, one row per
:class:`~appliance.events.TransferResult`: per REFER, ``ok`` when the final SIP status was
2xx). Only when a window has no transfer result does :func:`transfer_rates` fall back to the
post-call score's derivation and say so (``source``): a call with a transfer attempt has a
non-NULL ``transfer_appropriate``, and one whose transfer succeeded is not ``contained``
(:mod:`appliance.policy.scoring`), so that rate is calls with a successful transfer / calls
with an attempt (per call, attended and blind together). :func:`score_rates` keeps the
score-derived ``transfer_*`` keys as they were.
"""

from __future__ import annotations

import math
import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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

#: STT confidence (0..1) below which a turn counts as low-confidence (strictly below).
LOW_CONFIDENCE = 0.5

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


def _features(conn: sqlite3.Connection) -> frozenset[str]:
    """The ``007``..``009`` additions the database has (one not yet migrated lacks them)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    found = {t for t in ("transfers", "call_workflows") if t in tables}
    if "turn_latency" in tables and any(
        r[1] == "stt_confidence" for r in conn.execute("PRAGMA table_info(turn_latency)")
    ):
        found.add("stt_confidence")
    return frozenset(found)


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


def _confidence_figures(sorted_values: Sequence[float]) -> dict[str, Any]:
    low = sum(1 for v in sorted_values if v < LOW_CONFIDENCE)
    return {
        "turns": len(sorted_values),
        "p50": percentile(sorted_values, 0.5),
        "low_share": _rate(low, len(sorted_values)),
    }


def stt_confidence_window(conn: sqlite3.Connection, since: float, until: float) -> dict[str, Any]:
    """STT confidence (0..1, the STT's own figure) of the caller turns in ``[since, until)``.

    Returns:
        ``turns`` (with a confidence), ``p50`` (nearest rank) and ``low_share`` (turns below
        :data:`LOW_CONFIDENCE` / turns); ``None`` figures with no such turns.
    """
    if "stt_confidence" not in _features(conn):
        return _confidence_figures([])
    values = [
        r[0]
        for r in conn.execute(
            "SELECT stt_confidence FROM turn_latency WHERE t >= ? AND t < ? "
            "AND stt_confidence IS NOT NULL ORDER BY stt_confidence",
            [since, until],
        )
    ]
    return _confidence_figures(values)


def transfer_rates(conn: sqlite3.Connection, since: float, until: float) -> dict[str, Any]:
    """Transfer success in ``[since, until)``: from transfer results, else from the scores.

    Returns:
        ``source``: ``"transfer_results"`` (``transfers`` rows by their time ``t``) or,
        when the window has none, ``"call_scores"`` (the post-call score's per-call
        derivation, by ``scored_at``; see the module notes). ``transfers``: results (or
        calls with an attempt); ``succeeded``; ``success_rate`` and ``failure_rate``
        (``None`` with none); ``by_mode``: ``{mode: {"transfers", "succeeded",
        "success_rate"}}`` for transfer results (``"unknown"`` for a result without a mode;
        empty for the fallback).
    """
    by_mode: dict[str, dict[str, Any]] = {}
    if "transfers" in _features(conn):
        for mode, n, ok in conn.execute(
            "SELECT mode, COUNT(*), SUM(ok) FROM transfers WHERE t >= ? AND t < ? GROUP BY mode",
            [since, until],
        ):
            by_mode[mode or "unknown"] = {
                "transfers": n,
                "succeeded": ok or 0,
                "success_rate": _rate(ok, n),
            }
    if by_mode:
        n = sum(m["transfers"] for m in by_mode.values())
        ok = sum(m["succeeded"] for m in by_mode.values())
        source = "transfer_results"
    else:
        scores = score_rates(conn, since, until)
        n = scores["transfer_attempts"]
        rate = scores["transfer_success_rate"]
        ok = 0 if rate is None else round(rate * n)
        source = "call_scores"
    return {
        "source": source,
        "transfers": n,
        "succeeded": ok,
        "success_rate": _rate(ok, n),
        "failure_rate": _rate(n - ok, n),
        "by_mode": by_mode,
    }


def summary(conn: sqlite3.Connection, now: float, window_s: float = 86400.0) -> dict[str, Any]:
    """Headline figures of the last ``window_s`` seconds before ``now``.

    Returns:
        ``calls`` (answered in the window), the :func:`score_rates` keys, ``latency``
        (:func:`latency_window`), ``stt_confidence`` (:func:`stt_confidence_window`),
        ``transfer`` (:func:`transfer_rates`), ``since`` and ``until``.
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
        "stt_confidence": stt_confidence_window(conn, since, now),
        "transfer": transfer_rates(conn, since, now),
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
        :func:`score_rates` keys, ``turns``, ``v2v_p50``, ``v2v_p90`` (s), ``stages``
        (each of :data:`STAGES` to its P50 in s, ``None`` without figures),
        ``stt_confidence`` (:func:`stt_confidence_window`'s figures for the bucket's turns),
        ``transfer_results`` and ``transfer_results_succeeded`` (``transfers`` rows by ``t``)
        and ``transfer_result_success_rate`` (``None`` without results).

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
        s: {
            "start": s,
            "calls": 0,
            **_score_rates((0, 0, 0, 0, 0, 0, 0)),
            "transfer_results": 0,
            "transfer_results_succeeded": 0,
            "transfer_result_success_rate": None,
        }
        for s in starts
    }
    span = [offset, size, first, end]
    features = _features(conn)
    if "transfers" in features:
        for b, n, ok in conn.execute(
            "SELECT CAST((t - ?) / ? AS INTEGER), COUNT(*), SUM(ok) FROM transfers "
            "WHERE t >= ? AND t < ? GROUP BY 1",
            span,
        ):
            out[b * size + offset].update(
                transfer_results=n,
                transfer_results_succeeded=ok or 0,
                transfer_result_success_rate=_rate(ok, n),
            )
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
    columns: tuple[str, ...] = ("voice_to_voice_s", *STAGES)
    if "stt_confidence" in features:
        columns += ("stt_confidence",)
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
        confidence = lists[len(STAGES) + 1] if len(lists) > len(STAGES) + 1 else []
        out[s]["stt_confidence"] = _confidence_figures(confidence)
    return out


# The call list and a call's metadata live in call_queries.py; re-exported for the routes.
from appliance.admin.call_queries import (  # noqa: E402
    CallFilter,
    call_detail,
    dispositions,
    list_calls,
    workflows,
)

__all__ = [
    "BUCKETS",
    "CallFilter",
    "MetricsUnavailable",
    "bucket_start",
    "call_detail",
    "dispositions",
    "latency_window",
    "list_calls",
    "open_metrics",
    "percentile",
    "score_rates",
    "series",
    "stt_confidence_window",
    "summary",
    "transfer_rates",
    "workflows",
]
