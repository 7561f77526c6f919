"""Sessions, CSRF and the ``require`` dependency every admin route uses.

- The session cookie is ``__Host-appliance`` (``Secure``, ``HttpOnly``, ``SameSite=Strict``,
  ``Path=/``): the token's SHA-256 is looked up server-side; idle and absolute timeouts apply
  (:class:`appliance.admin.accounts.Accounts`).
- CSRF: a per-session synchroniser token (OWASP CSRF cheat sheet), sent back by every form as
  ``csrf_token`` and by scripts as the ``X-CSRF-Token`` header, checked on every unsafe method.
- Authorisation is checked server-side on every route (ASVS V4): no session -> sign-in page
  (HTML) or 401 (``/api``); a missing permission -> 403, never data.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from appliance.admin.accounts import Session
from appliance.admin.rbac import Permission, Role, permissions

COOKIE = "__Host-appliance"
#: The pre-MFA cookie lives for this long (seconds): password checked, TOTP not yet.
MFA_STAGE_S = 300.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """The signed-in user of a request."""

    user_id: int
    username: str
    roles: frozenset[Role]
    session_id: str
    csrf_token: str

    @property
    def actor(self) -> str:
        """How the audit log names this user: ``"user:<id>"``."""
        return f"user:{self.user_id}"

    @property
    def permissions(self) -> frozenset[Permission]:
        """What this user's roles allow."""
        return permissions(self.roles)

    def can(self, perm: Permission) -> bool:
        """Whether any of the user's roles allows ``perm``."""
        return perm in self.permissions


class LoginRequired(Exception):
    """Raised by :func:`require` for a request without a live session (handled in web.py)."""

    def __init__(self, expired: bool) -> None:
        super().__init__("sign-in required")
        self.expired = expired


def session_token(request: Request) -> str:
    """The session cookie's value, or ``""``."""
    return request.cookies.get(COOKIE, "")


def current_session(request: Request) -> Session | None:
    """The live session of the request, if any (touching its idle timer)."""
    ctx = request.app.state.ctx
    if hasattr(request.state, "session"):
        cached: Session | None = request.state.session
        return cached
    session: Session | None
    session, expired = ctx.accounts.lookup(session_token(request))
    request.state.session = session
    request.state.session_expired = expired
    return session


async def check_csrf(request: Request, expected: str) -> None:
    """Refuse an unsafe request whose CSRF token does not match the session's.

    Raises:
        HTTPException: 403 when the token is missing or wrong.
    """
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get("x-csrf-token", "")
    if not sent:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get("csrf_token", "")
            sent = value if isinstance(value, str) else ""
    if not sent or not secrets.compare_digest(sent, expected):
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")


def require(*perms: Permission) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: a signed-in (password + TOTP) user holding every one of ``perms``.

    Usage: ``principal: Principal = Depends(require(Permission.VIEW_CALLS))``.

    Raises:
        LoginRequired: No live, fully signed-in session.
        HTTPException: 403 for a missing permission or a bad CSRF token.
    """

    async def dependency(request: Request) -> Principal:
        session = current_session(request)
        if session is None or session.stage != "full":
            raise LoginRequired(expired=bool(getattr(request.state, "session_expired", False)))
        principal = Principal(
            user_id=session.user.id,
            username=session.user.username,
            roles=session.user.roles,
            session_id=session.token_hash,
            csrf_token=session.csrf,
        )
        request.state.principal = principal
        await check_csrf(request, session.csrf)
        for perm in perms:
            if not principal.can(perm):
                raise HTTPException(status_code=403, detail="Your role does not allow this page.")
        return principal

    return dependency


class RateLimiter:
    """At most ``limit`` failed attempts per ``window_s`` per key (a client address), in memory.

    Guards the sign-in, TOTP, enrolment and invitation forms against guessing from one address,
    in front of the per-account lockout (ASVS 2.2.1). Only failures count, so colleagues behind
    one NAT address who sign in correctly never lock each other out.
    """

    def __init__(self, limit: int = 10, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(key, deque())
        while hits and now - hits[0] > self.window_s:
            hits.popleft()
        return hits

    def allow(self, key: str, now: float | None = None) -> bool:
        """Whether ``key`` may try again (fewer than ``limit`` failures in the window)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return len(self._recent(key, now)) < self.limit

    def failed(self, key: str, now: float | None = None) -> None:
        """Count one failed attempt from ``key``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent(key, now).append(now)
            if len(self._hits) > 10000:
                self._hits = {k: v for k, v in self._hits.items() if v}
