"""Settings: the PBX trunk, the clinic's name, the AI disclosure, the transfer target and CTI.

Each form is checked (:mod:`appliance.admin.settings_fields`), written to the admin drop-in
after the agent's own loader accepted the merged result
(:func:`appliance.admin.config_writer.apply_change`), audited (``AdminSettingsChanged``: the
changed keys, never values), and applied with the control op ``config.reload``. ``[sip]``
changes need a restart of the agent; the page says so. With the agent down the change is
saved and applies when it starts.

Who: ``manage_settings`` for the trunk, the clinic and the disclosure; ``manage_transfer`` for
the transfer target and the CTI webhook (the platform engineer holds both).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from appliance.admin.auth import Principal, require
from appliance.admin.config_writer import apply_change, previous_text, restart_needed, rollback
from appliance.admin.rbac import Permission
from appliance.admin.settings_fields import (
    BY_KEY,
    FIELDS,
    GROUPS,
    FieldError,
    NotAllowed,
    check_updates,
    editable_values,
)
from appliance.admin.web import AdminContext, get_ctx, render
from appliance.config.settings import ApplianceSettings, load_settings
from appliance.control import ControlError
from appliance.errors import ConfigError

_LOGGER = logging.getLogger(__name__)
router = APIRouter()

#: Any signed-in user; the routes check ``manage_settings`` or ``manage_transfer`` themselves.
SIGNED_IN = require()
#: Rolling back may touch keys of both kinds.
BOTH = require(Permission.MANAGE_SETTINGS, Permission.MANAGE_TRANSFER)

#: What a restart-needing change tells the user (the admin process cannot restart the agent).
RESTART_NOTE = (
    "SIP changes (bind address, trunk peers) take effect only after the agent restarts: "
    "run 'systemctl restart appliance' on the box, or restart it in a quiet hour."
)


@dataclass(frozen=True)
class Outcome:
    """What a save did.

    Attributes:
        changed: ``section.key`` names whose effective value changed.
        restart_needed: Whether the agent must restart to use them.
        applied: ``unchanged``, ``reloaded``, ``refused`` (the agent kept its settings),
            ``agent_unreachable`` or ``reload_failed``.
        message: One sentence for the user.
    """

    changed: list[str]
    restart_needed: bool
    applied: str
    message: str


class SaveResult(BaseModel):
    """``POST /api/settings``'s answer."""

    changed: list[str]
    restart_needed: bool
    applied: str
    message: str


def _allowed(principal: Principal) -> None:
    if not (principal.can(Permission.MANAGE_SETTINGS) or principal.can(Permission.MANAGE_TRANSFER)):
        raise HTTPException(status_code=403, detail="Your role does not allow this page.")


def _effective(ctx: AdminContext) -> tuple[ApplianceSettings, str]:
    """The settings on disk now (base file and drop-ins), or the start-up ones and why."""
    if ctx.settings_path is None:
        return ctx.settings, "This admin page was started without a settings file."
    try:
        return load_settings(ctx.settings_path), ""
    except ConfigError as exc:
        return ctx.settings, f"The settings files cannot be read: {exc.message}"


def _reload(ctx: AdminContext, actor: str) -> tuple[str, str]:
    try:
        result = ctx.control.call("config.reload", {}, actor)
    except ControlError as exc:
        if exc.code == "unavailable":
            return "agent_unreachable", "Saved; it applies when the agent starts."
        _LOGGER.warning("config.reload failed: %s", exc.code)
        return "reload_failed", f"Saved, but the agent could not reload ({exc.code})."
    if isinstance(result, dict) and result.get("accepted"):
        return "reloaded", "Saved and applied."
    return "refused", "Saved, but the agent refused to reload; it keeps its current settings."


def save(ctx: AdminContext, principal: Principal, updates: dict[str, dict[str, Any]]) -> Outcome:
    """Check, write, audit and apply ``updates`` (blocking: file I/O and the control socket).

    Raises:
        FieldError: A refused value (the page's own checks).
        NotAllowed: The user may not change one of the keys.
        ConfigError: The agent's loader refused the merged settings; nothing was written.
        HTTPException: 409 when the admin page has no settings file to write.
    """
    checked = check_updates(updates, principal.can)
    if ctx.settings_path is None:
        raise HTTPException(status_code=409, detail="no settings file: changes cannot be saved")
    # Only what differs goes to the drop-in: a key left as it was keeps following the base
    # file (or first boot's drop-in) when those change.
    current, problem = _effective(ctx)
    if not problem:
        checked = {
            section: kept
            for section, values in checked.items()
            if (
                kept := {
                    k: v
                    for k, v in values.items()
                    if BY_KEY[f"{section}.{k}"].current(current) != v
                }
            )
        }
    if not checked:
        return Outcome([], False, "unchanged", "Nothing changed.")
    _, changed = apply_change(ctx.settings_path, checked)
    if not changed:
        return Outcome([], False, "unchanged", "Nothing changed.")
    restart = restart_needed(changed)
    ctx.audit.record(
        "AdminSettingsChanged", principal.actor, keys=",".join(changed), restart_needed=restart
    )
    applied, message = _reload(ctx, principal.actor)
    if restart:
        message = f"{message} {RESTART_NOTE}"
    return Outcome(changed, restart, applied, message)


