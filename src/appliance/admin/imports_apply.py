"""Write parsed import records into the built-in calendar, in one transaction.

:func:`apply_records` runs every record against the calendar inside one ``BEGIN IMMEDIATE``
transaction (:meth:`SqliteCalendar.transaction`): each is checked against what the database
and the earlier rows hold, then written or reported. A preview (``dry_run``) runs exactly the
same checks and writes and then rolls back, so it reports what a real import would do. An
unexpected database error rolls everything back: the import is all or nothing for the
accepted rows.

Decisions (re-importing the same file changes nothing and reports ``"unchanged"``):

* **Patients** are the same when their external IDs are equal, or, without one, when their
  names (after :func:`~appliance.agent.calendar.matching.normalise_name`) and dates of birth
  are equal; fuzzy matching is for speech, not for records. A known patient with a new phone
  or external ID gets it (``"imported"``, "details updated"). An external ID already held by
  a patient with other names or birth date is a conflict (rejected). A second patient with
  the same names and birth date but another external ID is imported, with a warning: the
  phone identity check cannot tell the two apart.
* **Providers** (schedule CSV) are found by ID, then by name (normalised); an unknown name
  adds a provider ``prov-<name slug>``; an unknown ``prov-...`` ID is rejected. FHIR
  practitioners become ``prov-<FHIR id slug>`` unless a provider of the same name exists.
* **Slots** in the past are skipped; a slot at the same provider and start with the same end
  is unchanged, with another end or overlapping another slot it is rejected.
* **Appointments** book a free slot; the same patient already booked there is unchanged,
  another patient is a conflict; past slots are skipped.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from appliance.admin.imports_model import PATIENT_DETAILS as DETAILS
from appliance.admin.imports_model import (
    AppointmentIn,
    Decided,
    Kind,
    Parsed,
    PatientIn,
    PatientKey,
    ProviderIn,
    RowResult,
    SlotIn,
    Status,
    slug,
)
from appliance.agent.calendar import SqliteCalendar
from appliance.agent.calendar.matching import normalise_name
from appliance.agent.calendar.schema import fmt, parse, slot_id

_ORDER = {"patient": 0, "provider": 1, "schedule": 2, "slot": 3, "appointment": 4, "other": 5}


class _Rollback(Exception):
    """Raised inside the transaction to undo a preview."""


class Reject(Exception):
    """A record cannot be applied; the message is the reason."""


class _Applier:
    """Applies records on one connection inside the import's transaction."""

    def __init__(self, conn: sqlite3.Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.results: list[RowResult] = []
        self.refs: dict[str, str] = {}  # FHIR reference -> calendar ID
        self.failed: dict[str, str] = {}  # FHIR reference -> why it has no calendar ID
        self.seen: dict[tuple[object, ...], int] = {}  # in-file duplicate keys -> first row
        self.busy: set[str] = set()
        self.names: dict[str, tuple[str, str]] = {}  # patient ID -> normalised names
        self.providers: list[tuple[str, str]] | None = None  # (ID, normalised name), cached

    def note(self, row: int, kind: Kind, status: Status, reason: str = "", label: str = "") -> None:
        self.results.append(RowResult(row, kind, status, reason, label))

    def bind(self, refs: Iterable[str], calendar_id: str) -> None:
        for ref in refs:
            self.refs[ref] = calendar_id

    def fail(self, refs: Iterable[str], why: str) -> None:
        for ref in refs:
            self.failed[ref] = why

    def resolve(self, ref: str, noun: str) -> str:
        if ref in self.refs:
            return self.refs[ref]
        raise Reject(self.failed.get(ref, f"{noun} {ref} was not imported (see its row)"))

    def first_seen(self, key: tuple[object, ...], row: int) -> int | None:
        earlier = self.seen.get(key)
        if earlier is None:
            self.seen[key] = row
        return earlier

    # ---------------------------------------------------------------- patients

    def _details(self, patient_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            f"SELECT {', '.join(DETAILS)} FROM patient_details WHERE patient_id = ?", [patient_id]
        ).fetchone()
        return row

    def _by_external_id(self, external_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT p.* FROM patient_details d JOIN patients p ON p.id = d.patient_id"
            " WHERE d.external_id = ?",
            [external_id],
        ).fetchone()
        return row

    def _by_names(self, given: str, family: str, born: date) -> list[sqlite3.Row]:
        rows = self.conn.execute(
            "SELECT * FROM patients WHERE birth_date = ? ORDER BY id", [born.isoformat()]
        ).fetchall()
        want = (normalise_name(given), normalise_name(family))
        return [r for r in rows if self._normalised(r) == want]

    def _normalised(self, row: sqlite3.Row) -> tuple[str, str]:
        """A patient row's normalised names, computed once per import."""
        names = self.names.get(row["id"])
        if names is None:
            names = (normalise_name(row["given_name"]), normalise_name(row["family_name"]))
            self.names[row["id"]] = names
        return names

    def patient(self, p: PatientIn) -> None:
        label = f"{p.given} {p.family}"
        names = ("name", normalise_name(p.given), normalise_name(p.family), p.birth_date)
        earlier = self.first_seen(names, p.row)
        why = f"duplicate of row {earlier}"
        if p.external_id and earlier is None:
            earlier = self.first_seen(("external_id", p.external_id), p.row)
            why = f"external_id already used in row {earlier}"
        if earlier is not None:
            self.note(p.row, "patient", "rejected", why, label)
            self.fail(p.refs, f"patient of row {p.row} is a duplicate")
            return
        try:
            patient_id, status, reason = self._upsert_patient(p)
        except Reject as exc:
            self.note(p.row, "patient", "rejected", str(exc), label)
            self.fail(p.refs, f"patient of row {p.row} was rejected")
            return
        self.bind(p.refs, patient_id)
        self.note(p.row, "patient", status, reason, label)

    def _upsert_patient(self, p: PatientIn) -> tuple[str, Status, str]:
        same = self._by_external_id(p.external_id) if p.external_id else None
        namesakes = self._by_names(p.given, p.family, p.birth_date)
        if same is not None and same["id"] not in {r["id"] for r in namesakes}:
            raise Reject("external_id already belongs to a patient with other names or birth date")
        warning = ""
        if same is None:
            for candidate in namesakes:
                held = self._details(candidate["id"])
                if p.external_id and held is not None and held["external_id"]:
                    warning = "another patient has the same names and birth date"
                    continue
                same = candidate
                break
        if same is None:
            new_id = f"pat-{uuid.uuid4().hex[:16]}"
            self.conn.execute(
                "INSERT INTO patients (id, given_name, family_name, birth_date)"
                " VALUES (?, ?, ?, ?)",
                [new_id, p.given, p.family, p.birth_date.isoformat()],
            )
            given = tuple(getattr(p, f) for f in DETAILS)
            if any(given):
                self._write_details(new_id, given)
            if warning:
                warning += "; the phone identity check cannot tell them apart"
            return new_id, "imported", warning
        held = self._details(same["id"])
        old = tuple(held[f] for f in DETAILS) if held is not None else (None,) * len(DETAILS)
        new = tuple(getattr(p, f) or was for f, was in zip(DETAILS, old, strict=True))
        if new == old:
            return same["id"], "unchanged", "already registered"
        self._write_details(same["id"], new)
        changed = [n for n, a, b in zip(DETAILS, old, new, strict=True) if a != b]
        return same["id"], "imported", f"already registered; {' and '.join(changed)} updated"

    def _write_details(self, patient_id: str, values: tuple[str | None, ...]) -> None:
        self.conn.execute(
            f"INSERT INTO patient_details (patient_id, {', '.join(DETAILS)})"
            f" VALUES (?{', ?' * len(DETAILS)}) ON CONFLICT (patient_id) DO UPDATE SET "
            + ", ".join(f"{f} = excluded.{f}" for f in DETAILS),
            [patient_id, *values],
        )

    def find_patient(self, key: PatientKey) -> str:
        if key.external_id:
            row = self._by_external_id(key.external_id)
            if row is None:
                raise Reject("no patient has this external_id")
            return str(row["id"])
        if key.birth_date is None:
            raise Reject("the patient is not identified")
        rows = self._by_names(key.given, key.family, key.birth_date)
        if not rows:
            raise Reject("no patient with these names and birth date")
        if len(rows) > 1:
            raise Reject("several patients have these names and birth date; give the external_id")
        return str(rows[0]["id"])

    # ---------------------------------------------------------------- providers

    def _new_provider_id(self, base: str) -> str:
        candidate, n = f"prov-{base}", 1
        while self.conn.execute("SELECT 1 FROM providers WHERE id = ?", [candidate]).fetchone():
            n += 1
            candidate = f"prov-{base}-{n}"
        return candidate

    def _provider_by_name(self, name: str) -> str | None:
        if self.providers is None:
            rows = self.conn.execute("SELECT id, name FROM providers ORDER BY id").fetchall()
            self.providers = [(str(r["id"]), normalise_name(r["name"])) for r in rows]
        want = normalise_name(name)
        matches = [pid for pid, normalised in self.providers if normalised == want]
        if len(matches) > 1:
            raise Reject("several providers have this name; give the provider ID")
        return str(matches[0]) if matches else None

    def provider(self, p: ProviderIn) -> None:
        own = f"prov-{slug(p.source_id)}" if p.source_id else None
        row = self.conn.execute("SELECT * FROM providers WHERE id = ?", [own]).fetchone()
        try:
            if row is not None:
                assert own is not None
                status: Status = "unchanged" if row["name"] == p.name else "imported"
                if status == "imported":
                    self.conn.execute("UPDATE providers SET name = ? WHERE id = ?", [p.name, own])
                    self.providers = None
                self.bind(p.refs, own)
                self.note(
                    p.row, "provider", status, "" if status == "unchanged" else "renamed", p.name
                )
                return
            existing = self._provider_by_name(p.name)
        except Reject as exc:
            self.note(p.row, "provider", "rejected", str(exc), p.name)
            self.fail(p.refs, f"practitioner of row {p.row} was rejected")
            return
        if existing is not None:
            self.bind(p.refs, existing)
            self.note(p.row, "provider", "unchanged", f"same name as provider {existing}", p.name)
            return
        new_id = own if own is not None else self._new_provider_id(slug(p.name))
        self.conn.execute("INSERT INTO providers (id, name) VALUES (?, ?)", [new_id, p.name])
        self.providers = None
        self.bind(p.refs, new_id)
        self.note(p.row, "provider", "imported", f"new provider {new_id}", p.name)

    def provider_for(self, text: str, row: int) -> str:
        """The provider a schedule CSV row names (ID or name), added when a new name."""
        if self.conn.execute("SELECT 1 FROM providers WHERE id = ?", [text]).fetchone():
            return text
        existing = self._provider_by_name(text)
        if existing is not None:
            return existing
        if text.startswith("prov-") and " " not in text:
            raise Reject(f"no provider {text}")
        new_id = self._new_provider_id(slug(text))
        self.conn.execute("INSERT INTO providers (id, name) VALUES (?, ?)", [new_id, text])
        self.providers = None
        self.note(row, "provider", "imported", f"new provider {new_id}", text)
        return new_id

    # ---------------------------------------------------------------- slots

    def _slot_label(self, s: SlotIn) -> str:
        who = s.provider
        if s.provider_ref in self.refs:
            row = self.conn.execute(
                "SELECT name FROM providers WHERE id = ?", [self.refs[s.provider_ref]]
            ).fetchone()
            who = row["name"] if row is not None else ""
        return f"{who} {s.start:%Y-%m-%d %H:%M} ({s.minutes} min)".strip()

    def slot(self, s: SlotIn) -> None:
        label = self._slot_label(s)
        try:
            status, reason, sid = self._open_slot(s)
        except Reject as exc:
            self.note(s.row, "slot", "rejected", str(exc), label)
            self.fail(s.refs, f"slot of row {s.row} was rejected")
            return
        if sid is None:
            self.fail(s.refs, f"slot of row {s.row} is in the past")
        else:
            self.bind(s.refs, sid)
        self.note(s.row, "slot", status, reason, label)

    def _open_slot(self, s: SlotIn) -> tuple[Status, str, str | None]:
        if s.provider_ref is not None:
            provider_id = self.resolve(s.provider_ref, "practitioner")
        else:
            provider_id = self.provider_for(s.provider, s.row)
        if s.start < self.now:
            return "skipped", "starts in the past", None
        end = s.start + timedelta(minutes=s.minutes)
        earlier = self.first_seen(("slot", provider_id, s.start), s.row)
        new_id = slot_id(provider_id, s.start)
        same = self.conn.execute(
            "SELECT * FROM slots WHERE provider_id = ? AND start = ?", [provider_id, fmt(s.start)]
        ).fetchone()
        if same is not None:
            if parse(same["end"]) != end:
                raise Reject(
                    f"the provider already has a slot at this time ending {same['end'][11:16]}"
                )
            if earlier is not None:
                return "rejected", f"duplicate of row {earlier}", same["id"]
            return "unchanged", "slot already open", same["id"]
        clash = self.conn.execute(
            'SELECT start FROM slots WHERE provider_id = ? AND start < ? AND "end" > ? LIMIT 1',
            [provider_id, fmt(end), fmt(s.start)],
        ).fetchone()
        if clash is not None:
            raise Reject(f"overlaps the provider's slot at {clash['start'][:16].replace('T', ' ')}")
        self.conn.execute(
            'INSERT INTO slots (id, provider_id, start, "end", free) VALUES (?, ?, ?, ?, 1)',
            [new_id, provider_id, fmt(s.start), fmt(end)],
        )
        if s.busy:
            self.busy.add(new_id)
        return "imported", "", new_id

    # ---------------------------------------------------------------- appointments

    def appointment(self, a: AppointmentIn) -> None:
        label = ""
        try:
            if a.patient_ref is not None:
                patient_id = self.resolve(a.patient_ref, "patient")
            elif a.patient is not None:
                patient_id = self.find_patient(a.patient)
            else:
                raise Reject("no patient participant")
            slot_row = self._slot_for(a)
            if slot_row is None:
                self.note(a.row, "appointment", "skipped", "the slot is in the past")
                return
            label = f"{slot_row['provider_id']} {slot_row['start'][:16].replace('T', ' ')}"
            status, reason = self._book(patient_id, slot_row)
        except Reject as exc:
            self.note(a.row, "appointment", "rejected", str(exc), label)
            return
        self.note(a.row, "appointment", status, reason, label)

    def _slot_for(self, a: AppointmentIn) -> sqlite3.Row | None:
        provider_id = self.resolve(a.provider_ref, "practitioner") if a.provider_ref else None
        if a.slot_ref is not None:
            if a.slot_ref not in self.refs and "in the past" in self.failed.get(a.slot_ref, ""):
                return None
            sid = self.resolve(a.slot_ref, "slot")
        elif provider_id is not None and a.start is not None and a.minutes is not None:
            if a.start < self.now:
                return None
            slot = SlotIn(a.row, a.start, a.minutes, provider_ref=a.provider_ref)
            status, reason, found = self._open_slot(slot)
            if status != "unchanged":
                self.note(a.row, "slot", status, reason, self._slot_label(slot))
            if found is None:
                return None
            sid = found
        else:
            raise Reject("no slot, and no practitioner with a start and end")
        row: sqlite3.Row = self.conn.execute("SELECT * FROM slots WHERE id = ?", [sid]).fetchone()
        if provider_id is not None and row["provider_id"] != provider_id:
            raise Reject("the practitioner is not the slot's")
        if parse(row["start"]) < self.now:
            return None
        return row

    def _book(self, patient_id: str, slot_row: sqlite3.Row) -> tuple[Status, str]:
        booked = self.conn.execute(
            "SELECT patient_id FROM appointments WHERE slot_id = ? AND status = 'booked'",
            [slot_row["id"]],
        ).fetchone()
        if booked is not None:
            if booked["patient_id"] == patient_id:
                return "unchanged", "already booked"
            raise Reject("the slot is already booked for another patient")
        if not slot_row["free"]:
            raise Reject("the slot is marked busy")
        self.conn.execute("UPDATE slots SET free = 0 WHERE id = ?", [slot_row["id"]])
        self.busy.discard(slot_row["id"])
        self.conn.execute(
            "INSERT INTO appointments VALUES (?, ?, ?, ?, ?, ?, 'booked', datetime('now'))",
            [
                f"appt-{uuid.uuid4().hex[:16]}",
                patient_id,
                slot_row["provider_id"],
                slot_row["id"],
                slot_row["start"],
                slot_row["end"],
            ],
        )
        return "imported", ""

    def finish(self) -> None:
        """Mark the imported busy slots that no appointment booked as taken."""
        for sid in sorted(self.busy):
            self.conn.execute("UPDATE slots SET free = 0 WHERE id = ?", [sid])


def apply_records(
    calendar: SqliteCalendar, items: Iterable[Parsed], *, now: datetime, dry_run: bool
) -> list[RowResult]:
    """Apply parsed records in one transaction and report every row.

    Records are applied in the order given (parsers put patients and providers before the
    slots and appointments that refer to them); rows already decided while parsing are
    reported as they are.

    Args:
        calendar: The open calendar.
        items: Records and pre-decided rows from a parser.
        now: Naive local clinic time; earlier slots and appointments are skipped.
        dry_run: Check and report, then roll back (a preview).

    Returns:
        One or more results per row, by row.

    Raises:
        SchedulingError: The database failed or stayed locked (nothing was written).
    """
    applier: _Applier | None = None
    try:
        with calendar.transaction() as conn:
            applier = _Applier(conn, now)
            for item in items:
                if isinstance(item, RowResult):
                    applier.results.append(item)
                elif isinstance(item, Decided):
                    done = item.result
                    applier.results.append(done)
                    applier.fail(item.refs, f"{done.kind} of row {done.row} was {done.status}")
                elif isinstance(item, PatientIn):
                    applier.patient(item)
                elif isinstance(item, ProviderIn):
                    applier.provider(item)
                elif isinstance(item, SlotIn):
                    applier.slot(item)
                else:
                    applier.appointment(item)
            applier.finish()
            if dry_run:
                raise _Rollback
    except _Rollback:
        pass
    assert applier is not None
    return sorted(applier.results, key=lambda r: (r.row, _ORDER[r.kind]))
