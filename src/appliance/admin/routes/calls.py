"""Admin page routes: the call list, a call's timeline and its transcript (for a reason).

Everyone with :attr:`Permission.VIEW_CALLS` sees metadata and the redacted timeline (stage
latencies from the metadata database, and the audit log's event kinds and non-content meta
via the agent's ``call.timeline`` op). The decrypted transcript needs
:attr:`Permission.VIEW_PHI` and a stated reason; it is fetched through the agent
(``call.transcript``), which records the view in the audit log. If the agent is unreachable
the page shows the metadata-only timeline with a notice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from appliance.admin import charts, queries
from appliance.admin.auth import Principal, require
from appliance.admin.rbac import Permission
from appliance.admin.web import get_ctx, render
from appliance.control import ControlError

_LOGGER = logging.getLogger(__name__)
router = APIRouter()
VIEW = require(Permission.VIEW_CALLS)
PHI = require(Permission.VIEW_CALLS, Permission.VIEW_PHI)
PER_PAGE = 50

Outcome = Literal["", "resolved", "transferred", "message_taken", "abandoned", "caller_silent",
                  "unscored"]  # fmt: skip
#: A workflow id as the workflows' config names them (a fixed identifier).
WORKFLOW_PATTERN = r"^[A-Za-z0-9_.:-]*$"
CallId = Annotated[str, PathParam(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]

#: Timeline CSS class by audit event kind.
_KIND_CLASS = {
    "TransferAttempted": "ev-transfer",
    "TransferResult": "ev-transfer",
    "PciPause": "ev-pci",
    "DisclosurePlayed": "ev-disclosure",
    "Escalated": "ev-escalation",
}
_BAR = (("endpointing", "endpointing_s"), ("agent", "agent_s"), ("reply", "reply_s"))


def _day(text: str, name: str) -> float | None:
    """A ``YYYY-MM-DD`` form value as epoch seconds at 00:00 UTC; ``None`` when blank."""
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: expected a date as YYYY-MM-DD") from exc
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def _filter(
    q: str, outcome: str, disposition: str, since: str, until: str, workflow: str = ""
) -> queries.CallFilter:
    end = _day(until, "until")
    return queries.CallFilter(
        call_id=q.strip(),
        outcome=outcome,
        disposition=disposition.strip(),
        since=_day(since, "since"),
        until=None if end is None else end + 86400,  # the "until" day is included
        workflow=workflow,
    )


def _metrics(request: Request) -> Path:
    return Path(get_ctx(request).settings.store.metadata_db)


def _query_list(path: Path, flt: queries.CallFilter, page: int, per_page: int) -> dict[str, Any]:
    with queries.open_metrics(path) as conn:
        rows, total = queries.list_calls(conn, flt, page, per_page)
        return {
            "rows": rows,
            "total": total,
            "dispositions": queries.dispositions(conn),
            "workflows": queries.workflows(conn),
        }


@router.get("/calls", response_class=HTMLResponse)
async def call_list(
    request: Request,
    q: str = Query("", max_length=128, description="Call id prefix."),
    outcome: Outcome = "",
    disposition: str = Query("", max_length=64),
    since: str = Query("", max_length=10, description="First day, YYYY-MM-DD (UTC)."),
    until: str = Query("", max_length=10, description="Last day, YYYY-MM-DD (UTC)."),
    workflow: str = Query("", max_length=64, pattern=WORKFLOW_PATTERN),
    page: int = Query(1, ge=1, le=1_000_000),
    principal: Principal = Depends(VIEW),  # noqa: B008 - FastAPI dependency
) -> HTMLResponse:
    """Searchable call list, newest first, 50 a page."""
    flt = _filter(q, outcome, disposition, since, until, workflow)
    try:
        data = await asyncio.to_thread(_query_list, _metrics(request), flt, page, PER_PAGE)
        problem = ""
    except queries.MetricsUnavailable as exc:
        data = {"rows": [], "total": 0, "dispositions": [], "workflows": []}
        problem = str(exc)
    pages = max(1, -(-data["total"] // PER_PAGE))
    params = {"q": q, "outcome": outcome, "disposition": disposition, "since": since,
              "until": until, "workflow": workflow}  # fmt: skip
    return render(
        request,
        "calls/list.html",
        problem=problem,
        page=page,
        pages=pages,
        params=params,
        outcomes=[o for o in get_args(Outcome) if o],
        **data,
    )


@router.get("/api/calls")
async def api_calls(
    request: Request,
    q: str = Query("", max_length=128, description="Call id prefix."),
    outcome: Outcome = "",
    disposition: str = Query("", max_length=64),
    since: str = Query("", max_length=10, description="First day, YYYY-MM-DD (UTC)."),
    until: str = Query("", max_length=10, description="Last day, YYYY-MM-DD (UTC)."),
    workflow: str = Query("", max_length=64, pattern=WORKFLOW_PATTERN),
    page: int = Query(1, ge=1, le=1_000_000),
    per_page: int = Query(50, ge=1, le=200),
    principal: Principal = Depends(VIEW),  # noqa: B008 - FastAPI dependency
) -> dict[str, Any]:
    """Calls matching the search, newest first: metadata and score only, never content.

    Each call: ``call_id``, ``answered_at`` (epoch s), ``duration_s``, ``disposition``,
    ``turns``, ``outcome``, ``contained``, ``sentiment``, ``score`` (``[passed, checks]``)
    and ``workflows`` (``[{"workflow", "outcome"}]`` in time order, fixed identifiers).
    ``workflow`` keeps the calls with an outcome in that workflow. ``available`` is false
    while there is no call metadata yet.
    """
    flt = _filter(q, outcome, disposition, since, until, workflow)
    try:
        data = await asyncio.to_thread(_query_list, _metrics(request), flt, page, per_page)
    except queries.MetricsUnavailable:
        return {"available": False, "total": 0, "page": page, "per_page": per_page, "calls": []}
    return {
        "available": True,
        "total": data["total"],
        "page": page,
        "per_page": per_page,
        "calls": data["rows"],
    }


def _detail(path: Path, call_id: str) -> dict[str, Any] | None:
    with queries.open_metrics(path) as conn:
        return queries.call_detail(conn, call_id)


async def _timeline(ctx: Any, call_id: str, actor: str) -> tuple[list[dict[str, Any]], str]:
    """The audit log's events of the call (kind and meta only), or a notice why not."""
    try:
        result = await ctx.control.acall("call.timeline", {"call_id": call_id}, actor)
    except ControlError as exc:
        if exc.code == "unavailable":
            return [], "The agent is not reachable: showing the metadata-only timeline."
        if exc.code == "not_found":
            return [], "The audit log has no events for this call."
        _LOGGER.warning("call.timeline failed (%s)", exc.code)
        return [], f"The audit timeline could not be read ({exc.code})."
    events = result.get("events") if isinstance(result, dict) else None
    if not isinstance(events, list):
        return [], "The agent answered without a timeline."
    return [e for e in events if isinstance(e, dict)], ""


