"""Patient roster and schedule CSV files: decoding, header mapping and row checks.

Both formats need a header row. Column names are matched case-insensitively, with spaces and
dashes read as underscores, and with common aliases (``first_name``, ``last_name``, ``dob``,
``mrn``...). Unknown columns are ignored and named in the report's notes.

* **Roster** (:func:`parse_roster`): ``given_name``, ``family_name``, ``birth_date``
  required; ``phone``, ``external_id`` (MRN) and the address's ``city``, ``region``
  (``state``), ``postal_code`` (``zip``) and ``country`` (ISO 3166-1 alpha-2) optional: the
  calling window's time zone comes from them (:mod:`appliance.policy.address_zone`). A street
  column is ignored like any unknown one: the box keeps no street address.
* **Schedule** (:func:`parse_schedule`): ``provider`` (an ID such as ``prov-patel`` or a
  name such as ``Dr. Patel``), ``start`` (ISO 8601 local clinic time, see
  :func:`~.imports_model.parse_local_time`) and ``minutes`` required; to book the slot, the
  patient as ``patient`` (their external ID) or ``patient_given_name``,
  ``patient_family_name`` and ``patient_birth_date``.

Files may be UTF-8 (with or without a byte-order mark), UTF-16 with a byte-order mark, or,
failing UTF-8, Windows-1252 (older spreadsheet exports; said in the notes). Delimiters ``,``
``;`` and tab are recognised (:class:`csv.Sniffer`, then the header decides); CRLF and LF
line ends both work. Row numbers are line numbers in the file (the header is line 1).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any, TypeVar

from appliance.admin.imports_model import (
    MAX_BYTES,
    MAX_ROWS,
    AppointmentIn,
    FieldError,
    ImportFileError,
    Parsed,
    PatientIn,
    PatientKey,
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

ALIASES = {
    "first_name": "given_name",
    "firstname": "given_name",
    "given": "given_name",
    "last_name": "family_name",
    "lastname": "family_name",
    "surname": "family_name",
    "family": "family_name",
    "dob": "birth_date",
    "date_of_birth": "birth_date",
    "birthdate": "birth_date",
    "mrn": "external_id",
    "patient_id": "external_id",
    "phone_number": "phone",
    "telephone": "phone",
    "state": "region",
    "province": "region",
    "zip": "postal_code",
    "zip_code": "postal_code",
    "zipcode": "postal_code",
    "postcode": "postal_code",
    "country_code": "country",
    "town": "city",
    "duration": "minutes",
    "length": "minutes",
    "patient_external_id": "patient",
    "patient_mrn": "patient",
    "patient_dob": "patient_birth_date",
}

ROSTER_REQUIRED = ("given_name", "family_name", "birth_date")
ROSTER_COLUMNS = (
    *ROSTER_REQUIRED,
    "phone",
    "external_id",
    "city",
    "region",
    "postal_code",
    "country",
)
SCHEDULE_REQUIRED = ("provider", "start", "minutes")
SCHEDULE_COLUMNS = (
    *SCHEDULE_REQUIRED,
    "patient",
    "patient_given_name",
    "patient_family_name",
    "patient_birth_date",
)
_BLANK = re.compile(r"^\s*$")
T = TypeVar("T")


def decode(data: bytes) -> tuple[str, list[str]]:
    """The text of an upload, and a note when it was not UTF-8.

    Raises:
        ImportFileError: ``"too_large"`` over :data:`MAX_BYTES`; ``"unreadable"`` for
            binary data or bytes that are neither UTF-8 nor Windows-1252.
    """
    if len(data) > MAX_BYTES:
        raise ImportFileError(
            "too_large", f"the file is larger than {MAX_BYTES // (1024 * 1024)} MB"
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), ["read as UTF-16"]
        except UnicodeDecodeError as exc:
            raise ImportFileError("unreadable", "the file is not valid UTF-16 text") from exc
    if b"\x00" in data:
        raise ImportFileError("unreadable", "the file is binary, not CSV or JSON text")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), ["not UTF-8: read as Windows-1252"]
    except UnicodeDecodeError as exc:
        raise ImportFileError("unreadable", "the file is not UTF-8 text") from exc


def canonical(name: str) -> str:
    """A header cell as a column name (``" Date of Birth"`` -> ``"birth_date"``)."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return ALIASES.get(key, key)


