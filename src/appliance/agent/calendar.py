"""The built-in scheduling calendar, behind the :class:`SchedulingAdapter` interface.

The agent's scheduling tools talk to a :class:`SchedulingAdapter`; :class:`SqliteCalendar` is
the built-in implementation for clinics without a practice-management system to integrate
with (a later adapter can wrap an EHR's FHIR API with the same interface, which is why
:func:`to_fhir_appointment` and :func:`to_fhir_slot` give the HL7 FHIR R4 resource shapes).

Conventions:

* **Times** are naive ``datetime`` values in local clinic time (the appliance's system time
  zone), stored as ``YYYY-MM-DDTHH:MM:SS`` text so that SQL string comparison is time order.
  Timezone-aware values are rejected with ``ValueError``.
* **Identity** is checked by :meth:`SchedulingAdapter.find_patient`: given name, family name
  and date of birth together; the date of birth must match exactly, names are compared
  case-, accent- and whitespace-insensitively with a strict fuzzy threshold for small
  speech-recognition spelling differences ("Jon"/"John", "Lopes"/"Lopez").
* **Idempotency**: every mutating call takes an idempotency key (see
  :func:`idempotency_key`). The key and the resulting appointment are stored in the same
  transaction as the change, so a replayed call (a retried tool call, a repeated LLM turn)
  returns the original result and changes nothing.

Storage is stdlib ``sqlite3`` rather than sqlite-utils: bookings need explicit
``BEGIN IMMEDIATE`` transactions (the slot check and the write under one lock), which the
raw connection gives directly. As in :mod:`appliance.metrics.store`, the schema comes from
named migrations recorded in ``_migrations``, the journal is WAL, and there is one writer: one
connection per :class:`SqliteCalendar`, serialised by a lock. IDs are opaque; error messages
carry IDs only, never names or dates of birth.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from appliance.errors import ApplianceError, ErrorCategory

try:  # rapidfuzz is the well-kept fuzzy matcher; difflib gives the same Indel ratio.
    from rapidfuzz import fuzz as _fuzz

    def _similarity(a: str, b: str) -> float:
        return float(_fuzz.ratio(a, b))

except ImportError:  # pragma: no cover - exercised only where rapidfuzz is absent
    import difflib

    def _similarity(a: str, b: str) -> float:
        return 100.0 * difflib.SequenceMatcher(None, a, b).ratio()


NAME_EXACT_PART = 95.0
"""Similarity at which one name of the pair counts as heard correctly."""

NAME_OTHER_PART = 60.0
"""Similarity the other name then needs ("Asia"/"Aisha" 66.7; "Lohan"/"Lopez" 40 fails)."""

NAME_MATCH_THRESHOLD = 80.0
"""Minimum similarity (0-100, normalised Indel ratio) for each of given and family name.

