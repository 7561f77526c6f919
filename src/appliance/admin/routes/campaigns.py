"""Reminder campaigns: propose, review, sign off, start, and the outcomes (issue 15).

Pages: ``/campaigns`` (the campaigns and the proposal form) and ``/campaigns/<id>`` (the dry
run's counts now, the compliance review, the owner's sign-off, the start, and once started the
dialler's outcomes). JSON: ``/api/campaigns``.

Every page needs ``view_campaigns``. Each step's own permission and the two-person rule are
enforced by :class:`appliance.admin.campaigns.CampaignStore`, so a refused step is a 403 (409
for the wrong state) whatever the page showed. The counts come from the agent
(``outbound.preview``, ``outbound.campaign``); the page never holds a phone number or a name
of a patient. A viewer sees the counts and the state only (not the reason or the notes).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.admin.auth import Principal, require
from appliance.admin.campaigns import (
    DAYS_MAX,
    SCOPES,
    Campaign,
    CampaignStore,
    outcome_counts,
)
from appliance.admin.governance import GovernanceError
from appliance.admin.rbac import Permission
from appliance.admin.web import get_ctx, render
from appliance.control import ControlError

router = APIRouter()
VIEW = require(Permission.VIEW_CAMPAIGNS)

#: Which permissions allow each step (any one of them).
STEP_PERMISSIONS: dict[str, tuple[Any, ...]] = {
    "propose": (Permission.PROPOSE_CAMPAIGN,),
    "review": (Permission.COMPLIANCE_REVIEW,),
    "sign_off": (Permission.SIGN_OFF,),
    "start": (Permission.SIGN_OFF, Permission.PROPOSE_CAMPAIGN),
}
_STATUS = {"not_found": 404, "forbidden": 403, "conflict": 409, "unavailable": 503}
#: A campaign id from the URL (larger ids are a 422, not a 500).
CampaignId = PathParam(ge=1, le=2**53)
#: Seconds the page waits for the agent's answer.
AGENT_TIMEOUT_S = 10.0


def _store(request: Request) -> CampaignStore:
    state = request.app.state
    store = getattr(state, "campaigns", None)
    if store is None:
        ctx = get_ctx(request)
        store = CampaignStore(ctx.db, ctx.audit, STEP_PERMISSIONS)
        state.campaigns = store
    return store


def _agent(request: Request, op: str, args: dict[str, Any], actor: str) -> dict[str, Any]:
    """One ``outbound.*`` operation on the agent.

    Raises:
        GovernanceError: ``unavailable`` (the agent did not answer, or outbound is off) or
            ``invalid`` (the agent refused the arguments).
    """
    try:
        result = get_ctx(request).control.call(op, args, actor, timeout=AGENT_TIMEOUT_S)
    except ControlError as exc:
        code = "invalid" if exc.code == "bad_request" else "unavailable"
        raise GovernanceError(code, f"the agent's dialler answered {exc.code}: {exc}") from exc
    if not isinstance(result, dict):
        raise GovernanceError("unavailable", "the agent's dialler gave an unexpected answer")
    return result


def _preview(request: Request, campaign: Campaign, actor: str) -> dict[str, Any]:
    """The dry run now: ``{"appointments", "refused"}``, or ``{"error"}``."""
    try:
        return _agent(request, "outbound.preview", {"days": campaign.days}, actor)
    except GovernanceError as exc:
        return {"error": exc.message}


def _outcomes(request: Request, campaign: Campaign, actor: str) -> dict[str, Any] | None:
    """The started campaign's outcomes (:func:`outcome_counts`), or ``{"error"}``."""
    if campaign.started is None:
        return None
    name = str(campaign.started.get("dialler_campaign", campaign.dialler_campaign))
    try:
        answer = _agent(request, "outbound.campaign", {"campaign": name}, actor)
    except GovernanceError as exc:
        return {"error": exc.message}
    outcomes = answer.get("outcomes")
    return outcome_counts(outcomes if isinstance(outcomes, dict) else {})


def _can(principal: Principal) -> dict[str, bool]:
    return {step: any(principal.can(p) for p in perms) for step, perms in STEP_PERMISSIONS.items()}


def _index(request: Request, status: int = 200, error: str = "", **form: Any) -> Response:
    principal: Principal = request.state.principal
    return render(
        request,
        "campaigns/index.html",
        status_code=status,
        campaigns=_store(request).list(),
        can=_can(principal),
        staff=principal.can(Permission.VIEW_WORKFLOWS),
        days_max=DAYS_MAX,
        scopes=SCOPES,
        error=error,
        form=form,
    )