def sniff_columns(text: str) -> tuple[str, list[str]]:
    """The delimiter and canonical header of a CSV text.

    Tries the delimiter :class:`csv.Sniffer` proposes, then ``,``, ``;`` and tab, and keeps
    the first whose header names the most known columns.

    Raises:
        ImportFileError: ``"bad_header"``: the file is empty or no delimiter gives a header
            with a known column.
    """
    sample = text[:8192]
    candidates = [",", ";", "\t"]
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
        candidates.insert(0, sniffed)
    except csv.Error:
        pass
    known = set(ROSTER_COLUMNS) | set(SCHEDULE_COLUMNS)
    best: tuple[int, str, list[str]] = (0, ",", [])
    for delimiter in candidates:
        try:
            header = next(csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter), [])
        except csv.Error:
            continue
        columns = [canonical(h) for h in header]
        score = len(known.intersection(columns))
        if score > best[0]:
            best = (score, delimiter, columns)
    if not best[0]:
        raise ImportFileError(
            "bad_header",
            "no header row with known columns (given_name, family_name, birth_date or "
            "provider, start, minutes)",
        )
    return best[1], best[2]


def csv_kind(columns: list[str]) -> str | None:
    """``"roster_csv"`` or ``"schedule_csv"`` for a canonical header, else ``None``."""
    if set(ROSTER_REQUIRED) <= set(columns):
        return "roster_csv"
    if set(SCHEDULE_REQUIRED) <= set(columns):
        return "schedule_csv"
    return None


