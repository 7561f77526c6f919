"""The built-in workflow tools: identity check and appointments, over a scheduling adapter.

=======================  ===========================================  =========================
Tool                     Arguments (slot types)                       Sets on success
=======================  ===========================================  =========================
``identity.verify``      ``name`` (person_name), ``birth_date``        ``patient_given_name``
                         (date_of_birth), ``family_name``
                         (spelled_name, optional)
``calendar.upcoming``    none                                         ``appointment_when``,
                                                                      ``appointment_provider``
``calendar.free_slots``  ``after`` (date_time, optional: now)          ``slot_when``,
                                                                      ``slot_provider``
``calendar.reschedule``  none: the appointment and slot in hand       as ``upcoming``
``calendar.book``        none: the verified patient, the slot in hand  as ``upcoming``
``calendar.cancel``      none: the appointment in hand                as ``upcoming``
``reminder.verify``      ``birth_date`` (date_of_birth): the callee   ``patient_given_name``,
                         of a reminder call against the patient of    as ``upcoming``
                         the appointment the call is about
``reminder.confirm``     none: the appointment in hand (booked)       as ``upcoming``
=======================  ===========================================  =========================

Every ``calendar.*`` tool needs the caller's identity verified first. The mutating tools pass
the call's idempotency key (:attr:`~appliance.agent.tools.ToolCall.key`) to the calendar.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Protocol

from appliance.agent.calendar import (
    BOOKED,
    Appointment,
    Patient,
    SchedulingAdapter,
    SchedulingError,
)
from appliance.agent.tools import Param, ToolCall, ToolRegistry, ToolResult, ToolSpec
from appliance.agent.understanding import speak_when
from appliance.events import IdentityVerified

_APPOINTMENT_OUTPUTS = ("appointment_when", "appointment_provider")


def _calendar(call: ToolCall) -> SchedulingAdapter:
    if call.calendar is None:
        raise SchedulingError("no_calendar", "no scheduling adapter is configured")
    return call.calendar


def _appointment_outputs(cal: SchedulingAdapter, appt: Appointment) -> dict[str, str]:
    return {
        "appointment_when": speak_when(appt.start),
        "appointment_provider": cal.provider(appt.provider_id).name,
    }


def verify_identity(call: ToolCall) -> ToolResult:
    """Find the patient by name and date of birth; emit ``IdentityVerified`` either way.

    The first and last words of ``name`` are taken as given and family name; a spelled
    ``family_name``, when given, replaces the family name heard. The check is the calendar's
    (:meth:`~appliance.agent.calendar.SchedulingAdapter.find_patient`): a spelled name is one
    more try of the same check, never a looser one. Nothing of the record is returned on a
    failure, so no stored name reaches an unverified caller.
    """
    cal = _calendar(call)
    name, born = call.arguments.get("name"), call.arguments.get("birth_date")
    spelled = call.arguments.get("family_name")
    patient = None
    if isinstance(name, str) and name.split() and isinstance(born, date):
        words = name.split()
        family = spelled if isinstance(spelled, str) and spelled.strip() else words[-1]
        patient = cal.find_patient(words[0], family.strip(), born)
    call.emit(
        IdentityVerified(
            call.call_id, workflow=call.workflow, ok=patient is not None, attempts=call.attempt
        )
    )
    if patient is None:
        return ToolResult(False, {"verified": False})
    call.session.patient = patient
    return ToolResult(
        True,
        {"verified": True, "patient_id": patient.id},
        {"patient_given_name": patient.given_name},
    )


def upcoming(call: ToolCall) -> ToolResult:
    """Take the verified patient's next booked appointment in hand."""
    cal = _calendar(call)
    assert call.session.patient is not None  # needs_identity
    found = cal.upcoming(call.session.patient.id, call.now)
    if not found:
        return ToolResult(False, {"appointments": 0})
    call.session.appointment = found[0]
    return ToolResult(True, {"appointment_id": found[0].id}, _appointment_outputs(cal, found[0]))


def free_slots(call: ToolCall) -> ToolResult:
    """Take the first free slot at or after ``after`` (or now) in hand.

    With an appointment in hand (a reschedule), only its provider's slots are offered.
    """
    cal = _calendar(call)
    after = call.arguments.get("after")
    start = max(after, call.now) if isinstance(after, datetime) else call.now
    appt = call.session.appointment
    slots = cal.free_slots(start, provider_id=appt.provider_id if appt else None, limit=1)
    if not slots:
        return ToolResult(False, {"slots": 0})
    slot = call.session.slot = slots[0]
    return ToolResult(
        True,
        {"slot_id": slot.id},
        {"slot_when": speak_when(slot.start), "slot_provider": cal.provider(slot.provider_id).name},
    )


def _changed(cal: SchedulingAdapter, call: ToolCall, appt: Appointment) -> ToolResult:
    call.session.appointment = appt
    return ToolResult(
        True,
        {"appointment_id": appt.id, "status": appt.status},
        _appointment_outputs(cal, appt),
    )


class _SlotChange(Protocol):
    """A calendar change of what is in hand into a slot (``book``, ``reschedule``)."""

    def __call__(self, held_id: str, slot_id: str, /, *, idempotency_key: str) -> Appointment:
        """Return the changed appointment."""
        ...


