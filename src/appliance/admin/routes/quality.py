"""Admin page routes: quality review (``/quality``) and the weekly digest (``/quality/digest``).

The quality reviewer (:attr:`Permission.REVIEW_QUALITY`) draws a random sample of answered
calls, opens each one's caller turns (fetched from the agent through control op
``call.transcript`` with the stated reason ``quality review sample <id>``, so the view is on
the audit log; this also needs :attr:`Permission.VIEW_PHI`) and types what the caller said.
Only word counts are stored (:mod:`appliance.admin.quality`). The digest is for the reviewer
and for the owner (:attr:`Permission.SIGN_OFF`), who acts on the breaches.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.admin.auth import Principal, require
from appliance.admin.quality import (
    MAX_SAMPLE,
    WER_ALERT,
    QualityError,
    caller_turns,
    draw_sample,
    get_sample,
    list_samples,
    record_review,
    wer_between,
    wer_trend,
)
from appliance.admin.quality_digest import (
    COMPLIANCE_FLAG_MAX,
    CONTAINMENT_DROP,
    CONTAINMENT_MIN,
    weekly_digest,
)
from appliance.admin.rbac import Permission
from appliance.admin.web import AdminContext, get_ctx, render
from appliance.control import ControlError

_LOGGER = logging.getLogger(__name__)

router = APIRouter()
#: Row ids are SQLite integers: anything larger is a 422, never an overflow.
ID = PathParam(ge=1, le=2**63 - 1)
REVIEW = require(Permission.REVIEW_QUALITY)
REVIEW_PHI = require(Permission.REVIEW_QUALITY, Permission.VIEW_PHI)
SIGNED_IN = require()
#: Longest corrected turn accepted, characters.
MAX_TURN_CHARS = 5000
#: Weeks on the trend chart and in the digest.
TREND_WEEKS = 12
DAY_S = 86400.0


def _conn(ctx: AdminContext) -> Any:
    """The admin database; :func:`~appliance.admin.web.create_app` made its quality tables."""
    return ctx.db


def _chart(trend: list[dict[str, Any]]) -> dict[str, Any]:
    """Coordinates of the inline SVG trend chart (viewBox 0 0 600 200; no script, no style)."""
    width, height, pad = 600.0, 200.0, 30.0
    top: float = max([WER_ALERT * 2] + [p["wer"] for p in trend if p["wer"] is not None])
    step = (width - 2 * pad) / max(1, len(trend) - 1)

    def y(v: float) -> float:
        return round(height - pad - (v / top) * (height - 2 * pad), 1)

    points = [
        {
            "x": round(pad + i * step, 1),
            "y": y(p["wer"]),
            "wer": p["wer"],
            "start": p["start"],
            "calls": p["calls"],
            "breach": p["wer"] > WER_ALERT,
        }
        for i, p in enumerate(trend)
        if p["wer"] is not None
    ]
    return {
        "width": width,
        "height": height,
        "pad": pad,
        "points": points,
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in points),
        "threshold_y": y(WER_ALERT),
        "top_pct": round(top * 100, 1),
        "first": trend[0]["start"] if trend else None,
        "last": trend[-1]["start"] if trend else None,
    }


def _index(request: Request, status: int = 200, message: str = "", error: str = "") -> Response:
    ctx = get_ctx(request)
    conn = _conn(ctx)
    now = time.time()
    overall = wer_between(conn, 0.0)
    recent = wer_between(conn, now - 30 * DAY_S)
    trend = wer_trend(conn, now - (TREND_WEEKS - 1) * 7 * DAY_S, "week", now)
    return render(
        request,
        "quality/index.html",
        status_code=status,
        samples=list_samples(conn),
        overall=overall,
        recent=recent,
        alert=recent["wer"] is not None and recent["wer"] > WER_ALERT,
        threshold=WER_ALERT,
        chart=_chart(trend),
        max_sample=MAX_SAMPLE,
        message=message,
        error_message=error,
    )


@router.get("/quality", response_class=HTMLResponse)
async def quality_page(request: Request, principal: Principal = Depends(REVIEW)) -> Response:
    return _index(request)


@router.post("/quality/sample", response_class=HTMLResponse)
async def draw(
    request: Request,
    size: int = Form(10),
    days: int = Form(7),
    principal: Principal = Depends(REVIEW),
) -> Response:
    ctx = get_ctx(request)
    if not 1 <= size <= MAX_SAMPLE or not 1 <= days <= 365:
        return _index(
            request, 422, error=f"Sample size must be 1..{MAX_SAMPLE} and days back 1..365."
        )
    since = time.time() - days * DAY_S
    # On the loop thread: the shared admin connection is not used from two threads at once.
    drawn = draw_sample(
        _conn(ctx), ctx.settings.store.metadata_db, size, since, actor=principal.actor
    )
    ctx.audit.record("AdminQualitySampled", principal.actor, calls=len(drawn), days=days)
    if not drawn:
        return _index(request, message="No answered call left to review in that period.")
    return RedirectResponse("/quality", status_code=303)


async def _transcript(ctx: AdminContext, sample_id: int, call_id: str, actor: str) -> Any:
    return await ctx.control.acall(
        "call.transcript",
        {"call_id": call_id, "reason": f"quality review sample {sample_id}"},
        actor,
    )


def _review(
    request: Request,
    sample_id: int,
    turns: list[tuple[float, str]] | None,
    status: int = 200,
    notice: str = "",
    references: list[str] | None = None,
) -> Response:
    ctx = get_ctx(request)
    try:
        sample = get_sample(_conn(ctx), sample_id)
    except QualityError:
        raise HTTPException(status_code=404, detail="No such quality sample.") from None
    typed = references or []
    rows = [  # what the reviewer typed is kept on a refused submit; else the recogniser's text
        {"t": t, "hypothesis": hyp, "reference": typed[i] if i < len(typed) else hyp}
        for i, (t, hyp) in enumerate(turns or [])
    ]
    return render(
        request,
        "quality/review.html",
        status_code=status,
        sample=sample,
        turns=rows,
        notice=notice,
        threshold=WER_ALERT,
        max_chars=MAX_TURN_CHARS,
    )


def _control_notice(exc: ControlError) -> tuple[int, str]:
    if exc.code == "unavailable":
        return 503, "The agent is not reachable, so the transcript cannot be shown. Try later."
    if exc.code == "not_found":
        return 404, "This call's transcript is no longer available (retention) or unknown."
    _LOGGER.error("quality review: the agent refused the control op (code %s)", exc.code)
    return 502, f"The agent refused the transcript ({exc.code})."


@router.get("/quality/digest", response_class=HTMLResponse)
async def digest(request: Request, principal: Principal = Depends(SIGNED_IN)) -> Response:
    if not (principal.can(Permission.REVIEW_QUALITY) or principal.can(Permission.SIGN_OFF)):
        raise HTTPException(status_code=403, detail="Your role does not allow this page.")
    ctx = get_ctx(request)
    weeks = weekly_digest(_conn(ctx), ctx.settings.store.metadata_db, TREND_WEEKS)
    return render(
        request,
        "quality/digest.html",
        weeks=weeks,
        wer_max=WER_ALERT,
        flag_max=COMPLIANCE_FLAG_MAX,
        containment_min=CONTAINMENT_MIN,
        containment_drop=CONTAINMENT_DROP,
    )


@router.get("/quality/{sample_id}", response_class=HTMLResponse)
async def review_page(
    request: Request, sample_id: int = ID, principal: Principal = Depends(REVIEW_PHI)
) -> Response:
    ctx = get_ctx(request)
    try:
        sample = get_sample(_conn(ctx), sample_id)
    except QualityError:
        raise HTTPException(status_code=404, detail="No such quality sample.") from None
    try:
        turns = caller_turns(await _transcript(ctx, sample_id, sample.call_id, principal.actor))
    except ControlError as exc:
        status, notice = _control_notice(exc)
        return _review(request, sample_id, None, status, notice)
    except QualityError as exc:
        return _review(request, sample_id, None, 502, str(exc))
    return _review(request, sample_id, turns)


@router.post("/quality/{sample_id}", response_class=HTMLResponse)
async def submit_review(
    request: Request, sample_id: int = ID, principal: Principal = Depends(REVIEW_PHI)
) -> Response:
    ctx = get_ctx(request)
    conn = _conn(ctx)
    try:
        sample = get_sample(conn, sample_id)
    except QualityError:
        raise HTTPException(status_code=404, detail="No such quality sample.") from None
    form = await request.form()
    references: list[str] = []
    while (value := form.get(f"ref_{len(references)}")) is not None:
        references.append(str(value)[:MAX_TURN_CHARS] if isinstance(value, str) else "")
    # The hypothesis is fetched again from the agent, never taken from the browser.
    try:
        turns = caller_turns(await _transcript(ctx, sample_id, sample.call_id, principal.actor))
    except ControlError as exc:
        status, notice = _control_notice(exc)
        return _review(request, sample_id, None, status, notice + " Nothing was saved.")
    except QualityError as exc:
        return _review(request, sample_id, None, 502, str(exc))
    try:
        edits = record_review(conn, sample_id, turns, references, actor=principal.actor)
    except QualityError as exc:
        return _review(request, sample_id, turns, 422, str(exc), references)
    words = sum(e.reference_words for e in edits)
    wer = sum(e.errors for e in edits) / words if words else None
    ctx.audit.record(
        "AdminQualityReviewed",
        principal.actor,
        sample_id=sample_id,
        turns=len(edits),
        wer=None if wer is None else round(wer, 4),
    )
    return RedirectResponse(f"/quality/{sample_id}/done", status_code=303)


@router.get("/quality/{sample_id}/done", response_class=HTMLResponse)
async def review_done(
    request: Request, sample_id: int = ID, principal: Principal = Depends(REVIEW)
) -> Response:
    try:
        sample = get_sample(_conn(get_ctx(request)), sample_id)
    except QualityError:
        raise HTTPException(status_code=404, detail="No such quality sample.") from None
    return render(request, "quality/done.html", sample=sample, threshold=WER_ALERT)
