"""Roster and schedule imports: the report, the records parsers produce, and field checks.

Pure: no storage, no I/O. The parsers (:mod:`.imports_csv`, :mod:`.imports_fhir`) turn an
uploaded file into a list of records (:class:`PatientIn`, :class:`ProviderIn`,
:class:`SlotIn`, :class:`AppointmentIn`) and of rows already decided (:class:`RowResult`,
rejected or skipped while parsing); :mod:`.imports_apply` writes the records into the
calendar and decides the rest.

Field rules (shared by every format):

* **Names**: 1 to :data:`MAX_NAME` characters, at least one letter or digit, no control
  characters.
* **Dates of birth**: ``YYYY-MM-DD`` (ISO 8601) or, for US practice-management exports,
  ``MM/DD/YYYY`` (month first, four-digit year; ``DD/MM/YYYY`` is never guessed). Impossible
  dates, dates in the future and dates before :data:`EARLIEST_BIRTH` are rejected.
* **Phones**: 7 to 15 digits (ITU-T E.164 caps a number at 15), an optional leading ``+``,
  and spaces, dots, dashes or brackets between; stored without the separators.
* **External IDs** (MRN): 1 to :data:`MAX_EXTERNAL_ID` printable characters, no spaces.
* **Spreadsheet formulas** (OWASP "CSV injection"): a cell starting with ``=``, ``+``, ``-``,
  ``@``, a tab or a carriage return is rejected unless it is a valid phone number (``+1 ...``),
  so that a later export opened in a spreadsheet cannot run it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any, Literal

MAX_BYTES = 5 * 1024 * 1024
"""Largest accepted upload, bytes (5 MiB: a 50,000-patient roster is about 3 MiB)."""

MAX_ROWS = 50_000
"""Most data rows (CSV) or bundle entries (FHIR) in one import."""

MAX_NAME = 100
"""Longest accepted given, family or provider name, characters."""

MAX_EXTERNAL_ID = 64
"""Longest accepted external ID (MRN), characters (the length of a FHIR ``id``)."""

EARLIEST_BIRTH = date(1900, 1, 1)
"""Earliest accepted date of birth."""

MIN_SLOT_MINUTES = 5
MAX_SLOT_MINUTES = 720
"""Accepted slot lengths, minutes (5 minutes to 12 hours)."""

SLOT_YEARS = (2000, 2100)
"""Years a slot may start in (keeps date arithmetic far from ``datetime``'s limits)."""

FORMATS = ("roster_csv", "schedule_csv", "fhir_json")
"""Import formats: a patient roster CSV, a schedule CSV, an HL7 FHIR R4 Bundle (JSON)."""

Kind = Literal["patient", "provider", "schedule", "slot", "appointment", "other"]
Status = Literal["imported", "unchanged", "rejected", "skipped"]
STATUSES: tuple[Status, ...] = ("imported", "unchanged", "rejected", "skipped")


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (nothing was written).

    Attributes:
        code: ``"too_large"``, ``"too_many_rows"``, ``"unreadable"``, ``"bad_header"``,
            ``"bad_json"``, ``"not_a_bundle"`` or ``"unknown_format"``.
        message: What is wrong, for the person who uploaded it (no PHI).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FieldError(ValueError):
    """One field of a row is invalid; the message is the row's rejection reason."""


@dataclass(frozen=True)
class RowResult:
    """What happened to one row (CSV line) or entry (FHIR bundle entry).

    Attributes:
        row: CSV: the line number in the file (the header is line 1; a row whose quoted
            cell spans lines has the number of its last line); FHIR: the entry's position in
            ``Bundle.entry``, from 1.
        kind: What the row describes.
        status: ``"imported"`` (written), ``"unchanged"`` (already present),
            ``"rejected"`` (invalid or conflicting; see ``reason``) or ``"skipped"``
            (valid but not imported: past slots, unsupported resources).
        reason: Why, in words; empty for a plain import.
        label: A short description (a name, a provider and time) for the person who
            uploaded the file. PHI: shown on the page, never logged or audited.
    """

    row: int
    kind: Kind
    status: Status
    reason: str = ""
    label: str = ""


@dataclass
class ImportReport:
    """The outcome of one import, row by row.

    Attributes:
        format: One of :data:`FORMATS`.
        dry_run: True when nothing was written (a preview).
        rows: Per-row results, by row.
        notes: File-level remarks (ignored columns, the encoding used); no PHI.
    """

    format: str
    dry_run: bool
    rows: list[RowResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        """Rows per status, every status present (``{"imported": 3, "rejected": 1, ...}``)."""
        counts = Counter(r.status for r in self.rows)
        return {status: counts.get(status, 0) for status in STATUSES}

    def counts_by_kind(self) -> dict[str, dict[str, int]]:
        """Rows per kind and status, only kinds present (counts only: safe for audit meta)."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            out.setdefault(r.kind, dict.fromkeys(STATUSES, 0))[r.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``format``, ``dry_run``, ``totals``, ``notes``, ``rows``."""
        return {
            "format": self.format,
            "dry_run": self.dry_run,
            "totals": self.totals(),
            "notes": list(self.notes),
            "rows": [asdict(r) for r in self.rows],
        }


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PatientKey:
    """How a schedule row names the patient to book: an external ID, or names and birth date."""

    external_id: str | None = None
    given: str = ""
    family: str = ""
    birth_date: date | None = None


@dataclass(frozen=True)
class PatientIn:
    """A patient to import. ``refs``: the FHIR references that name it (empty for CSV).

    The address is only what places the patient in a time zone for the calling window
    (:mod:`appliance.policy.address_zone`): city, region (US state), postal code and country
    (ISO 3166-1 alpha-2). No street line is taken: the minimum necessary.
    """

    row: int
    given: str
    family: str
    birth_date: date
    phone: str | None = None
    external_id: str | None = None
    refs: tuple[str, ...] = ()
    city: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None


#: ``PatientIn`` fields kept in the calendar's ``patient_details`` table, in column order.
PATIENT_DETAILS = ("external_id", "phone", "city", "region", "postal_code", "country")


@dataclass(frozen=True)
class ProviderIn:
    """A practitioner to import (FHIR). ``source_id``: its FHIR ``id``, when it has one."""

    row: int
    name: str
    source_id: str | None = None
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlotIn:
    """A slot to open.

    The provider is ``provider_ref`` (a FHIR reference to a practitioner of this import) or
    ``provider`` (CSV: an existing provider's ID or name; an unknown name adds a provider).
    ``busy``: a FHIR slot that is taken unless an appointment of this import books it.
    """

    row: int
    start: datetime
    minutes: int
    provider: str = ""
    provider_ref: str | None = None
    busy: bool = False
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class AppointmentIn:
    """A booking: the patient (``patient_ref`` or ``patient``) in a slot.

    The slot is ``slot_ref`` (a slot of this import) or, failing that, the practitioner's
    (``provider_ref``) slot at ``start`` lasting ``minutes``, opened when missing.
    """

    row: int
    patient_ref: str | None = None
    patient: PatientKey | None = None
    slot_ref: str | None = None
    provider_ref: str | None = None
    start: datetime | None = None
    minutes: int | None = None


@dataclass(frozen=True)
class Decided:
    """A row decided while parsing (rejected or skipped) whose references others may use.

    Later records that refer to it are rejected naming its row.
    """

    result: RowResult
    refs: tuple[str, ...] = ()


Record = PatientIn | ProviderIn | SlotIn | AppointmentIn
Parsed = Record | RowResult | Decided


# --------------------------------------------------------------------------- field checks

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PHONE = re.compile(r"^\+?[0-9 ().\-]+$", re.ASCII)
_US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$", re.ASCII)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
_EXTERNAL_ID = re.compile(r"^[\x21-\x7e]+$")


def check_formula(value: str, field_name: str) -> None:
    """Reject a cell a spreadsheet would run as a formula (OWASP CSV injection).

    Raises:
        FieldError: ``value`` starts with ``=``, ``+``, ``-``, ``@``, a tab or a CR.
    """
    if value.startswith(_FORMULA_START):
        raise FieldError(f"{field_name} starts with {value[0]!r}: looks like a spreadsheet formula")


def clean_name(value: str | None, field_name: str, max_len: int = MAX_NAME) -> str:
    """A required name, whitespace-collapsed.

    Raises:
        FieldError: Missing, too long, a formula, control characters, or no letter/digit.
    """
    text = " ".join((value or "").split())
    if not text:
        raise FieldError(f"{field_name} is missing")
    if len(text) > max_len:
        raise FieldError(f"{field_name} is longer than {max_len} characters")
    check_formula(text, field_name)
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise FieldError(f"{field_name} contains control characters")
    if not any(c.isalnum() for c in text):
        raise FieldError(f"{field_name} has no letters")
    return text


def parse_birth_date(value: str | None, today: date, *, iso_only: bool = False) -> date:
    """A date of birth: ``YYYY-MM-DD`` or (unless ``iso_only``) ``MM/DD/YYYY``.

    Raises:
        FieldError: Missing, malformed, impossible (``2023-02-30``), in the future or
            before :data:`EARLIEST_BIRTH`.
    """
    text = (value or "").strip()
    if not text:
        raise FieldError("birth_date is missing")
    try:
        if _ISO_DATE.match(text):
            born = date.fromisoformat(text)
        elif (us := _US_DATE.match(text)) and not iso_only:
            born = date(int(us.group(3)), int(us.group(1)), int(us.group(2)))
        else:
            expected = "YYYY-MM-DD" if iso_only else "YYYY-MM-DD or MM/DD/YYYY"
            raise FieldError(f"birth_date is not a date ({expected})")
    except ValueError as exc:
        if isinstance(exc, FieldError):
            raise
        raise FieldError("birth_date is not a real calendar date") from exc
    if born > today:
        raise FieldError("birth_date is in the future")
    if born < EARLIEST_BIRTH:
        raise FieldError(f"birth_date is before {EARLIEST_BIRTH.year}")
    return born


def parse_phone(value: str | None) -> str | None:
    """An optional phone number, stored as ``+`` and digits (separators dropped).

    Raises:
        FieldError: Not a phone number (letters, a formula) or not 7-15 digits.
    """
    text = (value or "").strip()
    if not text:
        return None
    if not _PHONE.match(text) or text.count("+") > 1:
        check_formula(text, "phone")
        raise FieldError("phone is not a phone number")
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:
        raise FieldError("phone must have 7 to 15 digits")
    return ("+" if text.startswith("+") else "") + digits


def parse_external_id(value: str | None) -> str | None:
    """An optional external ID (MRN).

    Raises:
        FieldError: Too long, a formula, or not printable ASCII without spaces.
    """
    text = (value or "").strip()
    if not text:
        return None
    if len(text) > MAX_EXTERNAL_ID:
        raise FieldError(f"external_id is longer than {MAX_EXTERNAL_ID} characters")
    check_formula(text, "external_id")
    if not _EXTERNAL_ID.match(text):
        raise FieldError("external_id must be printable ASCII without spaces")
    return text


#: Longest city, region or postal code kept, characters.
MAX_PLACE = 64


def parse_place(value: str | None, field_name: str) -> str | None:
    """An optional city, region (US state) or postal code: one line of printable text.

    Raises:
        FieldError: Too long, a formula, or a control character.
    """
    text = " ".join((value or "").split())
    if not text:
        return None
    if len(text) > MAX_PLACE:
        raise FieldError(f"{field_name} is longer than {MAX_PLACE} characters")
    check_formula(text, field_name)
    if not text.isprintable():
        raise FieldError(f"{field_name} has a control character")
    return text


#: Spellings of the US taken besides its ISO code (exports often write these).
_US_NAMES = {"usa", "u.s.a.", "u.s.", "united states", "united states of america"}


def parse_country(value: str | None) -> str | None:
    """An optional country as an ISO 3166-1 alpha-2 code (``US``, ``ca``), upper-cased.

    ``USA`` and ``United States`` are read as ``US``; other country names are refused
    rather than guessed.

    Raises:
        FieldError: Not two letters.
    """
    text = (value or "").strip()
    if not text:
        return None
    if text.casefold() in _US_NAMES:
        return "US"
    if not re.fullmatch(r"[A-Za-z]{2}", text):
        raise FieldError("country must be a two-letter ISO 3166-1 code (US, CA, GB...)")
    return text.upper()


def parse_local_time(value: str | None, field_name: str = "start") -> datetime:
    """A slot time as naive local clinic time (the calendar's convention).

    ISO 8601 date and time (``2026-12-01T09:30``, ``2026-12-01 09:30:00``); with an offset
    (``+01:00``, ``Z``) it is converted to the appliance's system time zone, which is the
    clinic's; without one it is taken as clinic time already.

    Raises:
        FieldError: Missing, not a date and time, outside :data:`SLOT_YEARS`, or not on a
            whole minute.
    """
    text = (value or "").strip()
    if not text:
        raise FieldError(f"{field_name} is missing")
    if len(text) < 16 or text[10] not in "Tt ":
        raise FieldError(f"{field_name} is not an ISO 8601 date and time (YYYY-MM-DDTHH:MM)")
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FieldError(
            f"{field_name} is not an ISO 8601 date and time (YYYY-MM-DDTHH:MM)"
        ) from exc
    if not SLOT_YEARS[0] <= when.year <= SLOT_YEARS[1]:
        raise FieldError(f"{field_name} is not between {SLOT_YEARS[0]} and {SLOT_YEARS[1]}")
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)
    if when.second or when.microsecond:
        raise FieldError(f"{field_name} is not on a whole minute")
    return when


def check_minutes(minutes: int) -> int:
    """A slot length within :data:`MIN_SLOT_MINUTES`..:data:`MAX_SLOT_MINUTES`.

    Raises:
        FieldError: Out of range.
    """
    if not MIN_SLOT_MINUTES <= minutes <= MAX_SLOT_MINUTES:
        raise FieldError(f"minutes must be between {MIN_SLOT_MINUTES} and {MAX_SLOT_MINUTES}")
    return minutes


def slug(text: str) -> str:
    """ASCII letters and digits, lower case, joined by dashes ("Dr. Ana Ruiz" -> "dr-ana-ruiz")."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join(re.findall(r"[a-z0-9]+", ascii_text.lower()))[:48] or "x"