def _into_slot(
    cal: SchedulingAdapter,
    call: ToolCall,
    change: _SlotChange,
    held: Patient | Appointment | None,
    error: str,
) -> ToolResult:
    """Apply ``change`` to the ID of what is ``held`` and the slot in hand.

    Returns:
        The changed appointment's result, or a failure ``{"error": error}`` when either is
        missing.
    """
    slot = call.session.slot
    if held is None or slot is None:
        return ToolResult(False, {"error": error})
    return _changed(cal, call, change(held.id, slot.id, idempotency_key=call.key))


def reschedule(call: ToolCall) -> ToolResult:
    """Move the appointment in hand to the slot in hand."""
    cal = _calendar(call)
    return _into_slot(cal, call, cal.reschedule, call.session.appointment, "nothing_to_reschedule")


def book(call: ToolCall) -> ToolResult:
    """Book the slot in hand for the verified patient."""
    cal = _calendar(call)
    return _into_slot(cal, call, cal.book, call.session.patient, "no_slot")


def cancel(call: ToolCall) -> ToolResult:
    """Cancel the appointment in hand."""
    cal = _calendar(call)
    if call.session.appointment is None:
        return ToolResult(False, {"error": "nothing_to_cancel"})
    appt = cal.cancel(call.session.appointment.id, idempotency_key=call.key)
    return _changed(cal, call, appt)


def verify_reminder(call: ToolCall) -> ToolResult:
    """On a reminder call: does ``birth_date`` match the patient of the call's appointment?

    The box placed the call to the number on file, so the callee names no patient: the date of
    birth must match exactly the one of the appointment's patient
    (:attr:`~appliance.agent.tools.ToolSession.reminder_appointment_id`). Only then are the
    patient and the appointment in hand and their details given to the workflow's texts; a
    failure returns nothing of the record. Emits ``IdentityVerified`` either way.
    """
    cal = _calendar(call)
    born = call.arguments.get("birth_date")
    appt_id = call.session.reminder_appointment_id
    patient: Patient | None = None
    appt: Appointment | None = None
    if appt_id and isinstance(born, date):
        appt = cal.appointment(appt_id)
        candidate = cal.patient(appt.patient_id)
        patient = candidate if candidate.birth_date == born else None
    call.emit(
        IdentityVerified(
            call.call_id, workflow=call.workflow, ok=patient is not None, attempts=call.attempt
        )
    )
    if patient is None or appt is None:
        return ToolResult(False, {"verified": False})
    call.session.patient = patient
    call.session.appointment = appt
    return ToolResult(
        True,
        {"verified": True, "patient_id": patient.id, "appointment_id": appt.id},
        {"patient_given_name": patient.given_name, **_appointment_outputs(cal, appt)},
    )


def confirm_reminder(call: ToolCall) -> ToolResult:
    """The callee confirmed they will come: the appointment in hand, still booked.

    The calendar has no "confirmed" state; the confirmation is this tool's ``ToolCalled``
    record and the dialler's outcome (``appliance.app.dialler``).
    """
    cal = _calendar(call)
    appt = call.session.appointment
    if appt is None or appt.status != BOOKED:
        return ToolResult(False, {"error": "nothing_to_confirm"})
    return ToolResult(
        True, {"appointment_id": appt.id, "confirmed": True}, _appointment_outputs(cal, appt)
    )


def default_tools() -> ToolRegistry:
    """A registry holding the built-in tools (see the module table)."""
    return ToolRegistry(
        [
            ToolSpec(
                "identity.verify",
                verify_identity,
                params=(
                    Param("name", ("person_name",)),
                    Param("birth_date", ("date_of_birth",)),
                    Param("family_name", ("spelled_name",), required=False),
                ),
                outputs=("patient_given_name",),
            ),
            ToolSpec(
                "calendar.upcoming",
                upcoming,
                outputs=_APPOINTMENT_OUTPUTS,
                needs_identity=True,
                acts_on=("patient",),
            ),
            ToolSpec(
                "calendar.free_slots",
                free_slots,
                params=(Param("after", ("date_time",), required=False),),
                outputs=("slot_when", "slot_provider"),
                needs_identity=True,
                acts_on=("appointment",),
            ),
            ToolSpec(
                "calendar.reschedule",
                reschedule,
                outputs=_APPOINTMENT_OUTPUTS,
                needs_identity=True,
                acts_on=("appointment", "slot"),
            ),
            ToolSpec(
                "calendar.book",
                book,
                outputs=_APPOINTMENT_OUTPUTS,
                needs_identity=True,
                acts_on=("patient", "slot"),
            ),
            ToolSpec(
                "calendar.cancel",
                cancel,
                outputs=_APPOINTMENT_OUTPUTS,
                needs_identity=True,
                acts_on=("appointment",),
            ),
            ToolSpec(
                "reminder.verify",
                verify_reminder,
                params=(Param("birth_date", ("date_of_birth",)),),
                outputs=("patient_given_name", *_APPOINTMENT_OUTPUTS),
            ),
            ToolSpec(
                "reminder.confirm",
                confirm_reminder,
                outputs=_APPOINTMENT_OUTPUTS,
                needs_identity=True,
                acts_on=("appointment",),
            ),
        ]
    )
