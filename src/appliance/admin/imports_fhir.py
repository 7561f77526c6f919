"""HL7 FHIR R4 Bundles (JSON): the Patient, Practitioner, Schedule, Slot and Appointment subset.

Only the elements the calendar holds are read, through pydantic models of that subset (other
elements are ignored; this is not a FHIR library). Resources of other types are reported as
skipped. References are resolved inside the bundle, by ``fullUrl`` (``urn:uuid:...``) or by
``Type/id`` (also at the end of an absolute URL); nothing is fetched.

Mapping (https://hl7.org/fhir/R4/):

* **Patient**: the ``official`` name (else ``usual``, else the first): first ``given`` and
  ``family``; ``birthDate`` (a full date; a year or year-month alone is rejected); the first
  ``telecom`` with ``system`` ``phone``; the ``identifier`` typed ``MR`` (HL7 v2 table 0203,
  medical record number), else the first one, as the external ID; the ``home`` address
  (else the first that is not ``old``): ``city``, ``state``, ``postalCode`` and ``country``
  only, never ``line`` (the calling window's time zone; :mod:`appliance.policy.address_zone`).
  ``active: false`` is skipped.
* **Practitioner**: ``name.text``, else ``prefix`` and ``family`` ("Dr. Patel"), else
  ``given`` and ``family``.
* **Schedule**: not stored; its first ``actor`` that references a Practitioner is the
  provider of the slots that reference the schedule (``Slot.schedule``).
* **Slot**: ``start`` and ``end`` (instants, converted to the clinic's local time);
  ``status`` ``free`` opens a bookable slot, ``busy`` a taken one (unless an appointment of
  the bundle books it); other statuses are skipped.
* **Appointment**: ``status`` ``booked`` only (others are skipped); the Patient participant,
  booked into the first ``slot`` or, without one, into the Practitioner participant's slot at
  ``start``..``end`` (opened when missing).
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from appliance.admin.imports_model import (
    MAX_ROWS,
    AppointmentIn,
    Decided,
    FieldError,
    ImportFileError,
    Kind,
    Parsed,
    PatientIn,
    ProviderIn,
    Record,
    RowResult,
    SlotIn,
    check_minutes,
    clean_name,
    parse_birth_date,
    parse_country,
    parse_external_id,
    parse_local_time,
    parse_phone,
    parse_place,
)

SUPPORTED = ("Patient", "Practitioner", "Schedule", "Slot", "Appointment")
_REF_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class _Element(BaseModel):
    """A FHIR element: only the fields below are read; others are ignored."""

    model_config = ConfigDict(extra="ignore")


class Reference(_Element):
    """FHIR Reference (``reference`` only)."""

    reference: str | None = None


class HumanName(_Element):
    """FHIR HumanName."""

    use: str | None = None
    text: str | None = None
    family: str | None = None
    given: list[str] = []
    prefix: list[str] = []


class ContactPoint(_Element):
    """FHIR ContactPoint."""

    system: str | None = None
    value: str | None = None


class Address(_Element):
    """FHIR Address: the parts that place it in a time zone (``line`` is never read)."""

    use: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None  # noqa: N815 - FHIR element name
    country: str | None = None


def _place(addresses: list[Address]) -> tuple[str | None, str | None, str | None, str | None]:
    """``(city, region, postal code, ISO country)`` of the home (else first current) address.

    An address whose country is neither an ISO 3166-1 alpha-2 code nor a spelling of the US
    (:func:`~.imports_model.parse_country`) is left out whole: a wrong country would put the
    patient in a wrong zone, while no address leaves the zone to the phone number.
    """
    current = [a for a in addresses if a.use != "old"]
    home = next((a for a in current if a.use == "home"), current[0] if current else None)
    if home is None:
        return (None, None, None, None)
    try:
        return (
            parse_place(home.city, "city"),
            parse_place(home.state, "state"),
            parse_place(home.postalCode, "postalCode"),
            parse_country(home.country),
        )
    except FieldError:
        return (None, None, None, None)


class Coding(_Element):
    """FHIR Coding."""

    system: str | None = None
    code: str | None = None


class CodeableConcept(_Element):
    """FHIR CodeableConcept."""

    coding: list[Coding] = []


class Identifier(_Element):
    """FHIR Identifier."""

    type: CodeableConcept | None = None
    value: str | None = None


class FhirPatient(_Element):
    """The Patient elements read."""

    id: str | None = None
    active: bool | None = None
    name: list[HumanName] = []
    birthDate: str | None = None  # noqa: N815 - FHIR element name
    telecom: list[ContactPoint] = []
    identifier: list[Identifier] = []
    address: list[Address] = []


class FhirPractitioner(_Element):
    """The Practitioner elements read."""

    id: str | None = None
    name: list[HumanName] = []


class FhirSchedule(_Element):
    """The Schedule elements read."""

    id: str | None = None
    actor: list[Reference] = []


class FhirSlot(_Element):
    """The Slot elements read."""

    id: str | None = None
    schedule: Reference | None = None
    status: str | None = None
    start: str | None = None
    end: str | None = None


class Participant(_Element):
    """An Appointment participant."""

    actor: Reference | None = None


class FhirAppointment(_Element):
    """The Appointment elements read."""

    id: str | None = None
    status: str | None = None
    start: str | None = None
    end: str | None = None
    slot: list[Reference] = []
    participant: list[Participant] = []


class Entry(_Element):
    """A Bundle entry (the resource stays a dict until its type is known)."""

    fullUrl: str | None = None  # noqa: N815 - FHIR element name
    resource: dict[str, Any] | None = None


class Bundle(_Element):
    """A FHIR R4 Bundle (any ``type``)."""

    resourceType: Literal["Bundle"]  # noqa: N815 - FHIR element name
    entry: list[Entry] = []


def _reason(exc: ValidationError) -> str:
    """A validation error as ``element: message`` (never the offending value: it may be PHI)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "resource"
    return f"{where}: {first['msg']}"


