"""The admin page's ASGI app (FastAPI + Jinja2), its security headers and error pages.

Every response carries a strict Content-Security-Policy (no inline script or style, nothing
from another origin: the box is air-gapped), HSTS, ``frame-ancestors 'none'``, ``nosniff``,
``no-referrer`` and ``Cache-Control: no-store`` (pages may hold PHI). Routes live in
:mod:`appliance.admin.routes`, one module per feature.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from appliance.admin.accounts import Accounts
from appliance.admin.audit_outbox import AdminAudit
from appliance.admin.auth import LoginRequired, RateLimiter, current_session
from appliance.admin.db import connect
from appliance.admin.quality import migrate as quality_migrate
from appliance.admin.rbac import Permission
from appliance.config.settings import ApplianceSettings
from appliance.control import ControlClient

_LOGGER = logging.getLogger(__name__)
HERE = Path(__file__).parent

#: Feature route modules under :mod:`appliance.admin.routes`, in navigation order.
ROUTE_MODULES = (
    "auth",
    "dashboard",
    "calls",
    "quality",
    "workflows",
    "campaigns",
    "kb",
    "schedule",
    "testcall",
    "settings",
    "system",
    "users",
    "telemetry",
)

#: The navigation bar: (path, label, permission needed to see the link).
NAV: tuple[tuple[str, str, Permission], ...] = (
    ("/", "Dashboard", Permission.VIEW_DASHBOARD),
    ("/calls", "Calls", Permission.VIEW_CALLS),
    ("/quality", "Quality", Permission.REVIEW_QUALITY),
    ("/workflows", "Workflows", Permission.VIEW_WORKFLOWS),
    ("/campaigns", "Campaigns", Permission.VIEW_CAMPAIGNS),
    ("/kb", "Knowledge base", Permission.EDIT_KB),
    ("/schedule", "Scheduling", Permission.IMPORT_SCHEDULE),
    ("/testcall", "Talk to the agent", Permission.TEST_CALL),
    # The platform engineer holds both; the contact-centre lead edits the transfer part only.
    ("/settings", "Settings", Permission.MANAGE_TRANSFER),
    ("/system", "System", Permission.VIEW_SYSTEM),
    ("/users", "Users", Permission.MANAGE_USERS),
)

#: Largest request body, bytes: a roster upload (5 MiB) with its multipart framing.
MAX_BODY = 6 * 1024 * 1024

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=(), payment=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass
class AdminContext:
    """What every route reaches through ``request.app.state.ctx``.

    Attributes:
        settings: The settings the admin process was started with.
        settings_path: The settings file (``None``: defaults only; changes cannot be written).
        db_path: ``admin.sqlite``.
        db: A shared connection to it (WAL; write with ``BEGIN IMMEDIATE`` when multi-step).
        control: The agent's control socket.
        accounts: Users, sessions, TOTP.
        audit: Admin records on their way to the audit log.
        login_limiter: Sign-in attempts per client address.
    """

    settings: ApplianceSettings
    settings_path: Path | None
    db_path: Path
    db: sqlite3.Connection
    control: ControlClient
    accounts: Accounts
    audit: AdminAudit
    login_limiter: RateLimiter = field(default_factory=RateLimiter)
    started_at: float = field(default_factory=time.time)
    background: list[Callable[[AdminContext], Any]] = field(default_factory=list)


def get_ctx(request: Request) -> AdminContext:
    """The app's :class:`AdminContext`."""
    return request.app.state.ctx  # type: ignore[no-any-return]


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.autoescape = True


def _fmt_time(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


templates.env.filters["time"] = _fmt_time


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render a page with the signed-in user, their CSRF token and their navigation."""
    principal = getattr(request.state, "principal", None)
    csrf = principal.csrf_token if principal is not None else ""
    if not csrf:
        session = current_session(request)
        csrf = session.csrf if session is not None else ""
    nav = [
        (path, label) for path, label, perm in NAV if principal is not None and principal.can(perm)
    ]
    return templates.TemplateResponse(
        request,
        template,
        {"principal": principal, "csrf_token": csrf, "nav": nav, "path": request.url.path}
        | context,
        status_code=status_code,
    )


def create_app(
    settings: ApplianceSettings,
    *,
    settings_path: Path | None = None,
    control: ControlClient | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the admin app.

    Args:
        settings: Loaded settings (``[admin]`` says where the database and socket are).
        settings_path: The settings file, so the settings pages can write drop-ins.
        control: The agent's control socket client (default: ``[admin] control_socket``).
        clock: Time source for sessions and lockouts (tests move it).

    Raises:
        sqlite3.Error: ``admin.sqlite`` is not a database.
    """
    a = settings.admin
    db = connect(a.db)
    control = control or ControlClient(a.control_socket)
    accounts = Accounts(
        db,
        a.db.with_suffix(".key"),
        lockout_failures=a.lockout_failures,
        lockout_s=a.lockout_minutes * 60,
        idle_s=a.session_idle_minutes * 60,
        absolute_s=a.session_absolute_hours * 3600,
        clock=clock,
    )
    ctx = AdminContext(
        settings=settings,
        settings_path=settings_path,
        db_path=a.db,
        db=db,
        control=control,
        accounts=accounts,
        audit=AdminAudit(db, control),
    )
    # The quality review's tables, made here once per database (not per first request: a
    # module-level "migrated" set keyed by id() of a connection mistook a new connection at a
    # reused address for a migrated one).
    quality_migrate(db)

    from appliance.admin.alerts import alert_loop

    ctx.background.append(alert_loop)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_flush_loop(ctx))]
        tasks += [asyncio.create_task(job(ctx)) for job in ctx.background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.to_thread(ctx.audit.flush)

    app = FastAPI(
        title="Clinic voice appliance admin",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.ctx = ctx
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response
        # Bodies are bounded before anything parses them (a multipart upload is spooled to disk
        # by the form parser before any route runs).
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            response = JSONResponse({"detail": "request body too large or malformed"}, 413)
            response.headers.update(SECURITY_HEADERS)
            return response
        # Defence in depth beside the CSRF token: an unsafe request that names another origin
        # is refused before any route runs (OWASP CSRF cheat sheet, "verifying origin").
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin not in (None, "null"):
            host = request.headers.get("host", "")
            if origin.split("://", 1)[-1] != host:
                response = JSONResponse({"detail": "cross-origin request"}, 403)
                for name, value in SECURITY_HEADERS.items():
                    response.headers[name] = value
                return response
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if request.url.path.startswith("/api/") or request.method not in ("GET", "HEAD"):
            return JSONResponse({"detail": "sign-in required"}, status_code=401)
        target = "/login?expired=1" if exc.expired else "/login"
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or exc.status_code < 400:
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return render(
            request,
            "error.html",
            status_code=exc.status_code,
            code=exc.status_code,
            detail=exc.detail,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": errors}, status_code=422)
        detail = "; ".join(f"{'.'.join(e['loc'][1:])}: {e['msg']}" for e in errors)
        return render(request, "error.html", status_code=422, code=422, detail=detail)

    for name in ROUTE_MODULES:
        module = importlib.import_module(f"appliance.admin.routes.{name}")
        app.include_router(module.router)
    return app


async def _flush_loop(ctx: AdminContext, interval_s: float = 5.0) -> None:
    while True:
        try:
            await asyncio.to_thread(ctx.audit.flush)
        except Exception as exc:  # noqa: BLE001 - retried at the next tick
            _LOGGER.error("admin audit flush failed: %s", type(exc).__name__)
        await asyncio.sleep(interval_s)