def _rows(
    text: str, required: tuple[str, ...], wanted: tuple[str, ...], notes: list[str]
) -> Iterator[tuple[int, dict[str, str]] | RowResult]:
    """The data rows as ``(line, {column: cell})``, or a rejected row when its shape is wrong.

    Raises:
        ImportFileError: ``"bad_header"`` (missing or repeated columns), ``"too_many_rows"``
            or ``"unreadable"`` (malformed CSV).
    """
    delimiter, columns = sniff_columns(text)
    missing = [c for c in required if c not in columns]
    if missing:
        raise ImportFileError("bad_header", f"the header lacks column(s): {', '.join(missing)}")
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise ImportFileError("bad_header", f"repeated column(s): {', '.join(repeated)}")
    ignored = [c for c in columns if c not in wanted]
    if ignored:
        notes.append(f"ignored column(s): {', '.join(c or '(blank)' for c in ignored)}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    count = 0
    try:
        next(reader)
        for cells in reader:
            if not cells or all(_BLANK.match(c) for c in cells):
                continue
            count += 1
            if count > MAX_ROWS:
                raise ImportFileError("too_many_rows", f"the file has more than {MAX_ROWS:,} rows")
            if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
                yield RowResult(
                    reader.line_num,
                    "other",
                    "rejected",
                    f"{len(cells)} cells but the header has {len(columns)} columns",
                )
                continue
            yield reader.line_num, dict(zip(columns, cells, strict=False))
    except csv.Error as exc:
        raise ImportFileError(
            "unreadable", f"malformed CSV at line {reader.line_num}: {exc}"
        ) from exc


class _Errors:
    """Collects a row's field failures so that one report line names them all."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def check(self, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or ``None`` after noting its :class:`FieldError`."""
        try:
            return fn(*args)
        except FieldError as exc:
            self.reasons.append(str(exc))
            return None

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def _label(cells: dict[str, str], *keys: str) -> str:
    """A short display of some cells (names, provider and time) for the report."""
    return " ".join(" ".join((cells.get(k) or "").split())[:40] for k in keys).strip()


def parse_roster(text: str, today: date, notes: list[str]) -> list[Parsed]:
    """The patients of a roster CSV, and the rows rejected for their fields.

    Args:
        text: The decoded file.
        today: The clinic's date (later dates of birth are rejected).
        notes: File-level remarks are appended here.

    Raises:
        ImportFileError: The file as a whole is unusable (see :func:`_rows`).
    """
    out: list[Parsed] = []
    for item in _rows(text, ROSTER_REQUIRED, ROSTER_COLUMNS, notes):
        if isinstance(item, RowResult):
            out.append(item)
            continue
        line, cells = item
        errors = _Errors()
        given = errors.check(clean_name, cells.get("given_name"), "given_name")
        family = errors.check(clean_name, cells.get("family_name"), "family_name")
        born = errors.check(parse_birth_date, cells.get("birth_date"), today)
        phone = errors.check(parse_phone, cells.get("phone"))
        external_id = errors.check(parse_external_id, cells.get("external_id"))
        city = errors.check(parse_place, cells.get("city"), "city")
        region = errors.check(parse_place, cells.get("region"), "region")
        postal_code = errors.check(parse_place, cells.get("postal_code"), "postal_code")
        country = errors.check(parse_country, cells.get("country"))
        label = _label(cells, "given_name", "family_name")
        if errors.reasons or given is None or family is None or born is None:
            out.append(RowResult(line, "patient", "rejected", str(errors), label))
            continue
        out.append(
            PatientIn(
                line,
                given,
                family,
                born,
                phone,
                external_id,
                city=city,
                region=region,
                postal_code=postal_code,
                country=country,
            )
        )
    return out


def _minutes(value: str | None) -> int:
    text = (value or "").strip()
    if not text:
        raise FieldError("minutes is missing")
    if not (text.isascii() and text.isdigit()):
        raise FieldError("minutes is not a whole number")
    return check_minutes(int(text))


def _patient_key(cells: dict[str, str], today: date) -> PatientKey | None:
    external_id = parse_external_id(cells.get("patient"))
    if external_id:
        return PatientKey(external_id=external_id)
    names = [cells.get(k, "").strip() for k in ("patient_given_name", "patient_family_name")]
    born = (cells.get("patient_birth_date") or "").strip()
    if not any(names) and not born:
        return None
    return PatientKey(
        given=clean_name(names[0], "patient_given_name"),
        family=clean_name(names[1], "patient_family_name"),
        birth_date=parse_birth_date(born, today),
    )


def parse_schedule(text: str, today: date, notes: list[str]) -> list[Parsed]:
    """The slots (and bookings) of a schedule CSV, and the rows rejected for their fields.

    A row with a patient gives a slot and an appointment in it (same row number).

    Args:
        text: The decoded file.
        today: The clinic's date (for patients' dates of birth).
        notes: File-level remarks are appended here.

    Raises:
        ImportFileError: The file as a whole is unusable (see :func:`_rows`).
    """
    slots: list[Parsed] = []
    bookings: list[Parsed] = []
    for item in _rows(text, SCHEDULE_REQUIRED, SCHEDULE_COLUMNS, notes):
        if isinstance(item, RowResult):
            slots.append(item)
            continue
        line, cells = item
        errors = _Errors()
        provider = errors.check(clean_name, cells.get("provider"), "provider")
        start = errors.check(parse_local_time, cells.get("start"))
        minutes = errors.check(_minutes, cells.get("minutes"))
        patient = errors.check(_patient_key, cells, today)
        label = _label(cells, "provider", "start")
        if errors.reasons or provider is None or start is None or minutes is None:
            slots.append(RowResult(line, "slot", "rejected", str(errors), label))
            continue
        ref = f"row:{line}"
        slots.append(SlotIn(line, start, minutes, provider, refs=(ref,)))
        if patient is not None:
            bookings.append(AppointmentIn(line, patient=patient, slot_ref=ref))
    return slots + bookings
