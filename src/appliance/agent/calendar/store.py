"""The built-in calendar: :class:`SqliteCalendar`, one SQLite file behind the adapter interface.

For clinics without a practice-management system to integrate with. It implements
:class:`~appliance.agent.calendar.adapter.SchedulingAdapter` plus administration (providers,
patients, slots) and lookups by ID.

* **Identity** (:meth:`SqliteCalendar.find_patient`): given name, family name and date of birth
  together; the date must match exactly, the names as :func:`.matching.match_patient` allows.
* **Idempotency**: every mutating call takes an idempotency key
  (:func:`~appliance.agent.calendar.adapter.idempotency_key`). The key and the resulting
  appointment are stored in the same transaction as the change, so a replayed call (a retried
  tool call, a repeated turn) returns the original result and changes nothing.

Storage is stdlib ``sqlite3`` rather than sqlite-utils: bookings need explicit
``BEGIN IMMEDIATE`` transactions (the slot check and the write under one lock), which the
raw connection gives directly. The schema comes from named migrations (:mod:`.schema`), the
journal is WAL, and there is one writer: one connection per :class:`SqliteCalendar`,
serialised by a lock. IDs are opaque; error messages carry IDs only, never names or dates of
birth.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

from appliance.agent.calendar.adapter import (
    BOOKED,
    CANCELLED,
    Appointment,
    Patient,
    Provider,
    SchedulingError,
    Slot,
)
from appliance.agent.calendar.matching import match_patient, normalise_name
from appliance.agent.calendar.schema import (
    appointment_row,
    fmt,
    migrate,
    patient_row,
    release_slot,
    remember,
    replay,
    require_appointment,
    require_patient,
    require_provider,
    require_slot,
    slot_id,
    slot_row,
    take_slot,
)
from appliance.errors import ErrorCategory


def _booked_in(appointment_id: str, patient_id: str, slot: Slot) -> Appointment:
    """The booked appointment ``appointment_id`` of ``patient_id`` holding ``slot``."""
    return Appointment(
        id=appointment_id,
        patient_id=patient_id,
        provider_id=slot.provider_id,
        slot_id=slot.id,
        start=slot.start,
        end=slot.end,
        status=BOOKED,
    )


#: The calendar holds names and dates of birth: never world-readable. The admin page (group
#: ``appliance``, its own user) writes it for roster and schedule imports, so the group may write
#: it; SQLite gives the ``-wal`` and ``-shm`` files the database file's permissions.
CALENDAR_MODE = 0o660


def _share_with_group(path: Path) -> None:
    """Create the database file (and fix its companions) with :data:`CALENDAR_MODE`.

    The process umask (0027 for the agent) would otherwise leave it group-read-only. Files owned
    by another user are left as they are.
    """
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, CALENDAR_MODE)
        os.close(fd)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            st = file.stat()
            if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != CALENDAR_MODE:
                os.chmod(file, CALENDAR_MODE)
        except OSError:
            continue


class SqliteCalendar:
    """The built-in calendar: one SQLite file, WAL journal, one serialised connection.

    Safe to share between threads (calls are serialised by a lock); several processes may
    open the same file, as every change runs in a ``BEGIN IMMEDIATE`` transaction.

    Args:
        path: SQLite file (created with its directory, then migrated).

    Raises:
        SchedulingError: The database cannot be opened or migrated (code
            ``"calendar_unavailable"``, transient).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _share_with_group(path)
        self.path = path
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=5.0
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise SchedulingError(
                "calendar_unavailable",
                f"cannot open calendar database: {exc}",
                ErrorCategory.TRANSIENT,
            ) from exc
        self._conn = conn

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteCalendar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise SchedulingError("calendar_closed", "the calendar has been closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise SchedulingError(
                    "calendar_unavailable", f"calendar query failed: {exc}", ErrorCategory.TRANSIENT
                ) from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.

        Every change of the methods below runs in one; bulk loads (the demo seed,
        :func:`~appliance.agent.calendar.demo.seed_demo`) use it directly. Raw SQL skips the
        methods' checks; the schema still refuses a double booking.

        Yields:
            The connection, inside the transaction.

        Raises:
            SchedulingError: The calendar is closed (``"calendar_closed"``) or the database
                failed (``"calendar_unavailable"``, transient).
        """
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---------------------------------------------------------------- administration

    def add_provider(self, provider_id: str, name: str) -> Provider:
        """Add or rename a provider.

        Raises:
            SchedulingError: The database cannot be written.
        """
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO providers VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET name = ?",
                [provider_id, name, name],
            )
        return Provider(provider_id, name)

    def add_patient(self, given_name: str, family_name: str, birth_date: date) -> Patient:
        """Register a patient under a new opaque ID.

        Raises:
            SchedulingError: The database cannot be written.
        """
        patient = Patient(f"pat-{uuid.uuid4().hex[:16]}", given_name, family_name, birth_date)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO patients VALUES (?, ?, ?, ?)",
                [patient.id, given_name, family_name, birth_date.isoformat()],
            )
        return patient

    def add_slot(self, provider_id: str, start: datetime, minutes: int = 30) -> Slot:
        """Open a free slot (an existing slot at the same start is returned unchanged).

        Args:
            provider_id: An existing provider.
            start: Naive local clinic time.
            minutes: Length in minutes.

        Raises:
            NotFound: Unknown provider.
            ValueError: ``start`` is timezone-aware or ``minutes`` is not positive.
        """
        if minutes <= 0:
            raise ValueError("slot length must be positive")
        new_id = slot_id(provider_id, start)
        with self.transaction() as conn:
            require_provider(conn, provider_id)
            conn.execute(
                'INSERT OR IGNORE INTO slots (id, provider_id, start, "end", free)'
                " VALUES (?, ?, ?, ?, 1)",
                [new_id, provider_id, fmt(start), fmt(start + timedelta(minutes=minutes))],
            )
            return require_slot(conn, new_id)

    # ---------------------------------------------------------------- reads

    def find_patient(self, given_name: str, family_name: str, birth_date: date) -> Patient | None:
        """Identity check: the patient with this date of birth and (nearly) these names.

        The date of birth must match exactly; it is never enough on its own. The names of the
        patients born that day are compared by :func:`.matching.match_patient` (exact after
        normalisation, else fuzzy within strict thresholds; ambiguity gives ``None``).

        Args:
            given_name: Given name as heard.
            family_name: Family name as heard.
            birth_date: Date of birth as heard.

        Returns:
            The patient, or ``None`` when there is no unambiguous match.

        Raises:
            SchedulingError: The database cannot be read.
        """
        if not normalise_name(given_name) or not normalise_name(family_name):
            return None
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM patients WHERE birth_date = ?", [birth_date.isoformat()]
            ).fetchall()
        return match_patient(given_name, family_name, (patient_row(row) for row in rows))

    def patient(self, patient_id: str) -> Patient:
        """Return the patient with this ID.

        Raises:
            NotFound: Unknown patient.
        """
        with self._read() as conn:
            return require_patient(conn, patient_id)

    def upcoming(self, patient_id: str, now: datetime) -> list[Appointment]:
        """Return the patient's booked appointments starting at or after ``now``, earliest first.

        Args:
            patient_id: The patient (an unknown ID gives an empty list).
            now: Naive local clinic time.

        Raises:
            ValueError: ``now`` is timezone-aware.
            SchedulingError: The database cannot be read.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM appointments WHERE patient_id = ? AND status = 'booked'"
                " AND start >= ? ORDER BY start, id",
                [patient_id, fmt(now)],
            ).fetchall()
        return [appointment_row(row) for row in rows]

    def free_slots(
        self, after: datetime, *, provider_id: str | None = None, limit: int = 3
    ) -> list[Slot]:
        """Return free slots starting at or after ``after``, earliest first.

        Args:
            after: Naive local clinic time.
            provider_id: Only this provider's slots; ``None`` for any provider.
            limit: At most this many slots (none when not positive).

        Raises:
            NotFound: ``provider_id`` is given and unknown.
            ValueError: ``after`` is timezone-aware.
            SchedulingError: The database cannot be read.
        """
        if limit <= 0:
            return []
        with self._read() as conn:
            if provider_id is None:
                rows = conn.execute(
                    "SELECT * FROM slots WHERE free = 1 AND start >= ?"
                    " ORDER BY start, provider_id LIMIT ?",
                    [fmt(after), limit],
                ).fetchall()
            else:
                require_provider(conn, provider_id)
                rows = conn.execute(
                    "SELECT * FROM slots WHERE free = 1 AND start >= ? AND provider_id = ?"
                    " ORDER BY start LIMIT ?",
                    [fmt(after), provider_id, limit],
                ).fetchall()
        return [slot_row(row) for row in rows]

    def provider(self, provider_id: str) -> Provider:
        """Return the provider with this ID.

        Raises:
            NotFound: Unknown provider.
        """
        with self._read() as conn:
            return require_provider(conn, provider_id)

    def providers(self) -> list[Provider]:
        """Return all providers, by name."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM providers ORDER BY name, id").fetchall()
        return [Provider(row["id"], row["name"]) for row in rows]

    def slot(self, slot_id: str) -> Slot:
        """Return the slot with this ID.

        Raises:
            NotFound: Unknown slot.
        """
        with self._read() as conn:
            return require_slot(conn, slot_id)

    def appointment(self, appointment_id: str) -> Appointment:
        """Return the appointment with this ID (booked or cancelled).

        Raises:
            NotFound: Unknown appointment.
        """
        with self._read() as conn:
            return require_appointment(conn, appointment_id)

    # ---------------------------------------------------------------- writes

    def book(self, patient_id: str, slot_id: str, *, idempotency_key: str) -> Appointment:
        """Book a free slot for a patient.

        Args:
            patient_id: An existing patient.
            slot_id: A free slot.
            idempotency_key: See :func:`idempotency_key`; a replay returns the first result.

        Returns:
            The new (or, on replay, the original) appointment, status ``"booked"``.

        Raises:
            NotFound: Unknown patient or slot.
            SlotUnavailable: The slot is already taken.
            SchedulingError: The key was used for a different request
                (``"idempotency_conflict"``), or the database failed.
        """
        request = {"patient_id": patient_id, "slot_id": slot_id}
        with self.transaction() as conn:
            previous = replay(conn, idempotency_key, "book", request)
            if previous is not None:
                return previous
            require_patient(conn, patient_id)
            appt = _booked_in(f"appt-{uuid.uuid4().hex[:16]}", patient_id, take_slot(conn, slot_id))
            conn.execute(
                "INSERT INTO appointments VALUES (?, ?, ?, ?, ?, ?, ?, datetime('now'))",
                [
                    appt.id,
                    appt.patient_id,
                    appt.provider_id,
                    appt.slot_id,
                    fmt(appt.start),
                    fmt(appt.end),
                    appt.status,
                ],
            )
            remember(conn, idempotency_key, "book", request, appt)
        return appt

    def reschedule(
        self, appointment_id: str, new_slot_id: str, *, idempotency_key: str
    ) -> Appointment:
        """Move a booked appointment to another free slot in one transaction.

        The appointment keeps its ID; the old slot is freed and the new one taken atomically.
        Moving to the slot it already holds changes nothing.

        Args:
            appointment_id: A booked appointment.
            new_slot_id: A free slot (any provider).
            idempotency_key: See :func:`idempotency_key`; a replay returns the first result.

        Returns:
            The updated (or, on replay, the original result) appointment.

        Raises:
            NotFound: Unknown appointment or slot.
            SlotUnavailable: The new slot is taken.
            SchedulingError: The appointment is cancelled (``"appointment_cancelled"``), the
                key was used for a different request, or the database failed.
        """
        request = {"appointment_id": appointment_id, "new_slot_id": new_slot_id}
        with self.transaction() as conn:
            previous = replay(conn, idempotency_key, "reschedule", request)
            if previous is not None:
                return previous
            current = require_appointment(conn, appointment_id)
            if current.status != BOOKED:
                raise SchedulingError(
                    "appointment_cancelled", f"appointment {appointment_id} is cancelled"
                )
            if current.slot_id == new_slot_id:
                remember(conn, idempotency_key, "reschedule", request, current)
                return current
            slot = take_slot(conn, new_slot_id)
            release_slot(conn, current.slot_id)
            appt = _booked_in(current.id, current.patient_id, slot)
            conn.execute(
                'UPDATE appointments SET provider_id = ?, slot_id = ?, start = ?, "end" = ?,'
                " updated_at = datetime('now') WHERE id = ?",
                [appt.provider_id, appt.slot_id, fmt(appt.start), fmt(appt.end), appt.id],
            )
            remember(conn, idempotency_key, "reschedule", request, appt)
        return appt

    def cancel(self, appointment_id: str, *, idempotency_key: str) -> Appointment:
        """Cancel an appointment and free its slot.

        Cancelling an already-cancelled appointment returns it unchanged.

        Args:
            appointment_id: An existing appointment.
            idempotency_key: See :func:`idempotency_key`; a replay returns the first result.

        Returns:
            The appointment, status ``"cancelled"``.

        Raises:
            NotFound: Unknown appointment.
            SchedulingError: The key was used for a different request, or the database failed.
        """
        request = {"appointment_id": appointment_id}
        with self.transaction() as conn:
            previous = replay(conn, idempotency_key, "cancel", request)
            if previous is not None:
                return previous
            current = require_appointment(conn, appointment_id)
            if current.status == BOOKED:
                conn.execute(
                    "UPDATE appointments SET status = 'cancelled', updated_at = datetime('now')"
                    " WHERE id = ?",
                    [appointment_id],
                )
                release_slot(conn, current.slot_id)
            appt = replace(current, status=CANCELLED)
            remember(conn, idempotency_key, "cancel", request, appt)
        return appt
