"""The built-in calendar's SQLite schema: migrations, time format and row mapping.

Times are naive ``datetime`` values in local clinic time, stored as ``YYYY-MM-DDTHH:MM:SS``
text so that SQL string comparison is time order. The schema comes from the named migrations
in :data:`MIGRATIONS`, applied by :func:`appliance.migrations.apply_migrations`; databases
written by earlier versions (whose own runner recorded ``001_calendar`` in the same
``_migrations`` table) are read as they are.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime

from appliance.agent.calendar.adapter import (
    Appointment,
    NotFound,
    Patient,
    Provider,
    SchedulingError,
    Slot,
    SlotUnavailable,
)
from appliance.migrations import apply_migrations

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
"""How times are stored (naive local clinic time, sortable as text)."""


def fmt(value: datetime) -> str:
    """Render a naive local time as stored text.

    Raises:
        ValueError: ``value`` is timezone-aware.
    """
    if value.tzinfo is not None:
        raise ValueError("calendar times are naive local clinic time; got a timezone-aware value")
    return value.strftime(TIME_FORMAT)


def parse(value: str) -> datetime:
    """Read stored text back as a naive local time.

    Raises:
        ValueError: ``value`` is not in :data:`TIME_FORMAT`.
    """
    return datetime.strptime(value, TIME_FORMAT)


def slot_id(provider_id: str, start: datetime) -> str:
    """The ID of a provider's slot starting at ``start``: ``<provider>-YYYYMMDDHHMM``."""
    return f"{provider_id}-{start:%Y%m%d%H%M}"


# --------------------------------------------------------------------------- migrations