def _name(names: list[HumanName]) -> HumanName | None:
    for use in ("official", "usual"):
        for n in names:
            if n.use == use:
                return n
    return names[0] if names else None


class _Bundle:
    """One bundle being mapped: its entries, reference index and schedules."""

    def __init__(self, bundle: Bundle) -> None:
        self.entries = bundle.entry
        self.keys: dict[str, str] = {}  # any spelling of a reference -> canonical key
        self.types: dict[str, str] = {}  # canonical key -> resourceType
        for entry in self.entries:
            res = entry.resource or {}
            kind, rid = res.get("resourceType"), res.get("id")
            canon = f"{kind}/{rid}" if isinstance(kind, str) and isinstance(rid, str) else None
            canon = canon or entry.fullUrl
            if canon:
                self.keys[canon] = canon
                self.types[canon] = str(kind)
                if entry.fullUrl:
                    self.keys[entry.fullUrl] = canon
        self.schedules: dict[str, str | None] = {}  # schedule key -> practitioner key

    def refs(self, entry: Entry) -> tuple[str, ...]:
        res = entry.resource or {}
        if isinstance(res.get("id"), str):
            return (f"{res['resourceType']}/{res['id']}",)
        return (entry.fullUrl,) if entry.fullUrl else ()

    def key(self, ref: Reference | None, kind: str) -> str:
        """The canonical key of a reference to a ``kind`` resource.

        Raises:
            FieldError: Missing, or not to a ``kind``.
        """
        text = (ref.reference or "").strip() if ref else ""
        if not text:
            raise FieldError(f"no {kind} reference")
        canon = self.keys.get(text)
        if canon is None and (tail := _REF_TAIL.search(text)):
            canon = self.keys.get(tail.group(1))
        if canon is None:
            raise FieldError(f"{kind} reference {text[:80]} is not in the bundle")
        if self.types.get(canon) != kind:
            raise FieldError(f"reference {text[:80]} is not to a {kind}")
        return canon

    # ---------------------------------------------------------------- resources

    def patient(self, row: int, entry: Entry, today: date) -> Record | RowResult:
        res = FhirPatient.model_validate(entry.resource)
        if res.active is False:
            return RowResult(row, "patient", "skipped", "inactive (active is false)")
        name = _name(res.name)
        if name is None:
            raise FieldError("no name")
        given = clean_name(name.given[0] if name.given else None, "given name")
        family = clean_name(name.family, "family name")
        phone = next((t.value for t in res.telecom if t.system == "phone" and t.value), None)
        mrn = next(
            (
                i.value
                for i in res.identifier
                if i.value and i.type and any(c.code == "MR" for c in i.type.coding)
            ),
            next((i.value for i in res.identifier if i.value), None),
        )
        if res.birthDate and re.fullmatch(r"\d{4}(-\d{2})?", res.birthDate):
            raise FieldError("birthDate is incomplete (a full date is needed)")
        return PatientIn(
            row,
            given,
            family,
            parse_birth_date(res.birthDate, today, iso_only=True),
            parse_phone(phone),
            parse_external_id(mrn),
            self.refs(entry),
            *_place(res.address),
        )

    def practitioner(self, row: int, entry: Entry) -> Record | RowResult:
        res = FhirPractitioner.model_validate(entry.resource)
        name = _name(res.name)
        if name is None:
            raise FieldError("no name")
        if name.text:
            display = name.text
        elif name.prefix and name.family:
            display = " ".join([*name.prefix, name.family])
        else:
            display = " ".join([*name.given[:1], name.family or ""])
        return ProviderIn(row, clean_name(display, "name"), res.id, self.refs(entry))

    def schedule(self, row: int, entry: Entry) -> Record | RowResult:
        res = FhirSchedule.model_validate(entry.resource)
        practitioner: str | None = None
        for actor in res.actor:
            try:
                practitioner = self.key(actor, "Practitioner")
                break
            except FieldError:
                continue
        for ref in self.refs(entry):
            self.schedules[ref] = practitioner
        if practitioner is None:
            return RowResult(row, "schedule", "rejected", "no Practitioner actor")
        return RowResult(
            row, "schedule", "skipped", f"not stored; places slots with {practitioner}"
        )

    def slot(self, row: int, entry: Entry) -> Record | RowResult:
        res = FhirSlot.model_validate(entry.resource)
        if res.status not in ("free", "busy"):
            return RowResult(row, "slot", "skipped", f"status {res.status} is not imported")
        schedule = self.key(res.schedule, "Schedule")
        if schedule not in self.schedules:
            raise FieldError(f"schedule {schedule} is not in the bundle")
        practitioner = self.schedules[schedule]
        if practitioner is None:
            raise FieldError(f"schedule {schedule} names no practitioner")
        start = parse_local_time(res.start, "start")
        minutes = _minutes(start, parse_local_time(res.end, "end"))
        return SlotIn(
            row,
            start,
            minutes,
            provider_ref=practitioner,
            busy=res.status == "busy",
            refs=self.refs(entry),
        )

    def appointment(self, row: int, entry: Entry) -> Record | RowResult:
        res = FhirAppointment.model_validate(entry.resource)
        if res.status != "booked":
            return RowResult(row, "appointment", "skipped", f"status {res.status} is not imported")
        actors = [p.actor for p in res.participant if p.actor is not None]
        patient = _first_key(self, actors, "Patient")
        if patient is None:
            raise FieldError("no Patient participant")
        practitioner = _first_key(self, actors, "Practitioner")
        if res.slot:
            return AppointmentIn(
                row,
                patient_ref=patient,
                slot_ref=self.key(res.slot[0], "Slot"),
                provider_ref=practitioner,
            )
        if practitioner is None or not res.start or not res.end:
            raise FieldError("no slot, and no Practitioner participant with start and end")
        start = parse_local_time(res.start, "start")
        return AppointmentIn(
            row,
            patient_ref=patient,
            provider_ref=practitioner,
            start=start,
            minutes=_minutes(start, parse_local_time(res.end, "end")),
        )


