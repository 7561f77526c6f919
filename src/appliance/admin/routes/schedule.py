"""Scheduling: import the patient roster and the schedule (CSV, HL7 FHIR R4 Bundle).

Only :attr:`~appliance.admin.rbac.Permission.IMPORT_SCHEDULE` reaches it. The page's flow is
upload, preview, confirm: a preview runs every check and write of the import and rolls them
back (:func:`appliance.admin.imports.run_import` with ``dry_run``), shows the report row by
row, and keeps the uploaded bytes in this process's memory for :data:`PENDING_TTL_S` seconds,
tied to the session, so that "Import" writes exactly what was previewed without a second
upload. "Import now" skips the preview.

``POST /api/schedule/import`` does the same for scripts: a multipart ``file``, ``format`` and
``dry_run``; the answer is the report as JSON. A file that cannot be imported as a whole gets
400 (413 when too large) with its ``code``; a busy calendar database gets 503.

The report shows names to the person who uploaded them; the audit record
(``AdminScheduleImported``) and the log line carry counts only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response

from appliance.admin.auth import Principal, require
from appliance.admin.imports import (
    MAX_BYTES,
    MAX_ROWS,
    ImportFileError,
    ImportReport,
    audit_counts,
    run_import,
)
from appliance.admin.rbac import Permission
from appliance.admin.web import get_ctx, render
from appliance.agent.calendar import SchedulingError, SqliteCalendar

log = logging.getLogger(__name__)
router = APIRouter()

PENDING_TTL_S = 15 * 60
"""How long a previewed upload waits for its confirmation, seconds."""

MAX_PENDING = 8
"""Most previewed uploads kept at once (the oldest is dropped first)."""

FORMAT_LABELS = {
    "auto": "Detect from the file",
    "roster_csv": "Patient roster (CSV)",
    "schedule_csv": "Schedule (CSV)",
    "fhir_json": "HL7 FHIR R4 Bundle (JSON)",
}
FormatChoice = Literal["auto", "roster_csv", "schedule_csv", "fhir_json"]


@dataclass(frozen=True)
class _Pending:
    session_id: str
    created: float
    filename: str
    fmt: str
    data: bytes


_pending: dict[str, _Pending] = {}


def _keep(session_id: str, filename: str, fmt: str, data: bytes) -> str:
    """Hold a previewed upload for its confirmation; return its one-time token."""
    now = time.monotonic()
    for token, held in list(_pending.items()):
        if now - held.created > PENDING_TTL_S:
            del _pending[token]
    while len(_pending) >= MAX_PENDING:
        del _pending[min(_pending, key=lambda t: _pending[t].created)]
    token = secrets.token_urlsafe(24)
    _pending[token] = _Pending(session_id, now, filename, fmt, data)
    return token


def _take(session_id: str, token: str) -> _Pending | None:
    """The upload previewed under ``token`` by this session (removed), if still held."""
    held = _pending.get(token)
    if held is None or held.session_id != session_id:
        return None
    del _pending[token]
    if time.monotonic() - held.created > PENDING_TTL_S:
        return None
    return held


IMPORT = require(Permission.IMPORT_SCHEDULE)


async def _read(upload: UploadFile) -> bytes:
    data = await upload.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ImportFileError(
            "too_large", f"the file is larger than {MAX_BYTES // (1024 * 1024)} MB"
        )
    return data


async def _import(
    request: Request,
    principal: Principal,
    data: bytes,
    *,
    filename: str,
    fmt: str,
    dry_run: bool,
) -> ImportReport:
    """Run the import off the event loop; audit and log a real one (counts only).

    Raises:
        ImportFileError: The file cannot be imported as a whole.
        SchedulingError: The calendar database failed or stayed locked.
    """
    ctx = get_ctx(request)
    report = await asyncio.to_thread(
        run_import,
        ctx.settings.scheduling.db,
        data,
        fmt=fmt,
        filename=filename,
        dry_run=dry_run,
    )
    counts = audit_counts(report)
    log.info(
        "schedule import (%s, dry run %s): %s imported, %s unchanged, %s rejected, %s skipped",
        counts["format"],
        dry_run,
        counts["imported"],
        counts["unchanged"],
        counts["rejected"],
        counts["skipped"],
    )
    if not dry_run:
        ctx.audit.record(
            "AdminScheduleImported",
            principal.actor,
            format=report.format,
            imported=report.totals()["imported"],
            unchanged=report.totals()["unchanged"],
            rejected=report.totals()["rejected"],
            skipped=report.totals()["skipped"],
        )
    return report


def _summary(request: Request) -> dict[str, int] | None:
    """Counts of what the calendar holds now (none when it cannot be read)."""
    try:
        with SqliteCalendar(get_ctx(request).settings.scheduling.db) as cal:
            with cal.transaction() as conn:
                one = conn.execute(
                    "SELECT (SELECT count(*) FROM patients),"
                    " (SELECT count(*) FROM providers),"
                    " (SELECT count(*) FROM slots WHERE free = 1 AND start >= ?),"
                    " (SELECT count(*) FROM appointments WHERE status = 'booked' AND start >= ?)",
                    [time.strftime("%Y-%m-%dT%H:%M:%S")] * 2,
                ).fetchone()
    except SchedulingError:
        return None
    return dict(zip(("patients", "providers", "free_slots", "booked"), one, strict=True))


def _page(
    request: Request,
    *,
    status: int = 200,
    report: ImportReport | None = None,
    token: str = "",
    filename: str = "",
    error: str = "",
) -> Response:
    return render(
        request,
        "schedule/index.html",
        status_code=status,
        summary=_summary(request),
        formats=FORMAT_LABELS,
        report=report,
        totals=report.totals() if report else {},
        token=token,
        filename=filename,
        error_message=error,
        max_mb=MAX_BYTES // (1024 * 1024),
        max_rows=MAX_ROWS,
    )


@router.get("/schedule", response_class=HTMLResponse)
async def schedule_page(request: Request, principal: Principal = Depends(IMPORT)) -> Response:
    return _page(request)


@router.post("/schedule", response_class=HTMLResponse)
async def schedule_upload(
    request: Request,
    principal: Principal = Depends(IMPORT),
    file: UploadFile = File(...),
    format: FormatChoice = Form("auto"),  # noqa: A002 - the form field's name
    action: Literal["preview", "import"] = Form("preview"),
) -> Response:
    filename = (file.filename or "")[:200]
    dry_run = action == "preview"
    try:
        data = await _read(file)
        report = await _import(
            request, principal, data, filename=filename, fmt=format, dry_run=dry_run
        )
    except ImportFileError as exc:
        status = 413 if exc.code == "too_large" else 400
        return _page(request, status=status, error=exc.message, filename=filename)
    except SchedulingError:
        return _page(request, status=503, error="The calendar is busy or unavailable; try again.")
    token = _keep(principal.session_id, filename, report.format, data) if dry_run else ""
    return _page(request, report=report, token=token, filename=filename)


@router.post("/schedule/confirm", response_class=HTMLResponse)
async def schedule_confirm(
    request: Request,
    principal: Principal = Depends(IMPORT),
    token: str = Form(""),
) -> Response:
    held = _take(principal.session_id, token[:64])
    if held is None:
        return _page(
            request,
            status=409,
            error="That preview has expired or was already imported; upload the file again.",
        )
    try:
        report = await _import(
            request, principal, held.data, filename=held.filename, fmt=held.fmt, dry_run=False
        )
    except (ImportFileError, SchedulingError):
        _pending[token[:64]] = held  # still there to retry
        return _page(request, status=503, error="The calendar is busy or unavailable; try again.")
    return _page(request, report=report, filename=held.filename)


@router.post("/api/schedule/import")
async def api_import(
    request: Request,
    principal: Principal = Depends(IMPORT),
    file: UploadFile = File(...),
    format: FormatChoice = Form("auto"),  # noqa: A002 - the form field's name
    dry_run: bool = Form(False),
) -> JSONResponse:
    """Import a roster or schedule file; the report row by row.

    Answers 200 with ``{format, dry_run, totals, notes, rows: [{row, kind, status, reason,
    label}]}``; 400 ``{detail, code}`` for a file that cannot be imported as a whole, 413 for
    one over the size limit, 503 when the calendar database is busy.
    """
    try:
        data = await _read(file)
        report = await _import(
            request,
            principal,
            data,
            filename=(file.filename or "")[:200],
            fmt=format,
            dry_run=dry_run,
        )
    except ImportFileError as exc:
        status = 413 if exc.code == "too_large" else 400
        return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=status)
    except SchedulingError:
        return JSONResponse(
            {"detail": "the calendar is busy or unavailable", "code": "calendar_unavailable"},
            status_code=503,
        )
    return JSONResponse(report.to_dict())