"Jon"/"John" scores 85.7 and "Lopes"/"Lopez" 80.0; "Maria"/"Marcus" scores 54.5.
"""

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
BOOKED = "booked"
CANCELLED = "cancelled"


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Provider:
    """A clinician whose calendar holds slots.

    Attributes:
        id: Opaque provider ID, e.g. ``"prov-patel"``.
        name: Display name as spoken to callers, e.g. ``"Dr. Patel"``.
    """

    id: str
    name: str


@dataclass(frozen=True)
class Slot:
    """A bookable time slot of one provider.

    Attributes:
        id: Opaque slot ID.
        provider_id: The provider whose slot this is.
        start: Start, naive local clinic time.
        end: End, naive local clinic time.
        free: Whether the slot can be booked.
    """

    id: str
    provider_id: str
    start: datetime
    end: datetime
    free: bool


@dataclass(frozen=True)
class Patient:
    """A registered patient.

    Attributes:
        id: Opaque patient ID.
        given_name: Given (first) name.
        family_name: Family (last) name.
        birth_date: Date of birth.
    """

    id: str
    given_name: str
    family_name: str
    birth_date: date


@dataclass(frozen=True)
class Appointment:
    """An appointment in one slot.

    Attributes:
        id: Opaque appointment ID (kept across a reschedule).
        patient_id: The patient.
        provider_id: The provider of the slot.
        slot_id: The slot held (or last held, once cancelled).
        start: Start, naive local clinic time.
        end: End, naive local clinic time.
        status: ``"booked"`` or ``"cancelled"``.
    """

    id: str
    patient_id: str
    provider_id: str
    slot_id: str
    start: datetime
    end: datetime
    status: str


# --------------------------------------------------------------------------- errors


class SchedulingError(ApplianceError):
    """A scheduling operation failed (calendar unavailable, invalid request)."""

    stage = "scheduling"


class SlotUnavailable(SchedulingError):
    """The requested slot is already taken (or the appointment cannot take it).

    Args:
        message: Explanation without PHI (IDs only).
    """

    def __init__(self, message: str) -> None:
        super().__init__("slot_unavailable", message, ErrorCategory.PERMANENT)


class NotFound(SchedulingError):
    """A provider, slot, patient or appointment ID does not exist.

    Args:
        message: Explanation without PHI (IDs only).
    """

    def __init__(self, message: str) -> None:
        super().__init__("not_found", message, ErrorCategory.PERMANENT)


# --------------------------------------------------------------------------- interface


@runtime_checkable
class SchedulingAdapter(Protocol):
    """What the agent's scheduling tools need from a calendar (built-in or EHR-backed).

    All datetimes are naive local clinic time. Mutating calls take an idempotency key: a
    repeated call with the same key returns the same :class:`Appointment` and changes nothing.
    """

    def find_patient(self, given_name: str, family_name: str, birth_date: date) -> Patient | None:
        """Return the patient matching names and date of birth, or ``None``."""
        ...

    def upcoming(self, patient_id: str, now: datetime) -> list[Appointment]:
        """Return the patient's booked appointments starting at or after ``now``, by start."""
        ...

    def free_slots(
        self, after: datetime, *, provider_id: str | None = None, limit: int = 3
    ) -> list[Slot]:
        """Return up to ``limit`` free slots starting at or after ``after``, by start."""
        ...

    def provider(self, provider_id: str) -> Provider:
        """Return the provider; raise :class:`NotFound` if unknown."""
        ...

    def book(self, patient_id: str, slot_id: str, *, idempotency_key: str) -> Appointment:
        """Book the slot for the patient; raise :class:`SlotUnavailable` if taken."""
        ...

    def reschedule(
        self, appointment_id: str, new_slot_id: str, *, idempotency_key: str
    ) -> Appointment:
        """Move the appointment to another slot atomically."""
        ...

    def cancel(self, appointment_id: str, *, idempotency_key: str) -> Appointment:
        """Cancel the appointment and free its slot."""
        ...


# --------------------------------------------------------------------------- helpers


def idempotency_key(call_id: str, tool: str, arguments: dict[str, Any]) -> str:
    """Derive the idempotency key of one tool call.

    The key is a SHA-256 over canonical JSON (sorted keys, no whitespace) of the call ID, the
    tool name and its arguments, so the same tool call within the same phone call always gets
    the same key, and the key reveals nothing of the arguments.

    Args:
        call_id: The phone call's ID.
        tool: Tool name, e.g. ``"book_appointment"``.
        arguments: The tool's arguments; must be JSON-serialisable (dates and datetimes are
            written in ISO 8601).

    Returns:
        64 lowercase hex characters.

    Raises:
        TypeError: An argument cannot be serialised.
    """
    payload = json.dumps(
        {"call_id": call_id, "tool": tool, "arguments": arguments},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_json_default,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _json_default(value: object) -> str:
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _normalise_name(name: str) -> str:
    """Casefold, strip accents and drop everything but letters and digits."""
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c for c in stripped.casefold() if c.isalnum())


def _fmt(value: datetime) -> str:
    if value.tzinfo is not None:
        raise ValueError("calendar times are naive local clinic time; got a timezone-aware value")
    return value.strftime(_TIME_FORMAT)


def _parse(value: str) -> datetime:
    return datetime.strptime(value, _TIME_FORMAT)


def _fhir_instant(value: datetime, tz: tzinfo | None) -> str:
    """FHIR ``instant``: ISO 8601 with seconds and a UTC offset (naive = clinic local time)."""
    aware = value.replace(tzinfo=tz) if tz is not None else value.astimezone()
    return aware.isoformat(timespec="seconds")


