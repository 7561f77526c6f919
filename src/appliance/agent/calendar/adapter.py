"""The scheduling adapter interface and the types it speaks.

What the agent's scheduling tools need from a calendar, built-in (:mod:`.store`) or wrapping a
practice-management system: the data types (:class:`Provider`, :class:`Slot`,
:class:`Patient`, :class:`Appointment`), the errors (:class:`SchedulingError` and its
subclasses), the :class:`SchedulingAdapter` protocol and :func:`idempotency_key`.

Pure: no storage, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Protocol, runtime_checkable

from appliance.errors import ApplianceError, ErrorCategory

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

    def patient(self, patient_id: str) -> Patient:
        """Return the patient; raise :class:`NotFound` if unknown (reminders' identity check)."""
        ...

    def appointment(self, appointment_id: str) -> Appointment:
        """Return the appointment, booked or cancelled; raise :class:`NotFound` if unknown."""
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


# --------------------------------------------------------------------------- idempotency


def idempotency_key(call_id: str, tool: str, arguments: dict[str, Any]) -> str:
    """Derive the idempotency key of one tool call.

    The key is a SHA-256 over canonical JSON (sorted keys, no whitespace) of the call ID, the
    tool name and its arguments, so the same tool call within the same phone call always gets
    the same key, and the key reveals nothing of the arguments.

    Args:
        call_id: The phone call's ID.
        tool: Tool name, e.g. ``"calendar.book"``.
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
        default=json_default,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def json_default(value: object) -> str:
    """``json.dumps`` hook: dates, datetimes and times as ISO 8601.

    Raises:
        TypeError: Any other type (as ``json.dumps`` expects of a hook).
    """
    if isinstance(value, date | datetime | time):
        return value.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
