"""Import the patient roster and the schedule into the built-in calendar.

Three formats (:data:`~.imports_model.FORMATS`), detected from the file or chosen:

* ``roster_csv``: patients (:mod:`.imports_csv`);
* ``schedule_csv``: provider slots, optionally booked for a patient (:mod:`.imports_csv`);
* ``fhir_json``: an HL7 FHIR R4 Bundle of Patient, Practitioner, Schedule, Slot and
  Appointment resources (:mod:`.imports_fhir`).

:func:`run_import` parses and checks the file, then applies the accepted rows in one
transaction (:mod:`.imports_apply`), or, with ``dry_run``, runs the same checks and writes
and rolls them back (a preview: upload, read the report, confirm). The result is an
:class:`~.imports_model.ImportReport`, row by row. It carries names for the person who
uploaded the file; what goes to logs and audit records is :func:`audit_counts` only.

The calendar file is the agent's (``[scheduling] db``); it is opened in WAL mode, so the
agent keeps reading while an import runs, and every write waits for SQLite's write lock.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from appliance.admin.imports_apply import apply_records
from appliance.admin.imports_csv import (
    csv_kind,
    decode,
    parse_roster,
    parse_schedule,
    sniff_columns,
)
from appliance.admin.imports_fhir import parse_bundle
from appliance.admin.imports_model import (
    FORMATS,
    MAX_BYTES,
    MAX_ROWS,
    ImportFileError,
    ImportReport,
    Parsed,
    RowResult,
)
from appliance.agent.calendar import SqliteCalendar

__all__ = [
    "FORMATS",
    "MAX_BYTES",
    "MAX_ROWS",
    "ImportFileError",
    "ImportReport",
    "RowResult",
    "audit_counts",
    "detect_format",
    "import_into",
    "run_import",
]


def detect_format(text: str, filename: str = "") -> str:
    """The format of a decoded upload: JSON (by content or ``.json``) or a CSV by its header.

    Raises:
        ImportFileError: ``"unknown_format"``: neither a JSON object nor a CSV with the
            required columns of a roster or schedule.
    """
    head = text.lstrip()[:1]
    if head in ("{", "[") or filename.lower().endswith(".json"):
        return "fhir_json"
    try:
        _, columns = sniff_columns(text)
    except ImportFileError as exc:
        raise ImportFileError("unknown_format", exc.message) from exc
    kind = csv_kind(columns)
    if kind is None:
        raise ImportFileError(
            "unknown_format",
            "a roster needs given_name, family_name and birth_date columns; "
            "a schedule needs provider, start and minutes",
        )
    return kind


def parse(
    data: bytes, fmt: str, *, filename: str, now: datetime
) -> tuple[str, list[Parsed], list[str]]:
    """Decode and parse an upload: its format, records and notes.

    Raises:
        ImportFileError: The file as a whole is unusable, or ``fmt`` is unknown.
    """
    if fmt not in (*FORMATS, "auto"):
        raise ImportFileError(
            "unknown_format", f"format must be auto or one of {', '.join(FORMATS)}"
        )
    text, notes = decode(data)
    if not text.strip():
        raise ImportFileError("bad_header", "the file is empty")
    if fmt == "auto":
        fmt = detect_format(text, filename)
    today = now.date()
    if fmt == "roster_csv":
        items = parse_roster(text, today, notes)
    elif fmt == "schedule_csv":
        items = parse_schedule(text, today, notes)
    else:
        items = parse_bundle(text, today)
    return fmt, items, notes


def import_into(
    calendar: SqliteCalendar,
    data: bytes,
    *,
    fmt: str = "auto",
    filename: str = "",
    dry_run: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Import an uploaded file into an open calendar.

    Args:
        calendar: The calendar to write.
        data: The file's bytes (at most :data:`MAX_BYTES`).
        fmt: ``"auto"`` or one of :data:`FORMATS`.
        filename: The uploaded name (only its ``.json`` ending is used, to detect FHIR).
        dry_run: Check and report without writing.
        now: Naive local clinic time (default: the system's local time now); slots before
            it are skipped, dates of birth after its date rejected.

    Returns:
        The report, row by row.

    Raises:
        ImportFileError: The file as a whole cannot be imported; nothing was written.
        SchedulingError: The calendar database failed or stayed locked; nothing was written.
    """
    now = now or datetime.now().replace(microsecond=0)
    fmt, items, notes = parse(data, fmt, filename=filename, now=now)
    rows = apply_records(calendar, items, now=now, dry_run=dry_run)
    return ImportReport(format=fmt, dry_run=dry_run, rows=rows, notes=notes)


def run_import(
    db: Path,
    data: bytes,
    *,
    fmt: str = "auto",
    filename: str = "",
    dry_run: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Open the calendar file ``db`` (created and migrated when new) and import into it.

    See :func:`import_into` for the arguments and errors. The file is parsed before the
    calendar is opened, so an unusable file never touches the database.
    """
    now = now or datetime.now().replace(microsecond=0)
    fmt_found, items, notes = parse(data, fmt, filename=filename, now=now)
    with SqliteCalendar(db) as calendar:
        rows = apply_records(calendar, items, now=now, dry_run=dry_run)
    return ImportReport(format=fmt_found, dry_run=dry_run, rows=rows, notes=notes)


def audit_counts(report: ImportReport) -> dict[str, object]:
    """What an import may put in logs and audit records: counts only, never names.

    Returns:
        ``{"format", "dry_run", "imported", "unchanged", "rejected", "skipped", "rows"}``.
    """
    totals = report.totals()
    return {
        "format": report.format,
        "dry_run": report.dry_run,
        **totals,
        "rows": len({r.row for r in report.rows}),
    }