def to_fhir_appointment(
    appt: Appointment, patient: Patient | None = None, *, tz: tzinfo | None = None
) -> dict[str, Any]:
    """Render an appointment as an HL7 FHIR R4 ``Appointment`` resource.

    Args:
        appt: The appointment.
        patient: When given, its name is added as the patient participant's ``display``.
        tz: The clinic time zone used to turn naive times into FHIR instants (which need an
            offset); ``None`` uses the appliance's system time zone.

    Returns:
        A JSON-able dict with ``resourceType``, ``id``, ``status`` (``booked`` or
        ``cancelled``), ``start``/``end`` (FHIR instants), ``minutesDuration``, ``slot``
        (``Slot/<id>``) and ``participant`` (``Patient/<id>`` and ``Practitioner/<id>``,
        both ``accepted``).
    """
    patient_actor: dict[str, str] = {"reference": f"Patient/{appt.patient_id}"}
    if patient is not None:
        patient_actor["display"] = f"{patient.given_name} {patient.family_name}"
    return {
        "resourceType": "Appointment",
        "id": appt.id,
        "status": appt.status,
        "start": _fhir_instant(appt.start, tz),
        "end": _fhir_instant(appt.end, tz),
        "minutesDuration": int((appt.end - appt.start).total_seconds() // 60),
        "slot": [{"reference": f"Slot/{appt.slot_id}"}],
        "participant": [
            {"actor": patient_actor, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{appt.provider_id}"}, "status": "accepted"},
        ],
    }


def to_fhir_slot(slot: Slot, *, tz: tzinfo | None = None) -> dict[str, Any]:
    """Render a slot as an HL7 FHIR R4 ``Slot`` resource.

    The schedule reference is ``Schedule/<provider_id>`` (one schedule per provider).

    Args:
        slot: The slot.
        tz: Clinic time zone for the instants; ``None`` uses the system time zone.

    Returns:
        A JSON-able dict with ``resourceType``, ``id``, ``schedule``, ``status`` (``free`` or
        ``busy``), ``start`` and ``end``.
    """
    return {
        "resourceType": "Slot",
        "id": slot.id,
        "schedule": {"reference": f"Schedule/{slot.provider_id}"},
        "status": "free" if slot.free else "busy",
        "start": _fhir_instant(slot.start, tz),
        "end": _fhir_instant(slot.end, tz),
    }


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


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("001_calendar", _m001_calendar),
]


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply pending named migrations, each in its own transaction; return those applied.

    Args:
        conn: A connection in autocommit mode (``isolation_level=None``).

    Raises:
        sqlite3.Error: A migration failed (it is rolled back).
    """
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied = []
    for name, fn in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                conn.execute("ROLLBACK")
                continue
            fn(conn)
            conn.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", [name])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


# --------------------------------------------------------------------------- calendar


def _slot_row(row: sqlite3.Row) -> Slot:
    return Slot(
        id=row["id"],
        provider_id=row["provider_id"],
        start=_parse(row["start"]),
        end=_parse(row["end"]),
        free=bool(row["free"]),
    )


def _appointment_row(row: sqlite3.Row) -> Appointment:
    return Appointment(
        id=row["id"],
        patient_id=row["patient_id"],
        provider_id=row["provider_id"],
        slot_id=row["slot_id"],
        start=_parse(row["start"]),
        end=_parse(row["end"]),
        status=row["status"],
    )


def _patient_row(row: sqlite3.Row) -> Patient:
    return Patient(
        id=row["id"],
        given_name=row["given_name"],
        family_name=row["family_name"],
        birth_date=date.fromisoformat(row["birth_date"]),
    )


def _appointment_json(appt: Appointment) -> str:
    data = asdict(appt)
    data["start"] = _fmt(appt.start)
    data["end"] = _fmt(appt.end)
    return json.dumps(data, sort_keys=True)


def _appointment_from_json(text: str) -> Appointment:
    data = json.loads(text)
    data["start"] = _parse(data["start"])
    data["end"] = _parse(data["end"])
    return Appointment(**data)


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
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---------------------------------------------------------------- seeding

    @classmethod
    def seed_demo(cls, path: Path, today: date) -> SqliteCalendar:
        """Open (creating if needed) a calendar filled with fictional demo data.

        Adds providers "Dr. Patel" (``prov-patel``) and "Dr. Nguyen" (``prov-nguyen``);
        30-minute slots on weekdays from 09:00 to 16:30 (last slot 16:00-16:30) for the 14 days
        after ``today``; patients Maria Lopez (1982-03-04, booked with Dr. Patel on the first
        Tuesday after ``today`` at 10:30), James Carter (1975-11-20, booked with Dr. Nguyen on
        the first Thursday after ``today`` at 14:00), Aisha Khan (1990-07-15, none), Robert Brown
        (1968-09-12, booked with Dr. Nguyen on the first Tuesday after ``today`` at 09:30) and
        Linda Miller (1955-01-30, none).

        Idempotent: only missing rows are added, so a second run changes nothing; the demo
        appointments are created once, whatever ``today`` a later run passes.

        Args:
            path: SQLite file.
            today: The day the demo starts from (slots begin the day after).

        Returns:
            The open calendar.

        Raises:
            SchedulingError: The database cannot be opened or written.
        """
        calendar = cls(path)
        providers = [("prov-patel", "Dr. Patel"), ("prov-nguyen", "Dr. Nguyen")]
        patients = [
            ("pat-demo-1", "Maria", "Lopez", "1982-03-04"),
            ("pat-demo-2", "James", "Carter", "1975-11-20"),
            ("pat-demo-3", "Aisha", "Khan", "1990-07-15"),
            ("pat-demo-4", "Robert", "Brown", "1968-09-12"),
            ("pat-demo-5", "Linda", "Miller", "1955-01-30"),
        ]

        def first_after(weekday: int) -> date:
            return today + timedelta(days=(weekday - today.weekday() - 1) % 7 + 1)

        demo_appointments = [
            (
                "appt-demo-1",
                "pat-demo-1",
                "prov-patel",
                datetime.combine(first_after(1), time(10, 30)),
            ),
            (
                "appt-demo-2",
                "pat-demo-2",
                "prov-nguyen",
                datetime.combine(first_after(3), time(14, 0)),
            ),
            (
                "appt-demo-4",
                "pat-demo-4",
                "prov-nguyen",
                datetime.combine(first_after(1), time(9, 30)),
            ),
        ]
        with calendar._write() as conn:
            conn.executemany("INSERT OR IGNORE INTO providers VALUES (?, ?)", providers)
            conn.executemany("INSERT OR IGNORE INTO patients VALUES (?, ?, ?, ?)", patients)
            for offset in range(1, 15):
                day = today + timedelta(days=offset)
                if day.weekday() >= 5:
                    continue
                start = datetime.combine(day, time(9, 0))
                while start.time() < time(16, 30):
                    for provider_id, _ in providers:
                        conn.execute(
                            'INSERT OR IGNORE INTO slots (id, provider_id, start, "end", free)'
                            " VALUES (?, ?, ?, ?, 1)",
                            [
                                calendar._slot_id(provider_id, start),
                                provider_id,
                                _fmt(start),
                                _fmt(start + timedelta(minutes=30)),
                            ],
                        )
                    start += timedelta(minutes=30)
            for appt_id, patient_id, provider_id, start in demo_appointments:
                if conn.execute("SELECT 1 FROM appointments WHERE id = ?", [appt_id]).fetchone():
                    continue
                slot_id = calendar._slot_id(provider_id, start)
                taken = conn.execute(
                    "UPDATE slots SET free = 0 WHERE id = ? AND free = 1", [slot_id]
                )
                if taken.rowcount != 1:
                    continue  # someone booked the demo slot for real: leave it to them
                conn.execute(
                    "INSERT INTO appointments VALUES (?, ?, ?, ?, ?, ?, 'booked', datetime('now'))",
                    [
                        appt_id,
                        patient_id,
                        provider_id,
                        slot_id,
                        _fmt(start),
                        _fmt(start + timedelta(minutes=30)),
                    ],
                )
        return calendar

    @staticmethod
    def _slot_id(provider_id: str, start: datetime) -> str:
        return f"{provider_id}-{start:%Y%m%d%H%M}"

    # ---------------------------------------------------------------- administration

    def add_provider(self, provider_id: str, name: str) -> Provider:
        """Add or rename a provider.

        Raises:
            SchedulingError: The database cannot be written.
        """
        with self._write() as conn:
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
        with self._write() as conn:
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
        slot_id = self._slot_id(provider_id, start)
        with self._write() as conn:
            self._require_provider(conn, provider_id)
            conn.execute(
                'INSERT OR IGNORE INTO slots (id, provider_id, start, "end", free)'
                " VALUES (?, ?, ?, ?, 1)",
                [slot_id, provider_id, _fmt(start), _fmt(start + timedelta(minutes=minutes))],
            )
            return self._require_slot(conn, slot_id)

    # ---------------------------------------------------------------- reads

    def find_patient(self, given_name: str, family_name: str, birth_date: date) -> Patient | None:
        """Identity check: the patient with this date of birth and (nearly) these names.

        The date of birth must match exactly; it is never enough on its own. Names are compared
        after casefolding and removing accents, spaces and punctuation; an exact match wins,
        otherwise both given and family name must reach :data:`NAME_MATCH_THRESHOLD`, or one
        must match (:data:`NAME_EXACT_PART`) and the other reach :data:`NAME_OTHER_PART` (speech
        recognition on a phone line garbles one name of a pair far more often than both:
        "Asia Khan" for "Aisha Khan"). When more than one patient matches only approximately,
        the result is ``None`` (ambiguous).

        Args:
            given_name: Given name as heard.
            family_name: Family name as heard.
            birth_date: Date of birth as heard.

        Returns:
            The patient, or ``None`` when there is no unambiguous match.

        Raises:
            SchedulingError: The database cannot be read.
        """
        given, family = _normalise_name(given_name), _normalise_name(family_name)
        if not given or not family:
            return None
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM patients WHERE birth_date = ?", [birth_date.isoformat()]
            ).fetchall()
        exact: list[Patient] = []
        close: list[tuple[float, Patient]] = []
        partial: list[Patient] = []
        for row in rows:
            patient = _patient_row(row)
            row_given = _normalise_name(patient.given_name)
            row_family = _normalise_name(patient.family_name)
            if (row_given, row_family) == (given, family):
                exact.append(patient)
                continue
            given_score = _similarity(given, row_given)
            family_score = _similarity(family, row_family)
            low, high = sorted((given_score, family_score))
            if low >= NAME_MATCH_THRESHOLD:
                close.append((given_score + family_score, patient))
            elif high >= NAME_EXACT_PART and low >= NAME_OTHER_PART:
                partial.append(patient)
        if len(exact) == 1:
            return exact[0]
        if exact:
            return None  # duplicate registrations: let a human sort it out
        if len(close) == 1:
            return close[0][1]
        if not close and len(partial) == 1:
            return partial[0]  # only when no closer candidate exists at all
        return None

    def patient(self, patient_id: str) -> Patient:
        """Return the patient with this ID.

        Raises:
            NotFound: Unknown patient.
        """
        with self._read() as conn:
            row = conn.execute("SELECT * FROM patients WHERE id = ?", [patient_id]).fetchone()
        if row is None:
            raise NotFound(f"no patient {patient_id}")
        return _patient_row(row)

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
                [patient_id, _fmt(now)],
            ).fetchall()
        return [_appointment_row(row) for row in rows]

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
                    [_fmt(after), limit],
                ).fetchall()
            else:
                self._require_provider(conn, provider_id)
                rows = conn.execute(
                    "SELECT * FROM slots WHERE free = 1 AND start >= ? AND provider_id = ?"
                    " ORDER BY start LIMIT ?",
                    [_fmt(after), provider_id, limit],
                ).fetchall()
        return [_slot_row(row) for row in rows]

    def provider(self, provider_id: str) -> Provider:
        """Return the provider with this ID.

        Raises:
            NotFound: Unknown provider.
        """
        with self._read() as conn:
            return self._require_provider(conn, provider_id)

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
            return self._require_slot(conn, slot_id)

    def appointment(self, appointment_id: str) -> Appointment:
        """Return the appointment with this ID (booked or cancelled).

        Raises:
            NotFound: Unknown appointment.
        """
        with self._read() as conn:
            return self._require_appointment(conn, appointment_id)

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
        with self._write() as conn:
            replay = self._replay(conn, idempotency_key, "book", request)
            if replay is not None:
                return replay
            if conn.execute("SELECT 1 FROM patients WHERE id = ?", [patient_id]).fetchone() is None:
                raise NotFound(f"no patient {patient_id}")
            slot = self._take_slot(conn, slot_id)
            appt = Appointment(
                id=f"appt-{uuid.uuid4().hex[:16]}",
                patient_id=patient_id,
                provider_id=slot.provider_id,
                slot_id=slot.id,
                start=slot.start,
                end=slot.end,
                status=BOOKED,
            )
            conn.execute(
                "INSERT INTO appointments VALUES (?, ?, ?, ?, ?, ?, ?, datetime('now'))",
                [
                    appt.id,
                    appt.patient_id,
                    appt.provider_id,
                    appt.slot_id,
                    _fmt(appt.start),
                    _fmt(appt.end),
                    appt.status,
                ],
            )
            self._remember(conn, idempotency_key, "book", request, appt)
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
        with self._write() as conn:
            replay = self._replay(conn, idempotency_key, "reschedule", request)
            if replay is not None:
                return replay
            current = self._require_appointment(conn, appointment_id)
            if current.status != BOOKED:
                raise SchedulingError(
                    "appointment_cancelled", f"appointment {appointment_id} is cancelled"
                )
            if current.slot_id == new_slot_id:
                self._remember(conn, idempotency_key, "reschedule", request, current)
                return current
            slot = self._take_slot(conn, new_slot_id)
            conn.execute("UPDATE slots SET free = 1 WHERE id = ?", [current.slot_id])
            appt = Appointment(
                id=current.id,
                patient_id=current.patient_id,
                provider_id=slot.provider_id,
                slot_id=slot.id,
                start=slot.start,
                end=slot.end,
                status=BOOKED,
            )
            conn.execute(
                'UPDATE appointments SET provider_id = ?, slot_id = ?, start = ?, "end" = ?,'
                " updated_at = datetime('now') WHERE id = ?",
                [appt.provider_id, appt.slot_id, _fmt(appt.start), _fmt(appt.end), appt.id],
            )
            self._remember(conn, idempotency_key, "reschedule", request, appt)
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
        with self._write() as conn:
            replay = self._replay(conn, idempotency_key, "cancel", request)
            if replay is not None:
                return replay
            current = self._require_appointment(conn, appointment_id)
            if current.status == BOOKED:
                conn.execute(
                    "UPDATE appointments SET status = 'cancelled', updated_at = datetime('now')"
                    " WHERE id = ?",
                    [appointment_id],
                )
                conn.execute("UPDATE slots SET free = 1 WHERE id = ?", [current.slot_id])
            appt = Appointment(
                id=current.id,
                patient_id=current.patient_id,
                provider_id=current.provider_id,
                slot_id=current.slot_id,
                start=current.start,
                end=current.end,
                status=CANCELLED,
            )
            self._remember(conn, idempotency_key, "cancel", request, appt)
        return appt

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _replay(
        conn: sqlite3.Connection, key: str, operation: str, request: dict[str, str]
    ) -> Appointment | None:
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
        return _appointment_from_json(row["result"])

    @staticmethod
    def _remember(
        conn: sqlite3.Connection,
        key: str,
        operation: str,
        request: dict[str, str],
        result: Appointment,
    ) -> None:
        conn.execute(
            "INSERT INTO idempotency VALUES (?, ?, ?, ?, datetime('now'))",
            [key, operation, json.dumps(request, sort_keys=True), _appointment_json(result)],
        )

    @staticmethod
    def _take_slot(conn: sqlite3.Connection, slot_id: str) -> Slot:
        slot = SqliteCalendar._require_slot(conn, slot_id)
        if not slot.free:
            raise SlotUnavailable(f"slot {slot_id} is already taken")
        conn.execute("UPDATE slots SET free = 0 WHERE id = ?", [slot_id])
        return slot

    @staticmethod
    def _require_provider(conn: sqlite3.Connection, provider_id: str) -> Provider:
        row = conn.execute("SELECT * FROM providers WHERE id = ?", [provider_id]).fetchone()
        if row is None:
            raise NotFound(f"no provider {provider_id}")
        return Provider(row["id"], row["name"])

    @staticmethod
    def _require_slot(conn: sqlite3.Connection, slot_id: str) -> Slot:
        row = conn.execute("SELECT * FROM slots WHERE id = ?", [slot_id]).fetchone()
        if row is None:
            raise NotFound(f"no slot {slot_id}")
        return _slot_row(row)

    @staticmethod
    def _require_appointment(conn: sqlite3.Connection, appointment_id: str) -> Appointment:
        row = conn.execute("SELECT * FROM appointments WHERE id = ?", [appointment_id]).fetchone()
        if row is None:
            raise NotFound(f"no appointment {appointment_id}")
        return _appointment_row(row)


__all__ = [
    "BOOKED",
    "CANCELLED",
    "NAME_MATCH_THRESHOLD",
    "Appointment",
    "NotFound",
    "Patient",
    "Provider",
    "SchedulingAdapter",
    "SchedulingError",
    "Slot",
    "SlotUnavailable",
    "SqliteCalendar",
    "idempotency_key",
    "migrate",
    "to_fhir_appointment",
    "to_fhir_slot",
]