@router.get("/campaigns", response_class=HTMLResponse)
def campaigns_page(request: Request, principal: Principal = Depends(VIEW)) -> Response:
    return _index(request)


@router.post("/campaigns", response_class=HTMLResponse)
def propose(
    request: Request,
    name: str = Form(""),
    days: int = Form(2),
    scope: str = Form("reminders"),
    reason: str = Form(""),
    principal: Principal = Depends(VIEW),
) -> Response:
    store = _store(request)
    form = {"name": name[:64], "days": days, "reason": reason[:4000]}
    try:
        store.check_propose(principal, name, days, scope, reason)
        preview = _agent(request, "outbound.preview", {"days": days}, principal.actor)
        campaign = store.propose(
            principal, name=name, days=days, scope=scope, reason=reason, preview=preview
        )
    except GovernanceError as exc:
        return _index(request, _STATUS.get(exc.code, 422), exc.message, **form)
    return RedirectResponse(f"/campaigns/{campaign.id}", status_code=303)


def _detail(request: Request, campaign: Campaign, status: int = 200, error: str = "") -> Response:
    principal: Principal = request.state.principal
    live = campaign.state in ("in_review", "approved")
    return render(
        request,
        "campaigns/detail.html",
        status_code=status,
        campaign=campaign,
        preview=_preview(request, campaign, principal.actor) if live else None,
        outcomes=_outcomes(request, campaign, principal.actor),
        error=error,
        staff=principal.can(Permission.VIEW_WORKFLOWS),
        is_proposer=principal.actor == campaign.requested_by,
        can=_can(principal),
    )


def _get(request: Request, campaign_id: int) -> Campaign | Response:
    try:
        return _store(request).get(campaign_id)
    except GovernanceError as exc:
        return render(request, "error.html", status_code=404, code=404, detail=exc.message)


@router.get("/campaigns/{campaign_id}", response_class=HTMLResponse)
def campaign_page(
    request: Request, campaign_id: int = CampaignId, principal: Principal = Depends(VIEW)
) -> Response:
    campaign = _get(request, campaign_id)
    return campaign if isinstance(campaign, Response) else _detail(request, campaign)


def _after(request: Request, campaign_id: int, step: Any) -> Response:
    """Run one step; back to the campaign page (303) or the page with the error."""
    found = _get(request, campaign_id)
    if isinstance(found, Response):
        return found
    try:
        step()
    except GovernanceError as exc:
        return _detail(
            request, _store(request).get(campaign_id), _STATUS.get(exc.code, 422), exc.message
        )
    return RedirectResponse(f"/campaigns/{campaign_id}", status_code=303)


def _approve(decision: str) -> bool:
    if decision not in ("approve", "reject"):
        raise GovernanceError("invalid", "choose approve or reject")
    return decision == "approve"


@router.post("/campaigns/{campaign_id}/start", response_class=HTMLResponse)
def start(
    request: Request, campaign_id: int = CampaignId, principal: Principal = Depends(VIEW)
) -> Response:
    store = _store(request)

    def run() -> None:
        campaign = store.claim_start(campaign_id, principal)
        args = {"days": campaign.days, "campaign": campaign.dialler_campaign}
        try:
            result = _agent(request, "outbound.reminders", args, principal.actor)
        except GovernanceError:
            store.release_start(campaign_id)
            raise
        jobs = result.get("jobs")
        store.mark_started(campaign_id, principal, len(jobs) if isinstance(jobs, list) else 0)

    return _after(request, campaign_id, run)


@router.post("/campaigns/{campaign_id}/{step}", response_class=HTMLResponse)
def decide(
    request: Request,
    step: Literal["review", "signoff"],
    campaign_id: int = CampaignId,
    decision: str = Form(""),
    notes: str = Form(""),
    principal: Principal = Depends(VIEW),
) -> Response:
    """The compliance review (``review``) or the owner's sign-off (``signoff``)."""
    store = _store(request)
    act = store.review if step == "review" else store.sign_off
    return _after(
        request, campaign_id, lambda: act(campaign_id, principal, _approve(decision), notes)
    )


@router.get("/api/campaigns")
def api_campaigns(request: Request, principal: Principal = Depends(VIEW)) -> dict[str, Any]:
    """The latest campaigns: state, days, scope, counts when proposed, jobs queued."""
    return {
        "campaigns": [
            {
                "id": c.id,
                "name": c.name,
                "state": c.state,
                "days": c.days,
                "scope": c.scope,
                "preview": c.preview,
                "reviewed": c.review is not None,
                "signed_off": c.signoff is not None,
                "jobs": None if c.started is None else c.started.get("jobs"),
            }
            for c in _store(request).list()
        ]
    }
