"""Sign-in pages: first-admin enrolment, password, TOTP set-up and check, invites, sign-out.

A sign-in has two steps. The password starts an ``mfa``-stage session that reaches only the TOTP
pages for :data:`~appliance.admin.auth.MFA_STAGE_S`; a valid TOTP code replaces it by a new
``full`` session (a new token: no session fixation). TOTP is mandatory: an account without it
sets it up before it reaches any other page. Failures count per account (lockout) and per
client address (rate limit); every outcome goes to the audit log.
"""

from __future__ import annotations

import qrcode
import qrcode.image.svg
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.admin.accounts import AccountError
from appliance.admin.auth import (
    COOKIE,
    MFA_STAGE_S,
    check_csrf,
    current_session,
    session_token,
)
from appliance.admin.rbac import FIRST_ADMIN_ROLES
from appliance.admin.web import get_ctx, render

router = APIRouter(include_in_schema=False)

#: TOTP seeds shown on the set-up page, by session digest, until confirmed (memory only).
_PENDING_TOTP: dict[str, str] = {}


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _set_cookie(response: Response, token: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE, token, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def _limited(request: Request) -> bool:
    return not get_ctx(request).login_limiter.allow(_client(request))


def _failed(request: Request) -> None:
    get_ctx(request).login_limiter.failed(_client(request))


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, expired: int = 0) -> Response:
    ctx = get_ctx(request)
    if ctx.accounts.enrolment_open():
        return RedirectResponse("/enrol", status_code=303)
    notice = "Your session has ended; please sign in again." if expired else ""
    return render(request, "auth/login.html", notice=notice, error="")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, username: str = Form(""), password: str = Form("")) -> Response:
    ctx = get_ctx(request)
    if _limited(request):
        ctx.audit.record("AdminLoginThrottled", "anonymous", address=_client(request))
        return render(
            request,
            "auth/login.html",
            status_code=429,
            notice="",
            error="Too many attempts from this address. Wait a minute and try again.",
        )
    user, outcome = ctx.accounts.check_password(username[:64], password[:256])
    if user is None:
        _failed(request)
        ctx.audit.record(
            "AdminLoginFailed",
            "anonymous",
            username=username.strip().lower()[:64],
            reason=outcome,
            step="password",
            address=_client(request),
        )
        if outcome == "locked":
            error = "This account is locked after repeated failures. Try again later."
            if ctx.accounts.lockout_failures:
                ctx.audit.record(
                    "AdminLockout", "anonymous", username=username.strip().lower()[:64]
                )
        else:
            error = "Sign-in failed: the user name or password is wrong."
        return render(request, "auth/login.html", status_code=401, notice="", error=error)
    token = ctx.accounts.start_session(
        user.id, "mfa", _client(request), request.headers.get("user-agent", "")
    )
    target = "/login/totp" if user.mfa_enrolled else "/mfa/setup"
    response = RedirectResponse(target, status_code=303)
    _set_cookie(response, token, int(MFA_STAGE_S))
    return response


def _mfa_session(request: Request) -> object:
    session = current_session(request)
    if session is None or session.stage != "mfa":
        raise HTTPException(status_code=303, headers={"Location": "/login"})
    if get_ctx(request).accounts.now() - session.created_at > MFA_STAGE_S:
        get_ctx(request).accounts.end_session(session.token_hash)
        raise HTTPException(status_code=303, headers={"Location": "/login?expired=1"})
    return session


@router.get("/login/totp", response_class=HTMLResponse)
async def totp_page(request: Request) -> Response:
    _mfa_session(request)
    return render(request, "auth/totp.html", error="")


