"""Users: invite, change roles, reset MFA, disable; list and end active sessions.

Only :attr:`~appliance.admin.rbac.Permission.MANAGE_USERS` reaches it. Every change is audited.
Nobody can disable themselves or take away the last enabled owner: the box is never left
without someone who can sign off.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.admin.accounts import AccountError
from appliance.admin.auth import Principal, require
from appliance.admin.rbac import Permission, Role, parse_roles
from appliance.admin.web import get_ctx, render

router = APIRouter()
#: Row ids are SQLite integers: anything larger is a 422, never an overflow.
ID = PathParam(ge=1, le=2**63 - 1)
MANAGE = require(Permission.MANAGE_USERS)

ROLE_LABELS = {
    Role.OWNER: "Voice AI owner",
    Role.PLATFORM_ENGINEER: "Platform engineer",
    Role.COMPLIANCE_OFFICER: "Compliance officer",
    Role.QUALITY_REVIEWER: "Quality reviewer",
    Role.CONTACT_CENTRE_LEAD: "Contact-centre lead",
    Role.VIEWER: "Viewer",
}


def _page(request: Request, status: int = 200, **extra: object) -> Response:
    ctx = get_ctx(request)
    context: dict[str, object] = {"invite_link": "", "error_message": "", "invited": ""}
    context.update(extra)
    return render(
        request,
        "users/index.html",
        status_code=status,
        users=ctx.accounts.users(),
        sessions=ctx.accounts.sessions(),
        role_labels=ROLE_LABELS,
        **context,
    )


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, principal: Principal = Depends(MANAGE)) -> Response:
    return _page(request)


def _roles_from_form(values: list[str]) -> frozenset[Role]:
    try:
        return parse_roles(values)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def _keeps_an_owner(request: Request, user_id: int, roles: frozenset[Role], disable: bool) -> bool:
    owners = [
        u
        for u in get_ctx(request).accounts.users()
        if Role.OWNER in u.roles and not u.disabled and u.id != user_id
    ]
    return bool(owners) or (Role.OWNER in roles and not disable)


@router.post("/users", response_class=HTMLResponse)
async def invite(
    request: Request,
    username: str = Form(""),
    display_name: str = Form(""),
    roles: list[str] = Form(default_factory=list),
    principal: Principal = Depends(MANAGE),
) -> Response:
    ctx = get_ctx(request)
    try:
        user = ctx.accounts.create(
            username[:64],
            _roles_from_form(roles),
            display_name=display_name[:80],
            created_by=principal.actor,
        )
    except AccountError as exc:
        return _page(request, 400, error_message=str(exc))
    token = ctx.accounts.invite(user.id)
    ctx.audit.record(
        "AdminUserInvited",
        principal.actor,
        user=user.actor,
        username=user.username,
        roles=",".join(sorted(user.roles)),
    )
    link = f"{request.base_url}invite/{token}"
    return _page(request, 201, invite_link=link, invited=user.username)


@router.post("/users/{user_id}/roles")
async def change_roles(
    request: Request,
    user_id: int = ID,
    roles: list[str] = Form(default_factory=list),
    principal: Principal = Depends(MANAGE),
) -> Response:
    ctx = get_ctx(request)
    new = _roles_from_form(roles)
    try:
        before = ctx.accounts.get(user_id)
        if not _keeps_an_owner(request, user_id, new, before.disabled):
            raise AccountError("At least one enabled Voice AI owner must remain.")
        after = ctx.accounts.set_roles(user_id, new)
    except AccountError as exc:
        return _page(request, 400, error_message=str(exc))
    ctx.audit.record(
        "AdminRoleChanged",
        principal.actor,
        user=after.actor,
        before=",".join(sorted(before.roles)),
        after=",".join(sorted(after.roles)),
    )
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{user_id}/reset-mfa")
async def reset_mfa(
    request: Request, user_id: int = ID, principal: Principal = Depends(MANAGE)
) -> Response:
    ctx = get_ctx(request)
    try:
        user = ctx.accounts.get(user_id)
        ctx.accounts.reset_totp(user_id)
        token = ctx.accounts.invite(user_id)
    except AccountError as exc:
        return _page(request, 400, error_message=str(exc))
    ctx.audit.record("AdminMfaReset", principal.actor, user=user.actor)
    link = f"{request.base_url}invite/{token}"
    return _page(request, 200, invite_link=link, invited=user.username)


@router.post("/users/{user_id}/disable")
async def disable(
    request: Request,
    user_id: int = ID,
    enable: int = Form(0),
    principal: Principal = Depends(MANAGE),
) -> Response:
    ctx = get_ctx(request)
    try:
        user = ctx.accounts.get(user_id)
        if user.id == principal.user_id and not enable:
            raise AccountError("You cannot disable your own account.")
        if not enable and not _keeps_an_owner(request, user_id, user.roles, True):
            raise AccountError("At least one enabled Voice AI owner must remain.")
        ctx.accounts.set_disabled(user_id, not enable)
    except AccountError as exc:
        return _page(request, 400, error_message=str(exc))
    kind = "AdminUserEnabled" if enable else "AdminUserDisabled"
    ctx.audit.record(kind, principal.actor, user=user.actor)
    return RedirectResponse("/users", status_code=303)


@router.post("/users/sessions/{session_id}/end")
async def end_session(
    request: Request, session_id: str, principal: Principal = Depends(MANAGE)
) -> Response:
    ctx = get_ctx(request)
    ended = ctx.accounts.end_session_by_prefix(session_id[:16])
    if ended:
        ctx.audit.record("AdminSessionEnded", principal.actor, session=session_id[:16])
    return RedirectResponse("/users", status_code=303)


@router.get("/api/users")
async def api_users(
    request: Request, principal: Principal = Depends(MANAGE)
) -> list[dict[str, object]]:
    """Every account: id, user name, roles, MFA set up, disabled (no secrets)."""
    return [
        {
            "id": u.id,
            "username": u.username,
            "roles": sorted(u.roles),
            "mfa_enrolled": u.mfa_enrolled,
            "disabled": u.disabled,
        }
        for u in get_ctx(request).accounts.users()
    ]
