"""Workflows and phased rollout: running workflows, phase gates, change requests, sign-off.

Pages: ``/workflows`` (the running workflows with their risk tier, version, validation and
diff from the packaged version; the enabled tiers and both phase gates; change requests) and
``/workflows/changes/<id>`` (the pre-deployment checklist, the compliance review, the owner's
sign-off, apply and rollback). JSON: ``/api/workflows`` and ``/api/gates``.

Every page needs ``view_workflows``; each step's own permission and the two-person rule are
enforced by :class:`appliance.admin.governance.GovernanceStore`, so a refused step is a 403
(or 409 for the wrong state or an unmet gate) whatever the page showed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.admin.auth import Principal, require
from appliance.admin.gates import REQUIRED_GATE, compute_gates
from appliance.admin.governance import CHECKLIST, ChangeRequest, GovernanceError, GovernanceStore
from appliance.admin.rbac import Permission
from appliance.admin.rollout import (
    RolloutError,
    apply_request,
    current_tiers,
    rollback_request,
    running_workflows,
    tiers_after,
    unified_diff,
    validate_proposed,
)
from appliance.admin.web import AdminContext, get_ctx, render
from appliance.agent.workflow import TIERS
from appliance.control import ControlError

router = APIRouter()
VIEW = require(Permission.VIEW_WORKFLOWS)

#: Which permissions allow each step (any one of them).
STEP_PERMISSIONS: dict[str, tuple[Any, ...]] = {
    "request": (Permission.REQUEST_CHANGE,),
    "review": (Permission.COMPLIANCE_REVIEW,),
    "sign_off": (Permission.SIGN_OFF,),
    "apply": (Permission.SIGN_OFF, Permission.MANAGE_SETTINGS),
}
_STATUS = {"not_found": 404, "forbidden": 403, "conflict": 409, "gate_not_met": 409}
MAX_FORM_TEXT = 256 * 1024
#: A change id from the URL (SQLite integers are 64-bit; larger ids are a 422, not a 500).
ChangeId = PathParam(ge=1, le=2**53)


def _store(request: Request) -> GovernanceStore:
    state = request.app.state
    store = getattr(state, "governance", None)
    if store is None:
        ctx = get_ctx(request)
        store = GovernanceStore(ctx.db, ctx.audit, STEP_PERMISSIONS)
        state.governance = store
    return store


def _status(exc: GovernanceError | RolloutError) -> int:
    if isinstance(exc, GovernanceError):
        return _STATUS.get(exc.code, 422)
    return 422 if exc.code == "bad_request" else 409


def _overview(ctx: AdminContext) -> dict[str, Any]:
    gates = compute_gates(ctx.settings.store.metadata_db)
    return {
        "workflows": running_workflows(ctx.settings),
        "tiers": current_tiers(ctx.settings, ctx.settings_path),
        "gates": gates,
    }


def _index(request: Request, status: int = 200, error: str = "", **form: str) -> Response:
    ctx = get_ctx(request)
    return render(
        request,
        "workflows/index.html",
        status_code=status,
        changes=_store(request).list(),
        all_tiers=TIERS,
        required_gate=REQUIRED_GATE,
        error=error,
        form=form,
        writable=ctx.settings_path is not None,
        **_overview(ctx),
    )


@router.get("/workflows", response_class=HTMLResponse)
def workflows_page(request: Request, principal: Principal = Depends(VIEW)) -> Response:
    return _index(request)


@router.post("/workflows/changes", response_class=HTMLResponse)
def request_change(
    request: Request,
    kind: str = Form(""),
    tier: str = Form(""),
    action: str = Form("enable"),
    workflow_text: str = Form(""),
    reason: str = Form(""),
    principal: Principal = Depends(VIEW),
) -> Response:
    ctx = get_ctx(request)
    store = _store(request)
    form = {"kind": kind, "reason": reason[:4000], "workflow_text": workflow_text[:MAX_FORM_TEXT]}
    try:
        if kind == "tier":
            now = current_tiers(ctx.settings, ctx.settings_path)
            after = tiers_after(now, action, tier)
            if after == now:
                raise GovernanceError("invalid", f"tier {tier} is already {action}d")
            change = store.create(
                principal,
                kind="tier",
                target=tier,
                action=action,
                from_version=",".join(now) or "none",
                to_version=",".join(after) or "none",
                reason=reason,
                payload={},
            )
        elif kind == "workflow":
            if len(workflow_text) > MAX_FORM_TEXT:
                raise GovernanceError("invalid", "the workflow file is too large")
            header, problem = validate_proposed(workflow_text)
            if problem:
                raise GovernanceError("invalid", f"the proposed workflow is invalid: {problem}")
            running = {w.id: w for w in running_workflows(ctx.settings)}
            old = running.get(header["id"])
            if old is not None and header["version"] <= old.version:
                raise GovernanceError(
                    "invalid",
                    f"version {header['version']} is not newer than the running {old.version}",
                )
            change = store.create(
                principal,
                kind="workflow",
                target=header["id"],
                action="update" if old else "add",
                from_version=str(old.version) if old else "none",
                to_version=str(header["version"]),
                reason=reason,
                payload={"text": workflow_text, "risk_tier": header["risk_tier"]},
            )
        else:
            raise GovernanceError("invalid", "choose a tier change or a workflow version")
    except (GovernanceError, RolloutError) as exc:
        return _index(request, _status(exc), exc.message, **form)
    return RedirectResponse(f"/workflows/changes/{change.id}", status_code=303)


def _detail(
    request: Request, change: ChangeRequest, status: int = 200, error: str = "", notice: str = ""
) -> Response:
    ctx = get_ctx(request)
    diff = ""
    gate = None
    if change.kind == "workflow":
        running = {w.id: w for w in running_workflows(ctx.settings)}
        old = running.get(change.target)
        diff = unified_diff(
            old.text if old else "",
            str(change.payload.get("text", "")),
            f"running/{change.target} v{change.from_version}",
            f"proposed/{change.target} v{change.to_version}",
        )
    elif change.action == "enable" and REQUIRED_GATE.get(change.target):
        gate = compute_gates(ctx.settings.store.metadata_db)[str(REQUIRED_GATE[change.target])]
    principal: Principal = request.state.principal
    return render(
        request,
        "workflows/change.html",
        status_code=status,
        change=change,
        checklist=CHECKLIST,
        diff=diff,
        gate=gate,
        error=error,
        notice=notice,
        is_requester=principal.actor == change.requested_by,
        can={
            step: any(principal.can(p) for p in perms) for step, perms in STEP_PERMISSIONS.items()
        },
    )


def _get(request: Request, change_id: int) -> ChangeRequest | Response:
    try:
        return _store(request).get(change_id)
    except GovernanceError as exc:
        return render(request, "error.html", status_code=404, code=404, detail=exc.message)


@router.get("/workflows/changes/{change_id}", response_class=HTMLResponse)
def change_page(
    request: Request, change_id: int = ChangeId, principal: Principal = Depends(VIEW)
) -> Response:
    change = _get(request, change_id)
    return change if isinstance(change, Response) else _detail(request, change)


def _after(request: Request, change_id: int, step: Any) -> Response:
    """Run one step; back to the change page (303) or the page with the error."""
    found = _get(request, change_id)
    if isinstance(found, Response):
        return found
    try:
        notice = step()
    except (GovernanceError, RolloutError) as exc:
        return _detail(request, _store(request).get(change_id), _status(exc), exc.message)
    if notice:
        return _detail(request, _store(request).get(change_id), notice=notice)
    return RedirectResponse(f"/workflows/changes/{change_id}", status_code=303)


@router.post("/workflows/changes/{change_id}/checklist", response_class=HTMLResponse)
def checklist_item(
    request: Request,
    change_id: int = ChangeId,
    item: str = Form(""),
    notes: str = Form(""),
    principal: Principal = Depends(VIEW),
) -> Response:
    return _after(
        request,
        change_id,
        lambda: _store(request).complete_item(change_id, principal, item, notes) and "",
    )


@router.post("/workflows/changes/{change_id}/transfer-test", response_class=HTMLResponse)
def transfer_test(
    request: Request, change_id: int = ChangeId, principal: Principal = Depends(VIEW)
) -> Response:
    ctx = get_ctx(request)
    store = _store(request)

    def run() -> str:
        change = store.get(change_id)
        if not any(principal.can(p) for p in STEP_PERMISSIONS["request"]):
            raise GovernanceError("forbidden", "you may not request changes")
        if change.state != "draft":
            raise GovernanceError("conflict", f"change {change_id} is {change.state}, not draft")
        try:
            result = ctx.control.call("transfer.test", {}, principal.actor, timeout=30.0)
        except ControlError as exc:
            result = {"ok": False, "webhook_status": None, "detail": f"{exc.code}: {exc}"}
        if not isinstance(result, dict):
            result = {"ok": False, "webhook_status": None, "detail": "unexpected answer"}
        store.record_transfer_test(change_id, principal, result)
        return "" if result.get("ok") else f"The test transfer failed: {result.get('detail', '')}"

    return _after(request, change_id, run)


@router.post("/workflows/changes/{change_id}/submit", response_class=HTMLResponse)
def submit(
    request: Request, change_id: int = ChangeId, principal: Principal = Depends(VIEW)
) -> Response:
    return _after(request, change_id, lambda: _store(request).submit(change_id, principal) and "")


@router.post("/workflows/changes/{change_id}/review", response_class=HTMLResponse)
def review(
    request: Request,
    change_id: int = ChangeId,
    decision: str = Form(""),
    notes: str = Form(""),
    principal: Principal = Depends(VIEW),
) -> Response:
    def run() -> str:
        if decision not in ("approve", "reject"):
            raise GovernanceError("invalid", "choose approve or reject")
        _store(request).review(change_id, principal, decision == "approve", notes)
        return ""

    return _after(request, change_id, run)


@router.post("/workflows/changes/{change_id}/signoff", response_class=HTMLResponse)
def signoff(
    request: Request,
    change_id: int = ChangeId,
    decision: str = Form(""),
    notes: str = Form(""),
    principal: Principal = Depends(VIEW),
) -> Response:
    def run() -> str:
        if decision not in ("approve", "reject"):
            raise GovernanceError("invalid", "choose approve or reject")
        _store(request).sign_off(change_id, principal, decision == "approve", notes)
        return ""

    return _after(request, change_id, run)


@router.post("/workflows/changes/{change_id}/apply", response_class=HTMLResponse)
def apply(
    request: Request, change_id: int = ChangeId, principal: Principal = Depends(VIEW)
) -> Response:
    ctx = get_ctx(request)

    def run() -> str:
        out = apply_request(
            _store(request),
            change_id,
            principal,
            settings=ctx.settings,
            settings_path=ctx.settings_path,
            metrics_db=ctx.settings.store.metadata_db,
            control=ctx.control,
        )
        return f"Applied: {out.message}."

    return _after(request, change_id, run)


@router.post("/workflows/changes/{change_id}/rollback", response_class=HTMLResponse)
def rollback(
    request: Request,
    change_id: int = ChangeId,
    reason: str = Form(""),
    principal: Principal = Depends(VIEW),
) -> Response:
    ctx = get_ctx(request)

    def run() -> str:
        out = rollback_request(
            _store(request),
            change_id,
            principal,
            reason,
            settings=ctx.settings,
            settings_path=ctx.settings_path,
            control=ctx.control,
        )
        return f"Rolled back: {out.message}."

    return _after(request, change_id, run)


@router.get("/api/workflows")
def api_workflows(request: Request, principal: Principal = Depends(VIEW)) -> dict[str, Any]:
    """The running workflows, the enabled tiers and the latest change requests."""
    ctx = get_ctx(request)
    return {
        "enabled_tiers": current_tiers(ctx.settings, ctx.settings_path),
        "workflows": [
            {
                "id": w.id,
                "title": w.title,
                "risk_tier": w.risk_tier,
                "version": w.version,
                "file": w.file.name,
                "source": w.source,
                "valid": not w.error,
                "error": w.error,
                "differs_from_packaged": bool(w.diff),
            }
            for w in running_workflows(ctx.settings)
        ],
        "changes": [c.as_dict() for c in _store(request).list()],
    }


@router.get("/api/gates")
def api_gates(request: Request, principal: Principal = Depends(VIEW)) -> dict[str, Any]:
    """Both phase gates over the last 7 days, with each criterion's value and definition."""
    gates = compute_gates(get_ctx(request).settings.store.metadata_db)
    return {
        "gates": {tier: gate.as_dict() for tier, gate in gates.items()},
        "required_gate": REQUIRED_GATE,
    }