def _merge(detail: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turns (metadata) and audit events in one time-ordered list."""
    turns = detail["turn_rows"]
    scale = max((t["voice_to_voice_s"] or 0.0 for t in turns), default=0.0) or 1.0
    items: list[dict[str, Any]] = []
    for n, t in enumerate(turns, 1):
        items.append(
            {
                "t": t["t"],
                "kind": "turn",
                "css": "ev-turn",
                "n": n,
                "turn": t,
                "bar": charts.stage_bar([(name, t[key]) for name, key in _BAR], scale),
            }
        )
    for e in events:
        raw = e.get("meta")
        meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
        kind = str(e.get("kind", ""))
        failed = meta.get("ok") is False
        items.append(
            {
                "t": e.get("t") if isinstance(e.get("t"), int | float) else None,
                "kind": kind,
                "css": "ev-failed" if failed else _KIND_CLASS.get(kind, "ev-other"),
                "meta": meta,
            }
        )
    items.sort(key=lambda i: (i["t"] is None, i["t"] or 0.0))
    return items


async def _call_page(
    request: Request,
    call_id: str,
    principal: Principal,
    *,
    transcript: dict[str, Any] | None = None,
    form_error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    ctx = get_ctx(request)
    try:
        detail = await asyncio.to_thread(_detail, _metrics(request), call_id)
    except queries.MetricsUnavailable as exc:
        raise HTTPException(404, f"No call metadata: {exc}.") from exc
    if detail is None:
        raise HTTPException(404, "No such call.")
    events, notice = await _timeline(ctx, call_id, principal.actor)
    return render(
        request,
        "calls/detail.html",
        status_code=status_code,
        call=detail,
        items=_merge(detail, events),
        notice=notice,
        can_phi=principal.can(Permission.VIEW_PHI),
        transcript=transcript,
        form_error=form_error,
        legend=charts.legend([name for name, _ in _BAR]),
    )


@router.get("/calls/{call_id}", response_class=HTMLResponse)
async def call_page(
    request: Request,
    call_id: CallId,
    principal: Principal = Depends(VIEW),  # noqa: B008 - FastAPI dependency
) -> HTMLResponse:
    """One call: metadata, score flags, and the redacted timeline."""
    return await _call_page(request, call_id, principal)


@router.post("/calls/{call_id}/transcript", response_class=HTMLResponse)
async def call_transcript(
    request: Request,
    call_id: CallId,
    reason: str = Form("", max_length=500),
    principal: Principal = Depends(PHI),  # noqa: B008 - FastAPI dependency
) -> HTMLResponse:
    """The decrypted transcript, for a stated reason (the agent records the view)."""
    reason = " ".join(reason.split())
    if len(reason) < 10:
        return await _call_page(
            request,
            call_id,
            principal,
            form_error="State why you need the transcript (at least 10 characters).",
            status_code=400,
        )
    try:
        result = await get_ctx(request).control.acall(
            "call.transcript", {"call_id": call_id, "reason": reason}, principal.actor
        )
    except ControlError as exc:
        message = {
            "unavailable": "The agent is not reachable: the transcript cannot be opened now.",
            "not_found": "The audit log holds no transcript for this call.",
            "forbidden": "The agent refused to open this transcript.",
        }.get(exc.code, f"The transcript could not be opened ({exc.code}).")
        return await _call_page(request, call_id, principal, form_error=message)
    if not isinstance(result, dict):
        result = {}
    turns = [t for t in result.get("turns") or [] if isinstance(t, dict)]
    events = [e for e in result.get("events") or [] if isinstance(e, dict)]
    return await _call_page(
        request, call_id, principal, transcript={"turns": turns, "events": events}
    )