def _form_updates(group: str, form: Any) -> dict[str, dict[str, Any]]:
    updates: dict[str, dict[str, Any]] = {}
    for field in FIELDS:
        if field.group == group:
            value = form.get(field.key)
            updates.setdefault(field.section, {})[field.name] = value if value is not None else ""
    return updates


def _page(
    request: Request,
    principal: Principal,
    *,
    status_code: int = 200,
    message: str = "",
    error: str = "",
    error_key: str = "",
    submitted: dict[str, Any] | None = None,
) -> HTMLResponse:
    ctx = get_ctx(request)
    settings, problem = _effective(ctx)
    values = {f.key: f.current(settings) for f in FIELDS}
    if submitted:
        values.update(submitted)
    groups = [g for g, perm in GROUPS.items() if principal.can(perm)]
    can_rollback = (
        ctx.settings_path is not None
        and principal.can(Permission.MANAGE_SETTINGS)
        and principal.can(Permission.MANAGE_TRANSFER)
        and previous_text(ctx.settings_path) is not None
    )
    return render(
        request,
        "settings/index.html",
        status_code=status_code,
        fields=[f for f in FIELDS if f.group in groups],
        groups=groups,
        values=values,
        message=message,
        error=error,
        error_key=error_key,
        problem=problem,
        can_rollback=can_rollback,
        writable=ctx.settings_path is not None,
    )


@router.get("/settings", response_class=HTMLResponse)
async def settings_page(
    request: Request, principal: Principal = Depends(SIGNED_IN)
) -> HTMLResponse:
    """The settings forms the user may change, filled with the effective values."""
    _allowed(principal)
    return _page(request, principal)


@router.post("/settings/rollback", response_class=HTMLResponse)
async def settings_rollback(
    request: Request,
    principal: Principal = Depends(BOTH),
) -> HTMLResponse:
    """Put back the admin drop-in as it was before its last change (validated, audited)."""
    ctx = get_ctx(request)
    if ctx.settings_path is None:
        raise HTTPException(status_code=409, detail="no settings file: nothing to roll back")
    path = ctx.settings_path
    try:
        _, changed = await asyncio.to_thread(rollback, path)
    except ConfigError as exc:
        return _page(request, principal, status_code=422, error=exc.message)
    restart = restart_needed(changed)
    ctx.audit.record(
        "AdminSettingsRolledBack", principal.actor, keys=",".join(changed), restart_needed=restart
    )
    _, message = await asyncio.to_thread(_reload, ctx, principal.actor)
    if restart:
        message = f"{message} {RESTART_NOTE}"
    return _page(request, principal, message=f"Rolled back. {message}")


@router.post("/settings/{group}", response_class=HTMLResponse)
async def settings_save(
    request: Request, group: str, principal: Principal = Depends(SIGNED_IN)
) -> HTMLResponse:
    """Save one form (``trunk``, ``clinic``, ``disclosure`` or ``transfer``)."""
    _allowed(principal)
    if group not in GROUPS:
        raise HTTPException(status_code=404, detail="No such settings form.")
    if not principal.can(GROUPS[group]):
        raise HTTPException(status_code=403, detail="Your role does not allow this change.")
    form = await request.form()
    updates = _form_updates(group, form)
    submitted: dict[str, Any] = {f.key: form.get(f.key, "") for f in FIELDS if f.group == group}
    if "sip.allowed_peers" in submitted:
        submitted["sip.allowed_peers"] = str(submitted["sip.allowed_peers"]).splitlines()
    ctx = get_ctx(request)
    try:
        outcome = await asyncio.to_thread(save, ctx, principal, updates)
    except FieldError as exc:
        return _page(
            request,
            principal,
            status_code=422,
            error=str(exc),
            error_key=exc.key,
            submitted=submitted,
        )
    except ConfigError as exc:
        return _page(request, principal, status_code=422, error=exc.message, submitted=submitted)
    except NotAllowed as exc:
        raise HTTPException(status_code=403, detail=str(exc)) from exc
    return _page(request, principal, message=outcome.message)


@router.get("/api/settings")
async def api_settings(
    request: Request, principal: Principal = Depends(SIGNED_IN)
) -> dict[str, dict[str, Any]]:
    """The effective values of the settings the user may change: ``section -> key -> value``."""
    _allowed(principal)
    settings, problem = _effective(get_ctx(request))
    if problem and get_ctx(request).settings_path is not None:
        raise HTTPException(status_code=409, detail=problem)
    return editable_values(settings, principal.can)


@router.post("/api/settings")
async def api_settings_save(
    request: Request,
    updates: dict[str, dict[str, str | list[str]]] = Body(
        ...,
        examples=[{"transfer": {"target": "sip:frontdesk@10.0.0.5"}}],
        description="section -> key -> value; sip.allowed_peers is a list of networks.",
    ),
    principal: Principal = Depends(SIGNED_IN),
) -> SaveResult:
    """Change settings (same checks as the forms): 422 with the reason for a refused value."""
    _allowed(principal)
    try:
        outcome = await asyncio.to_thread(save, get_ctx(request), principal, updates)
    except FieldError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    except ConfigError as exc:
        raise HTTPException(status_code=422, detail=exc.message) from exc
    except NotAllowed as exc:
        raise HTTPException(status_code=403, detail=str(exc)) from exc
    return SaveResult(
        changed=outcome.changed,
        restart_needed=outcome.restart_needed,
        applied=outcome.applied,
        message=outcome.message,
    )