@router.post("/login/totp", response_class=HTMLResponse)
async def totp(request: Request, code: str = Form("")) -> Response:
    session = _mfa_session(request)
    ctx = get_ctx(request)
    await check_csrf(request, session.csrf)  # type: ignore[attr-defined]
    user = session.user  # type: ignore[attr-defined]
    if _limited(request):
        return render(request, "auth/totp.html", status_code=429, error="Too many attempts.")
    if user.locked_until > ctx.accounts.now():
        ctx.accounts.end_session(session.token_hash)  # type: ignore[attr-defined]
        return RedirectResponse("/login", status_code=303)
    if not ctx.accounts.verify_totp(user.id, code[:12]):
        _failed(request)
        outcome = ctx.accounts.record_failure(user.id)
        ctx.audit.record(
            "AdminLoginFailed", user.actor, reason=outcome, step="totp", address=_client(request)
        )
        if outcome == "locked":
            ctx.audit.record("AdminLockout", user.actor)
            ctx.accounts.end_session(session.token_hash)  # type: ignore[attr-defined]
            return render(
                request,
                "auth/login.html",
                status_code=401,
                notice="",
                error="This account is locked after repeated failures. Try again later.",
            )
        return render(request, "auth/totp.html", status_code=401, error="That code is wrong.")
    return _complete(request, session, "totp")


def _complete(request: Request, session: object, method: str) -> Response:
    ctx = get_ctx(request)
    user = session.user  # type: ignore[attr-defined]
    token = ctx.accounts.promote(session.token_hash)  # type: ignore[attr-defined]
    ctx.accounts.clear_failures(user.id)
    ctx.audit.record("AdminLogin", user.actor, mfa=method, address=_client(request))
    response = RedirectResponse("/", status_code=303)
    _set_cookie(response, token, int(ctx.accounts.absolute_s))
    return response


def _totp_setup(request: Request, session: object, error: str = "", status: int = 200) -> Response:
    ctx = get_ctx(request)
    key = session.token_hash  # type: ignore[attr-defined]
    secret = _PENDING_TOTP.get(key) or ctx.accounts.new_totp_secret()
    _PENDING_TOTP[key] = secret
    if len(_PENDING_TOTP) > 1000:
        _PENDING_TOTP.pop(next(iter(_PENDING_TOTP)))
    uri = ctx.accounts.provisioning_uri(secret, session.user.username)  # type: ignore[attr-defined]
    svg = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage).to_string(
        encoding="unicode"
    )
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    return render(
        request,
        "auth/mfa_setup.html",
        status_code=status,
        qr_svg=svg,
        secret=grouped,
        error=error,
    )


@router.get("/mfa/setup", response_class=HTMLResponse)
async def mfa_setup_page(request: Request) -> Response:
    session = _mfa_session(request)
    if session.user.mfa_enrolled:  # type: ignore[attr-defined]
        return RedirectResponse("/login/totp", status_code=303)
    return _totp_setup(request, session)


@router.post("/mfa/setup", response_class=HTMLResponse)
async def mfa_setup(request: Request, code: str = Form("")) -> Response:
    session = _mfa_session(request)
    await check_csrf(request, session.csrf)  # type: ignore[attr-defined]
    ctx = get_ctx(request)
    user = session.user  # type: ignore[attr-defined]
    if user.mfa_enrolled:
        return RedirectResponse("/login/totp", status_code=303)
    secret = _PENDING_TOTP.get(session.token_hash)  # type: ignore[attr-defined]
    if secret is None or not ctx.accounts.enrol_totp(user.id, secret, code[:12]):
        return _totp_setup(request, session, "That code does not match; try the next one.", 400)
    _PENDING_TOTP.pop(session.token_hash, None)  # type: ignore[attr-defined]
    ctx.audit.record("AdminMfaEnrolled", user.actor, method="totp")
    return _complete(request, session, "totp-enrolment")


@router.post("/logout")
async def logout(request: Request) -> Response:
    ctx = get_ctx(request)
    session = current_session(request)
    if session is not None:
        await check_csrf(request, session.csrf)
        ctx.accounts.end_session(session.token_hash)
        ctx.audit.record("AdminLogout", session.user.actor)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/enrol", response_class=HTMLResponse)
