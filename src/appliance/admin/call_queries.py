"""The call list and one call's metadata for the admin page (read-only, no content).

Split from :mod:`appliance.admin.queries` (the dashboard's windows and series), which
re-exports these names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.admin.queries import STAGES, _features


@dataclass(frozen=True)
class CallFilter:
    """Call-list search: all fields optional, combined with AND.

    Attributes:
        call_id: Prefix of the opaque call id.
        outcome: One of :data:`OUTCOMES`, or ``"unscored"``.
        disposition: Exact ``calls.disposition`` (``caller_hangup``, ...).
        since: Answered at or after (epoch s).
        until: Answered before (epoch s).
        workflow: A workflow id the call reached an outcome in (``call_workflows``).
    """

    call_id: str = ""
    outcome: str = ""
    disposition: str = ""
    since: float | None = None
    until: float | None = None
    workflow: str = ""


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_calls(
    conn: sqlite3.Connection, flt: CallFilter, page: int = 1, per_page: int = 50
) -> tuple[list[dict[str, Any]], int]:
    """One page of calls, newest first, and the number of calls matching ``flt``.

    The row's ``score`` is the number of the post-call checks that passed out of those that
    apply (disclosure, identity before PHI, no card number, and transfer appropriateness when
    a transfer was attempted), e.g. ``(3, 3)``; ``None`` for a call not scored yet.

    ``workflows`` lists the call's workflow outcomes in time order (``call_workflows``:
    ``{"workflow", "outcome"}``, workflow ``""`` for an outcome outside a workflow); empty
    when none was recorded.

    Returns:
        ``(rows, total)``; each row has ``call_id``, ``answered_at``, ``duration_s``,
        ``disposition``, ``turns``, ``outcome``, ``contained``, ``sentiment``, ``score``
        (``(passed, checks)`` or ``None``) and ``workflows``.
    """
    features = _features(conn)
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
    if flt.workflow:
        if "call_workflows" not in features:
            return [], 0
        where.append("c.call_id IN (SELECT call_id FROM call_workflows WHERE workflow = ?)")
        params.append(flt.workflow)
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
    out = [_call_row(r) for r in rows]
    flows = _workflows_of(conn, [r["call_id"] for r in out], features)
    for r in out:
        r["workflows"] = flows.get(r["call_id"], [])
    return out, total


def _workflows_of(
    conn: sqlite3.Connection, call_ids: list[str], features: frozenset[str]
) -> dict[str, list[dict[str, str]]]:
    """The workflow outcomes of ``call_ids`` in time order (one indexed query)."""
    if not call_ids or "call_workflows" not in features:
        return {}
    out: dict[str, list[dict[str, str]]] = {}
    marks = ", ".join("?" * len(call_ids))
    for call_id, workflow, outcome in conn.execute(
        "SELECT call_id, workflow, outcome FROM call_workflows "
        f"WHERE call_id IN ({marks}) ORDER BY call_id, t, rowid",
        call_ids,
    ):
        out.setdefault(call_id, []).append({"workflow": workflow, "outcome": outcome})
    return out


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
        ``voice_to_voice_s`` in s, ``listening``, ``stt_confidence`` 0..1 or ``None``),
        ``workflows`` (as in :func:`list_calls`) and ``transfers`` (``t``, ``mode``, ``ok``,
        ``status``, per transfer result in time order).
    """
    features = _features(conn)
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
    confidence = "stt_confidence" if "stt_confidence" in features else "NULL"
    detail["turn_rows"] = [
        dict(zip((*columns, "stt_confidence"), r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(columns)}, {confidence} FROM turn_latency "
            "WHERE call_id = ? ORDER BY t",
            [call_id],
        )
    ]
    detail["workflows"] = _workflows_of(conn, [call_id], features).get(call_id, [])
    detail["transfers"] = (
        [
            {"t": t, "mode": mode, "ok": bool(ok), "status": status}
            for t, mode, ok, status in conn.execute(
                "SELECT t, mode, ok, status FROM transfers WHERE call_id = ? ORDER BY t, rowid",
                [call_id],
            )
        ]
        if "transfers" in features
        else []
    )
    return detail


def dispositions(conn: sqlite3.Connection) -> list[str]:
    """The distinct call dispositions recorded (for the search form)."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT disposition FROM calls WHERE disposition IS NOT NULL ORDER BY 1"
        )
    ]


def workflows(conn: sqlite3.Connection) -> list[str]:
    """The distinct workflow ids with a recorded outcome (for the search form; no ``""``).

    A skip scan of the ``(workflow, call_id)`` index: one seek per distinct id, not a pass
    over every row.
    """
    if "call_workflows" not in _features(conn):
        return []
    return [
        r[0]
        for r in conn.execute(
            "WITH RECURSIVE w(id) AS ("
            "SELECT MIN(workflow) FROM call_workflows WHERE workflow > '' "
            "UNION ALL SELECT (SELECT MIN(workflow) FROM call_workflows WHERE workflow > w.id) "
            "FROM w WHERE w.id IS NOT NULL) SELECT id FROM w WHERE id IS NOT NULL"
        )
    ]
