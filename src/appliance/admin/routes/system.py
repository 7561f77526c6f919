"""System: versions and update history, model digests, audit verification, disk, stage health.

The agent's live state (version, uptime, each stage's health, the loaded models' digests, the
audit log's size) comes from the control op ``status``; with the agent down the page says so
and shows the rest, which the admin process reads itself (:mod:`appliance.admin.system_info`):
the update history from the audit log's ``ServiceStarted`` records, the store's manifest
digests, the last signed checkpoint and disk use.

Verifying the audit log (``verify_audit``) runs :func:`appliance.audit.service.verify_from_settings`
(the public key only, no KEK) in a worker thread, one run at a time, and is itself audited
(``AdminAuditVerified``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from appliance.admin.auth import Principal, require
from appliance.admin.rbac import Permission
from appliance.admin.system_info import (
    Unreadable,
    disk_use,
    last_checkpoint,
    model_digests,
    update_history,
)
from appliance.admin.web import AdminContext, get_ctx, render
from appliance.audit.service import verify_from_settings
from appliance.control import ControlError

_LOGGER = logging.getLogger(__name__)
router = APIRouter()

VIEW = require(Permission.VIEW_SYSTEM)
VERIFY = require(Permission.VIEW_SYSTEM, Permission.VERIFY_AUDIT)

#: One verification at a time per process (it reads the whole log).
_VERIFY_LOCK = threading.Lock()
#: Seconds the page waits for the agent's ``status``.
STATUS_TIMEOUT_S = 3.0


def duration(seconds: float) -> str:
    """``3d 4h 5m`` / ``4h 5m`` / ``5m 6s`` for an uptime in s."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s}s"