async def enrol_page(request: Request) -> Response:
    if not get_ctx(request).accounts.enrolment_open():
        return render(request, "auth/enrol_closed.html", status_code=410)
    return render(request, "auth/enrol.html", error="", username="")


@router.post("/enrol", response_class=HTMLResponse)
async def enrol(
    request: Request,
    code: str = Form(""),
    username: str = Form(""),
    password: str = Form(""),
    password2: str = Form(""),
) -> Response:
    ctx = get_ctx(request)
    if _limited(request):
        return render(
            request,
            "auth/enrol.html",
            status_code=429,
            username=username[:40],
            error="Too many attempts from this address. Wait a minute.",
        )
    if not ctx.accounts.enrolment_open():
        _failed(request)
        ctx.audit.record(
            "AdminEnrolmentRefused", "anonymous", reason="closed", address=_client(request)
        )
        return render(request, "auth/enrol_closed.html", status_code=410)
    if password != password2:
        return render(
            request,
            "auth/enrol.html",
            status_code=400,
            username=username[:40],
            error="The two passwords differ.",
        )
    try:
        user = ctx.accounts.enrol_first_admin(
            code[:40],
            ctx.settings.admin.enrolment_hash,
            username[:64],
            password[:256],
            frozenset(FIRST_ADMIN_ROLES),
        )
    except AccountError as exc:
        _failed(request)
        ctx.audit.record(
            "AdminEnrolmentRefused", "anonymous", reason=str(exc)[:80], address=_client(request)
        )
        return render(
            request, "auth/enrol.html", status_code=400, username=username[:40], error=str(exc)
        )
    ctx.audit.record(
        "AdminEnrolled", user.actor, username=user.username, roles=",".join(sorted(user.roles))
    )
    token = ctx.accounts.start_session(
        user.id, "mfa", _client(request), request.headers.get("user-agent", "")
    )
    response = RedirectResponse("/mfa/setup", status_code=303)
    _set_cookie(response, token, int(MFA_STAGE_S))
    return response


@router.get("/invite/{token}", response_class=HTMLResponse)
async def invite_page(request: Request, token: str) -> Response:
    user = get_ctx(request).accounts.invite_user(token[:100])
    if user is None:
        return render(
            request,
            "error.html",
            status_code=404,
            code=404,
            detail="This invitation is not valid any more.",
        )
    return render(request, "auth/invite.html", username=user.username, error="")


@router.post("/invite/{token}", response_class=HTMLResponse)
async def accept_invite(
    request: Request, token: str, password: str = Form(""), password2: str = Form("")
) -> Response:
    ctx = get_ctx(request)
    if _limited(request):
        return render(request, "error.html", status_code=429, code=429, detail="Too many attempts.")
    user = ctx.accounts.invite_user(token[:100])
    if user is None:
        _failed(request)  # guessing invitation tokens counts as a failed attempt
        return render(
            request,
            "error.html",
            status_code=404,
            code=404,
            detail="This invitation is not valid any more.",
        )
    if password != password2:
        return render(
            request,
            "auth/invite.html",
            status_code=400,
            username=user.username,
            error="The two passwords differ.",
        )
    try:
        ctx.accounts.accept_invite(token[:100], password[:256])
    except AccountError as exc:
        return render(
            request, "auth/invite.html", status_code=400, username=user.username, error=str(exc)
        )
    ctx.audit.record("AdminInviteAccepted", user.actor)
    session_tok = ctx.accounts.start_session(
        user.id, "mfa", _client(request), request.headers.get("user-agent", "")
    )
    response = RedirectResponse("/mfa/setup", status_code=303)
    _set_cookie(response, session_tok, int(MFA_STAGE_S))
    return response


@router.get("/healthz", include_in_schema=False)
async def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok"}


__all__ = ["router", "session_token"]