def _first_key(bundle: _Bundle, actors: list[Reference], kind: str) -> str | None:
    for actor in actors:
        try:
            return bundle.key(actor, kind)
        except FieldError:
            continue
    return None


def _minutes(start: Any, end: Any) -> int:
    seconds = (end - start).total_seconds()
    if seconds <= 0 or seconds % 60:
        raise FieldError("end is not a whole number of minutes after start")
    return check_minutes(int(seconds // 60))


_KIND: dict[str, Kind] = {
    "Patient": "patient",
    "Practitioner": "provider",
    "Schedule": "schedule",
    "Slot": "slot",
    "Appointment": "appointment",
}


def load_bundle(text: str) -> Bundle:
    """Parse and check the bundle's envelope.

    Raises:
        ImportFileError: ``"bad_json"``, ``"not_a_bundle"`` or ``"too_many_rows"``.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFileError(
            "bad_json", f"not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        kind = data.get("resourceType") if isinstance(data, dict) else None
        raise ImportFileError(
            "not_a_bundle", f"not a FHIR Bundle (resourceType is {str(kind)[:40]!r})"
        )
    entries = data.get("entry")
    if isinstance(entries, list) and len(entries) > MAX_ROWS:
        raise ImportFileError("too_many_rows", f"the bundle has more than {MAX_ROWS:,} entries")
    try:
        return Bundle.model_validate(data)
    except ValidationError as exc:
        raise ImportFileError("not_a_bundle", f"malformed Bundle: {_reason(exc)}") from exc


def parse_bundle(text: str, today: date) -> list[Parsed]:
    """The records of a FHIR R4 Bundle (JSON), patients and practitioners first.

    Args:
        text: The decoded file.
        today: The clinic's date (later dates of birth are rejected).

    Returns:
        Records in dependency order (Patient, Practitioner, Slot, Appointment) and rows
        decided while mapping (skipped types and statuses, invalid resources).

    Raises:
        ImportFileError: The file is not a FHIR Bundle (see :func:`load_bundle`).
    """
    bundle = _Bundle(load_bundle(text))
    staged: dict[str, list[Parsed]] = {k: [] for k in (*SUPPORTED, "other")}
    order = ("Schedule", "Patient", "Practitioner", "Slot", "Appointment")
    by_type: dict[str, list[tuple[int, Entry]]] = {k: [] for k in order}
    for row, entry in enumerate(bundle.entries, start=1):
        kind = (entry.resource or {}).get("resourceType")
        if entry.resource is None:
            staged["other"].append(RowResult(row, "other", "rejected", "entry has no resource"))
        elif not isinstance(kind, str):
            staged["other"].append(RowResult(row, "other", "rejected", "resource has no type"))
        elif kind in by_type:
            by_type[str(kind)].append((row, entry))
        else:
            staged["other"].append(
                RowResult(
                    row, "other", "skipped", f"resource type {str(kind)[:40]} is not imported"
                )
            )
    for kind in order:
        for row, entry in by_type[kind]:
            try:
                if kind == "Patient":
                    item = bundle.patient(row, entry, today)
                elif kind == "Practitioner":
                    item = bundle.practitioner(row, entry)
                elif kind == "Schedule":
                    item = bundle.schedule(row, entry)
                elif kind == "Slot":
                    item = bundle.slot(row, entry)
                else:
                    item = bundle.appointment(row, entry)
            except ValidationError as exc:
                item = RowResult(row, _KIND[kind], "rejected", _reason(exc))
            except FieldError as exc:
                item = RowResult(row, _KIND[kind], "rejected", str(exc))
            staged[kind].append(
                Decided(item, bundle.refs(entry)) if isinstance(item, RowResult) else item
            )
    return [item for kind in (*SUPPORTED, "other") for item in staged[kind]]