def size(n: int | None) -> str:
    """Bytes as ``12.3 MB`` (SI units); ``-`` for ``None``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def _status(ctx: AdminContext, actor: str) -> tuple[dict[str, Any] | None, str]:
    try:
        result = ctx.control.call("status", {}, actor, timeout=STATUS_TIMEOUT_S)
    except ControlError as exc:
        if exc.code == "unavailable":
            return None, "The agent is not reachable: it is stopped, starting or restarting."
        return None, f"The agent did not answer its status ({exc.code})."
    if not isinstance(result, dict):
        return None, "The agent's status answer was not understood."
    return result, ""


def _safe(what: str, fn: Any, *args: Any) -> tuple[Any, str]:
    try:
        return fn(*args), ""
    except Unreadable as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one panel fails, the page still shows the rest
        _LOGGER.warning("system page: %s failed: %s", what, type(exc).__name__)
        return None, f"{what} could not be read ({type(exc).__name__})."


def gather(ctx: AdminContext, actor: str) -> dict[str, Any]:
    """Everything the page shows (blocking: the control socket and file reads)."""
    settings = ctx.settings
    status, status_error = _status(ctx, actor)
    history, history_error = _safe("The update history", update_history, settings.audit.db)
    checkpoint, checkpoint_error = _safe("The checkpoint", last_checkpoint, settings.audit)
    disk, disk_error = _safe("Disk use", disk_use, settings)
    agent_models = status.get("models") if status else None
    manifest, models_error = (None, "")
    if not agent_models:
        manifest, models_error = _safe("The model manifest", model_digests, settings)
    return {
        "status": status,
        "status_error": status_error,
        "uptime": duration(float(status.get("uptime_s") or 0)) if status else "",
        "stages": sorted((status or {}).get("stages", {}).items()),
        "agent_audit": (status or {}).get("audit"),
        "agent_models": agent_models or [],
        "manifest": manifest or [],
        "models_error": models_error,
        "history": history or [],
        "history_error": history_error,
        "checkpoint": checkpoint,
        "checkpoint_error": checkpoint_error,
        "disk": disk,
        "disk_error": disk_error,
        "audit_enabled": settings.audit.enabled,
    }


def run_verify(ctx: AdminContext, actor: str) -> dict[str, Any]:
    """Verify the audit log (public key only) and audit that it was done.

    Returns:
        ``{"ok", "summary", "size", "checkpoints", "first_bad_index", "at", "running"}``;
        ``running`` is true (and nothing was verified) when another run is under way.
    """
    if not _VERIFY_LOCK.acquire(blocking=False):
        return {"ok": None, "running": True, "summary": "A verification is already running."}
    try:
        started = time.time()
        try:
            report = verify_from_settings(ctx.settings.audit)
            ok, summary = report.ok, report.summary()
            size_, checkpoints, bad = report.size, report.checkpoints, report.first_bad_index
        except Exception as exc:  # noqa: BLE001 - reported as a failed verification
            _LOGGER.warning("audit verification failed to run: %s", type(exc).__name__)
            ok, summary = False, f"FAILED: the verification could not run ({type(exc).__name__})"
            size_, checkpoints, bad = 0, 0, None
        ctx.audit.record(
            "AdminAuditVerified",
            actor,
            ok=ok,
            size=size_,
            checkpoints=checkpoints,
            first_bad_index=bad,
        )
        return {
            "ok": ok,
            "running": False,
            "summary": summary,
            "size": size_,
            "checkpoints": checkpoints,
            "first_bad_index": bad,
            "at": started,
            "seconds": round(time.time() - started, 3),
        }
    finally:
        _VERIFY_LOCK.release()


async def _page(
    request: Request, principal: Principal, verify: dict[str, Any] | None
) -> HTMLResponse:
    data = await asyncio.to_thread(gather, get_ctx(request), principal.actor)
    last = verify or getattr(request.app.state, "system_last_verify", None)
    return render(
        request,
        "system/index.html",
        can_verify=principal.can(Permission.VERIFY_AUDIT),
        verify=last,
        size=size,
        **data,
    )


@router.get("/system", response_class=HTMLResponse)
async def system_page(request: Request, principal: Principal = Depends(VIEW)) -> HTMLResponse:
    """Versions, update history, models, audit, disk and stage health."""
    return await _page(request, principal, None)


@router.post("/system/verify", response_class=HTMLResponse)
async def system_verify(request: Request, principal: Principal = Depends(VERIFY)) -> HTMLResponse:
    """Verify the audit log now and show the result on the page."""
    result = await asyncio.to_thread(run_verify, get_ctx(request), principal.actor)
    if not result.get("running"):
        request.app.state.system_last_verify = result
    return await _page(request, principal, result)


@router.get("/api/system")
async def api_system(request: Request, principal: Principal = Depends(VIEW)) -> dict[str, Any]:
    """The system page's data as JSON (times in s since the epoch, sizes in bytes)."""
    data = await asyncio.to_thread(gather, get_ctx(request), principal.actor)
    disk = data["disk"]
    checkpoint = data["checkpoint"]
    return {
        "agent": data["status"],
        "agent_error": data["status_error"] or None,
        "update_history": [asdict(s) for s in data["history"]],
        "update_history_error": data["history_error"] or None,
        "models": data["agent_models"] or [asdict(m) for m in data["manifest"]],
        "checkpoint": asdict(checkpoint) if checkpoint is not None else None,
        "checkpoint_error": data["checkpoint_error"] or None,
        "disk": None
        if disk is None
        else {
            "directory": str(disk.directory),
            "total": disk.total,
            "used": disk.used,
            "free": disk.free,
            "files": [{"label": lb, "path": str(p), "bytes": b} for lb, p, b in disk.files],
        },
        "last_verification": getattr(request.app.state, "system_last_verify", None),
    }


@router.post("/api/system/verify")
async def api_system_verify(
    request: Request, principal: Principal = Depends(VERIFY)
) -> dict[str, Any]:
    """Verify the audit log now: ``{"ok", "summary", "size", "checkpoints", ...}``.

    Raises:
        HTTPException: 409 when a verification is already running.
    """
    result = await asyncio.to_thread(run_verify, get_ctx(request), principal.actor)
    if result.get("running"):
        raise HTTPException(status_code=409, detail=result["summary"])
    request.app.state.system_last_verify = result
    return result