def _m001_calendar(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE providers (id TEXT PRIMARY KEY, name TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE slots ("
        " id TEXT PRIMARY KEY,"
        " provider_id TEXT NOT NULL REFERENCES providers(id),"
        " start TEXT NOT NULL,"
        ' "end" TEXT NOT NULL,'
        " free INTEGER NOT NULL DEFAULT 1,"
        " UNIQUE (provider_id, start))"
    )
    conn.execute("CREATE INDEX slots_free_start ON slots (free, start)")
    conn.execute(
        "CREATE TABLE patients ("
        " id TEXT PRIMARY KEY,"
        " given_name TEXT NOT NULL,"
        " family_name TEXT NOT NULL,"
        " birth_date TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX patients_birth_date ON patients (birth_date)")
    conn.execute(
        "CREATE TABLE appointments ("
        " id TEXT PRIMARY KEY,"
        " patient_id TEXT NOT NULL REFERENCES patients(id),"
        " provider_id TEXT NOT NULL REFERENCES providers(id),"
        " slot_id TEXT NOT NULL REFERENCES slots(id),"
        " start TEXT NOT NULL,"
        ' "end" TEXT NOT NULL,'
        " status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled')),"
        " updated_at TEXT NOT NULL)"
    )
    # The database itself refuses a double booking, whatever the code above it does.
    conn.execute(
        "CREATE UNIQUE INDEX appointments_one_per_slot ON appointments (slot_id)"
        " WHERE status = 'booked'"
    )
    conn.execute("CREATE INDEX appointments_patient_start ON appointments (patient_id, start)")
    conn.execute(
        "CREATE TABLE idempotency ("
        " key TEXT PRIMARY KEY,"
        " operation TEXT NOT NULL,"
        " request TEXT NOT NULL,"
        " result TEXT NOT NULL,"
        " created_at TEXT NOT NULL)"
    )


def _m002_patient_details(conn: sqlite3.Connection) -> None:
    # Contact and record-number details from a roster import (appliance.admin.imports), kept
    # beside ``patients`` so that the identity check and older writers are unaffected.
    conn.execute(
        "CREATE TABLE patient_details ("
        " patient_id TEXT PRIMARY KEY REFERENCES patients(id),"
        " external_id TEXT UNIQUE,"
        " phone TEXT)"
    )


def _m003_patient_address(conn: sqlite3.Connection) -> None:
    # Where the patient lives, only as far as the calling window's time zone needs it
    # (appliance.policy.address_zone): no street line.
    for column in ("city", "region", "postal_code", "country"):
        conn.execute(f"ALTER TABLE patient_details ADD COLUMN {column} TEXT")


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("001_calendar", _m001_calendar),
    ("002_patient_details", _m002_patient_details),
    ("003_patient_address", _m003_patient_address),
]
"""The calendar's migrations in order; names are recorded in ``_migrations``."""


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the pending :data:`MIGRATIONS`, each in its own transaction.

    Args:
        conn: A connection in autocommit mode (``isolation_level=None``).

    Returns:
        The names applied now (``[]`` for an up-to-date database).

    Raises:
        sqlite3.Error: A migration failed (it is rolled back).
    """
    return apply_migrations(conn, MIGRATIONS, conn)


# --------------------------------------------------------------------------- rows


def slot_row(row: sqlite3.Row) -> Slot:
    """A :class:`Slot` from a ``slots`` row."""
    return Slot(
        id=row["id"],
        provider_id=row["provider_id"],
        start=parse(row["start"]),
        end=parse(row["end"]),
        free=bool(row["free"]),
    )


def appointment_row(row: sqlite3.Row) -> Appointment:
    """An :class:`Appointment` from an ``appointments`` row."""
    return Appointment(
        id=row["id"],
        patient_id=row["patient_id"],
        provider_id=row["provider_id"],
        slot_id=row["slot_id"],
        start=parse(row["start"]),
        end=parse(row["end"]),
        status=row["status"],
    )


def patient_row(row: sqlite3.Row) -> Patient:
    """A :class:`Patient` from a ``patients`` row."""
    return Patient(
        id=row["id"],
        given_name=row["given_name"],
        family_name=row["family_name"],
        birth_date=date.fromisoformat(row["birth_date"]),
    )


def appointment_json(appt: Appointment) -> str:
    """An appointment as the JSON text kept with its idempotency key."""
    data = asdict(appt)
    data["start"] = fmt(appt.start)
    data["end"] = fmt(appt.end)
    return json.dumps(data, sort_keys=True)


def appointment_from_json(text: str) -> Appointment:
    """The appointment kept as JSON text by :func:`appointment_json`."""
    data = json.loads(text)
    data["start"] = parse(data["start"])
    data["end"] = parse(data["end"])
    return Appointment(**data)


# --------------------------------------------------------------------------- lookups and writes
# Each runs on a connection inside the caller's transaction.


def _require_row(conn: sqlite3.Connection, table: str, noun: str, row_id: str) -> sqlite3.Row:
    """The row of ``table`` (one of the schema's, never caller input) with this ID.

    Raises:
        NotFound: No such row; the message names the ``noun`` and the ID only.
    """
    row: sqlite3.Row | None = conn.execute(
        f"SELECT * FROM {table} WHERE id = ?", [row_id]
    ).fetchone()
    if row is None:
        raise NotFound(f"no {noun} {row_id}")
    return row


def require_provider(conn: sqlite3.Connection, provider_id: str) -> Provider:
    """The provider with this ID.

    Raises:
        NotFound: Unknown provider.
    """
    row = _require_row(conn, "providers", "provider", provider_id)
    return Provider(row["id"], row["name"])


def require_patient(conn: sqlite3.Connection, patient_id: str) -> Patient:
    """The patient with this ID.

    Raises:
        NotFound: Unknown patient.
    """
    return patient_row(_require_row(conn, "patients", "patient", patient_id))


def require_slot(conn: sqlite3.Connection, slot_id: str) -> Slot:
    """The slot with this ID.

    Raises:
        NotFound: Unknown slot.
    """
    return slot_row(_require_row(conn, "slots", "slot", slot_id))


def require_appointment(conn: sqlite3.Connection, appointment_id: str) -> Appointment:
    """The appointment with this ID (booked or cancelled).

    Raises:
        NotFound: Unknown appointment.
    """
    return appointment_row(_require_row(conn, "appointments", "appointment", appointment_id))


def take_slot(conn: sqlite3.Connection, slot_id: str) -> Slot:
    """Mark a free slot taken; return it as it was (``free`` true).

    Raises:
        NotFound: Unknown slot.
        SlotUnavailable: The slot is already taken.
    """
    slot = require_slot(conn, slot_id)
    if not slot.free:
        raise SlotUnavailable(f"slot {slot_id} is already taken")
    conn.execute("UPDATE slots SET free = 0 WHERE id = ?", [slot_id])
    return slot


def release_slot(conn: sqlite3.Connection, slot_id: str) -> None:
    """Mark a slot free again (an unknown ID changes nothing)."""
    conn.execute("UPDATE slots SET free = 1 WHERE id = ?", [slot_id])


def replay(
    conn: sqlite3.Connection, key: str, operation: str, request: dict[str, str]
) -> Appointment | None:
    """The result stored with an idempotency key, or ``None`` for a key not used yet.

    Args:
        conn: Connection inside the mutating call's transaction.
        key: The idempotency key.
        operation: ``"book"``, ``"reschedule"`` or ``"cancel"``.
        request: The call's IDs, compared with those stored with the key.

    Raises:
        SchedulingError: ``"idempotency_key_missing"`` for an empty key;
            ``"idempotency_conflict"`` when the key was used for another operation or request.
    """
    if not key:
        raise SchedulingError("idempotency_key_missing", "an idempotency key is required")
    row = conn.execute(
        "SELECT operation, request, result FROM idempotency WHERE key = ?", [key]
    ).fetchone()
    if row is None:
        return None
    if row["operation"] != operation or json.loads(row["request"]) != request:
        raise SchedulingError(
            "idempotency_conflict", "idempotency key already used for a different request"
        )
    return appointment_from_json(row["result"])


def remember(
    conn: sqlite3.Connection,
    key: str,
    operation: str,
    request: dict[str, str],
    result: Appointment,
) -> None:
    """Store a mutating call's key, request and result in the same transaction as its change."""
    conn.execute(
        "INSERT INTO idempotency VALUES (?, ?, ?, ?, datetime('now'))",
        [key, operation, json.dumps(request, sort_keys=True), appointment_json(result)],
    )
