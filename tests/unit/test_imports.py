"""Roster and schedule imports (appliance.admin.imports) into a real SqliteCalendar.

The files under tests/unit/data/imports are the inputs: a roster CSV (BOM, ``;``, CRLF, US and
ISO dates, good and bad rows), a schedule CSV and an HL7 FHIR R4 Bundle. Times are checked in
the America/New_York zone (set for each test), the zone the FHIR offsets are written in.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.admin.imports import (
    MAX_BYTES,
    MAX_ROWS,
    ImportFileError,
    ImportReport,
    audit_counts,
    detect_format,
    import_into,
    run_import,
)
from appliance.agent.calendar import SqliteCalendar

DATA = Path(__file__).parent / "data" / "imports"
NOW = datetime(2026, 11, 30, 9, 0)  # a Monday


@pytest.fixture(autouse=True)
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def cal(tmp_path: Path) -> Iterator[SqliteCalendar]:
    with SqliteCalendar(tmp_path / "calendar.sqlite") as calendar:
        calendar.add_provider("prov-patel", "Dr. Patel")
        yield calendar


def rows(report: ImportReport) -> list[tuple[int, str, str, str]]:
    return [(r.row, r.kind, r.status, r.reason) for r in report.rows]


def load(cal: SqliteCalendar, name: str, *, dry_run: bool = False) -> ImportReport:
    data = (DATA / name).read_bytes()
    return import_into(cal, data, filename=name, dry_run=dry_run, now=NOW)


def count(cal: SqliteCalendar, table: str) -> int:
    with cal.transaction() as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


# --------------------------------------------------------------------------- roster CSV

ROSTER_ROWS = [
    (2, "patient", "imported", ""),
    (3, "patient", "imported", ""),
    (4, "patient", "imported", ""),
    (5, "patient", "rejected", "given_name is missing"),
    (6, "patient", "rejected", "birth_date is in the future"),
    (7, "patient", "rejected", "birth_date is not a real calendar date"),
    (8, "patient", "rejected", "given_name starts with '=': looks like a spreadsheet formula"),
    (9, "patient", "rejected", "duplicate of row 2"),
    (10, "patient", "rejected", "family_name is longer than 100 characters"),
    (11, "patient", "rejected", "phone is not a phone number"),
    (12, "patient", "rejected", "external_id already used in row 2"),
    (14, "patient", "imported", ""),  # line 13 is blank
]


def test_roster_csv_row_by_row(cal: SqliteCalendar) -> None:
    report = load(cal, "roster.csv")
    assert report.format == "roster_csv"
    assert rows(report) == ROSTER_ROWS
    assert report.notes == ["ignored column(s): notes"]
    assert report.totals() == {"imported": 4, "unchanged": 0, "rejected": 8, "skipped": 0}
    assert [r.label for r in report.rows[:2]] == ["Maria Lopez", "James Carter"]

    # The agent's identity check finds the imported patients (US date read month first).
    maria = cal.find_patient("maria", "LOPEZ", date(1982, 3, 4))
    james = cal.find_patient("James", "Carter", date(1975, 11, 20))
    fay = cal.find_patient("Fay", "Nguyen", date(1999, 7, 4))
    assert maria is not None and james is not None and fay is not None
    assert cal.find_patient("Bob", "Future", date(2199, 1, 1)) is None
    assert count(cal, "patients") == 4
    with cal.transaction() as conn:
        details = conn.execute(
            "SELECT external_id, phone FROM patient_details WHERE patient_id = ?", [maria.id]
        ).fetchone()
    assert tuple(details) == ("MRN-1001", "+15550100101")


def test_roster_reimport_is_unchanged_and_preview_writes_nothing(cal: SqliteCalendar) -> None:
    preview = load(cal, "roster.csv", dry_run=True)
    assert rows(preview) == ROSTER_ROWS and preview.dry_run
    assert count(cal, "patients") == 0

    load(cal, "roster.csv")
    again = load(cal, "roster.csv")
    assert [r.status for r in again.rows if r.row in (2, 3, 4, 14)] == ["unchanged"] * 4
    assert again.totals()["imported"] == 0
    assert count(cal, "patients") == 4


def test_roster_updates_details_and_refuses_a_stolen_external_id(cal: SqliteCalendar) -> None:
    load(cal, "roster.csv")
    text = (
        "given_name,family_name,birth_date,phone,external_id\n"
        "Aisha,Khan,1990-07-15,555 010 0199,MRN-2001\n"
        "Zed,Other,1990-07-15,,MRN-1002\n"
        "Maria,Lopez,1982-03-04,,MRN-3003\n"
    )
    report = import_into(cal, text.encode(), now=NOW)
    assert rows(report) == [
        (2, "patient", "imported", "already registered; external_id and phone updated"),
        (
            3,
            "patient",
            "rejected",
            "external_id already belongs to a patient with other names or birth date",
        ),
        (
            4,
            "patient",
            "imported",
            "another patient has the same names and birth date; the phone identity check "
            "cannot tell them apart",
        ),
    ]
    # Two Maria Lopez born the same day: the agent's identity check refuses to guess.
    assert cal.find_patient("Maria", "Lopez", date(1982, 3, 4)) is None


def test_roster_latin1_tab_delimited_and_aliases(cal: SqliteCalendar) -> None:
    text = "First Name\tLast Name\tDate of Birth\nJosé\tMuñoz\t1950-01-02\n"
    report = import_into(cal, text.encode("cp1252"), now=NOW)
    assert report.notes == ["not UTF-8: read as Windows-1252"]
    assert rows(report) == [(2, "patient", "imported", "")]
    assert cal.find_patient("Jose", "Munoz", date(1950, 1, 2)) is not None


def test_roster_row_with_extra_cells_and_several_errors(cal: SqliteCalendar) -> None:
    text = "given_name,family_name,birth_date\nA,B,1950-01-02,oops\n@x,,13/40/1990\n"
    report = import_into(cal, text.encode(), now=NOW)
    assert rows(report) == [
        (2, "other", "rejected", "4 cells but the header has 3 columns"),
        (
            3,
            "patient",
            "rejected",
            "given_name starts with '@': looks like a spreadsheet formula; family_name is "
            "missing; birth_date is not a real calendar date",
        ),
    ]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "bad_header"),
        (b"\x00\x01\x02binary", "unreadable"),
        (b"name,age\nx,1\n", "unknown_format"),
        (b'{"resourceType": "Patient"}', "not_a_bundle"),
        (b'{"resourceType": "Bundle", "entry": [', "bad_json"),
        (b'{"resourceType": "Bundle", "entry": 3}', "not_a_bundle"),
        (b'given_name,family_name,birth_date\n"unterminated,x,1950-01-01\n', "unreadable"),
    ],
)
def test_unusable_files_are_refused_whole(cal: SqliteCalendar, data: bytes, code: str) -> None:
    with pytest.raises(ImportFileError) as caught:
        import_into(cal, data, now=NOW)
    assert caught.value.code == code
    assert count(cal, "patients") == 0


def test_size_and_row_limits(cal: SqliteCalendar) -> None:
    with pytest.raises(ImportFileError) as caught:
        import_into(cal, b"x" * (MAX_BYTES + 1), now=NOW)
    assert caught.value.code == "too_large"
    body = "given_name,family_name,birth_date\n" + "A,B,1950-01-02\n" * (MAX_ROWS + 1)
    with pytest.raises(ImportFileError) as caught:
        import_into(cal, body.encode(), now=NOW)
    assert caught.value.code == "too_many_rows"
    assert count(cal, "patients") == 0


def test_format_must_match_when_chosen(cal: SqliteCalendar) -> None:
    data = (DATA / "roster.csv").read_bytes()
    with pytest.raises(ImportFileError) as caught:
        import_into(cal, data, fmt="schedule_csv", now=NOW)
    assert caught.value.code == "bad_header"
    with pytest.raises(ImportFileError):
        import_into(cal, data, fmt="xlsx", now=NOW)
    assert detect_format("provider;start;minutes\n") == "schedule_csv"


# --------------------------------------------------------------------------- schedule CSV


def test_schedule_csv_row_by_row(cal: SqliteCalendar) -> None:
    load(cal, "roster.csv")
    report = load(cal, "schedule.csv")
    assert report.format == "schedule_csv"
    assert rows(report) == [
        (2, "provider", "imported", "new provider prov-dr-ana-ruiz"),
        (2, "slot", "imported", ""),
        (3, "slot", "imported", ""),
        (3, "appointment", "imported", ""),
        (4, "slot", "imported", ""),
        (4, "appointment", "imported", ""),
        (5, "slot", "imported", ""),
        (6, "slot", "rejected", "overlaps the provider's slot at 2026-12-01 09:00"),
        (7, "slot", "rejected", "duplicate of row 2"),
        (8, "slot", "skipped", "starts in the past"),
        (9, "slot", "imported", ""),
        (9, "appointment", "rejected", "no patient has this external_id"),
        (10, "slot", "rejected", "no provider prov-unknown"),
        (11, "slot", "rejected", "start is not an ISO 8601 date and time (YYYY-MM-DDTHH:MM)"),
        (12, "slot", "rejected", "minutes must be between 5 and 720"),
        (13, "slot", "imported", ""),
    ]
    assert cal.provider("prov-dr-ana-ruiz").name == "Dr. Ana Ruiz"
    after = datetime(2026, 12, 1, 0, 0)
    free = cal.free_slots(after, provider_id="prov-dr-ana-ruiz", limit=10)
    assert [(s.start, s.end) for s in free] == [
        (datetime(2026, 12, 1, 9, 0), datetime(2026, 12, 1, 9, 30)),
        (datetime(2026, 12, 2, 9, 0), datetime(2026, 12, 2, 9, 45)),  # "Dr Ana Ruiz" matched
    ]
    # 14:00Z is 09:00 in New York; 20 minutes from a provider given by ID.
    patel = cal.free_slots(after, provider_id="prov-patel", limit=10)
    assert [s.start for s in patel] == [datetime(2026, 12, 1, 9, 0), datetime(2026, 12, 3, 9, 0)]
    maria = cal.find_patient("Maria", "Lopez", date(1982, 3, 4))
    assert maria is not None
    [appt] = cal.upcoming(maria.id, NOW)
    assert (appt.provider_id, appt.start) == ("prov-dr-ana-ruiz", datetime(2026, 12, 1, 9, 30))

    again = load(cal, "schedule.csv")
    assert again.totals() == {"imported": 0, "unchanged": 8, "rejected": 6, "skipped": 1}


# --------------------------------------------------------------------------- FHIR R4 Bundle


def test_fhir_bundle_entry_by_entry(cal: SqliteCalendar) -> None:
    report = load(cal, "bundle.json")
    assert report.format == "fhir_json"
    assert rows(report) == [
        (1, "patient", "imported", ""),
        (2, "patient", "imported", ""),
        (3, "patient", "rejected", "birthDate is incomplete (a full date is needed)"),
        (4, "provider", "imported", "new provider prov-pr1"),
        (5, "schedule", "skipped", "not stored; places slots with Practitioner/pr1"),
        (6, "slot", "imported", ""),
        (7, "slot", "imported", ""),
        (8, "slot", "skipped", "status busy-unavailable is not imported"),
        (9, "appointment", "imported", ""),
        (10, "appointment", "skipped", "status cancelled is not imported"),
        (11, "slot", "imported", ""),
        (11, "appointment", "imported", ""),
        (12, "other", "skipped", "resource type Organization is not imported"),
        (13, "appointment", "rejected", "patient of row 3 was rejected"),
        (14, "slot", "rejected", "Schedule reference Schedule/missing is not in the bundle"),
    ]
    assert cal.provider("prov-pr1").name == "Dr. Ruiz"
    maria = cal.find_patient("Maria", "Lopez", date(1982, 3, 4))
    tomas = cal.find_patient("Tomas", "OBrien", date(1979, 8, 21))  # accents, apostrophe
    assert maria is not None and tomas is not None
    assert maria.given_name == "Maria"  # first given name of the official name
    [a1] = cal.upcoming(maria.id, NOW)
    assert (a1.slot_id, a1.start) == ("prov-pr1-202612010900", datetime(2026, 12, 1, 9, 0))
    [a3] = cal.upcoming(tomas.id, NOW)
    assert (a3.start, a3.end) == (datetime(2026, 12, 2, 11, 0), datetime(2026, 12, 2, 11, 20))
    # The busy slot stays taken though its appointment was rejected; nothing is free.
    assert cal.slot("prov-pr1-202612010930").free is False
    assert cal.free_slots(NOW, provider_id="prov-pr1") == []
    with cal.transaction() as conn:
        mrn = conn.execute(
            "SELECT external_id, phone FROM patient_details WHERE patient_id = ?", [maria.id]
        ).fetchone()
    assert tuple(mrn) == ("MRN-1001", "+15550100101")  # the MR identifier, not the first

    again = load(cal, "bundle.json")
    assert again.totals() == {"imported": 0, "unchanged": 7, "rejected": 3, "skipped": 4}
    assert count(cal, "appointments") == 2


def test_fhir_appointment_conflicts_with_a_roster_patient(cal: SqliteCalendar) -> None:
    load(cal, "bundle.json")
    bundle = json.loads((DATA / "bundle.json").read_text())
    # Another patient in Maria's slot: a conflict, not a double booking.
    first = bundle["entry"][0]["resource"]
    first["id"], first["name"] = "p9", [{"family": "Stone", "given": ["Kim"]}]
    first["identifier"] = []
    bundle["entry"][0]["fullUrl"] = "http://ehr.example.org/fhir/Patient/p9"
    bundle["entry"][8]["resource"]["participant"][0]["actor"]["reference"] = "Patient/p9"
    report = import_into(cal, json.dumps(bundle).encode(), now=NOW)
    assert (9, "appointment", "rejected", "the slot is already booked for another patient") in rows(
        report
    )
    assert count(cal, "appointments") == 2


def test_fhir_invalid_resource_reports_the_element_not_the_value(cal: SqliteCalendar) -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "name": "Secret Name",
                    "birthDate": "1950-01-01",
                }
            },
            {"fullUrl": "x"},
        ],
    }
    report = import_into(cal, json.dumps(bundle).encode(), now=NOW)
    assert rows(report) == [
        (1, "patient", "rejected", "name: Input should be a valid list"),
        (2, "other", "rejected", "entry has no resource"),
    ]
    assert "Secret" not in json.dumps(report.to_dict())


# --------------------------------------------------------------------------- file and audit


def test_run_import_opens_the_file_and_audit_counts_hold_no_names(tmp_path: Path) -> None:
    db = tmp_path / "var" / "calendar.sqlite"
    report = run_import(db, (DATA / "roster.csv").read_bytes(), now=NOW)
    meta = audit_counts(report)
    assert meta == {
        "format": "roster_csv",
        "dry_run": False,
        "imported": 4,
        "unchanged": 0,
        "rejected": 8,
        "skipped": 0,
        "rows": 12,
    }
    assert "Lopez" not in json.dumps(meta)
    conn = sqlite3.connect(str(db))
    try:
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] == 4
    finally:
        conn.close()
    with pytest.raises(ImportFileError):
        run_import(tmp_path / "never.sqlite", b"nonsense", now=NOW)
    assert not (tmp_path / "never.sqlite").exists()  # an unusable file never opens the calendar
    assert os.environ["TZ"] == "America/New_York"


# --------------------------------------------------------------------------- robustness

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_RESOURCE = st.fixed_dictionaries(
    {
        "resourceType": st.sampled_from(
            ["Patient", "Practitioner", "Schedule", "Slot", "Appointment"]
        )
        | _JSON
    },
    optional={
        k: _JSON | st.sampled_from(["booked", "free", "Patient/p1", "2026-12-01T09:00:00Z"])
        for k in ("id", "name", "birthDate", "status", "start", "end", "slot", "schedule", "actor")
    },
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=300)
    | st.builds(
        lambda rows: ("given_name;family_name;birth_date;phone\n" + rows).encode(),
        st.text(alphabet='ab=+-@;"\n\r\t/0129é', max_size=120),
    )
    | st.builds(
        lambda entries: json.dumps({"resourceType": "Bundle", "entry": entries}).encode(),
        st.lists(st.fixed_dictionaries({"resource": _RESOURCE}) | _JSON, max_size=4),
    )
)
def test_any_upload_gives_a_report_or_a_file_error(cal: SqliteCalendar, data: bytes) -> None:
    try:
        report = import_into(cal, data, now=NOW, dry_run=True)
    except ImportFileError as exc:
        assert exc.code and exc.message
        return
    assert all(r.status in ("imported", "unchanged", "rejected", "skipped") for r in report.rows)


def _place(cal: SqliteCalendar, patient_id: str) -> tuple[str | None, ...]:
    with cal.transaction() as conn:
        row = conn.execute(
            "SELECT city, region, postal_code, country FROM patient_details WHERE patient_id = ?",
            [patient_id],
        ).fetchone()
    return tuple(row)


def test_roster_address_places_the_patient_and_keeps_no_street(cal: SqliteCalendar) -> None:
    text = (
        "given_name,family_name,birth_date,phone,street,city,state,zip,country\n"
        "Maria,Lopez,1982-03-04,555 010 0101,1 Main St,Honolulu,HI,96813,us\n"
        "James,Carter,1975-11-20,555 010 0102,,Toronto,,M5V 2T6,CA\n"
        "Fay,Nguyen,1999-07-04,555 010 0103,,Springfield,IL,,USA\n"
        "Al,Dupont,1970-05-05,,,Lyon,,,France\n"
        "Bob,Formula,1990-01-01,,,=HYPERLINK(1),,,\n"
    )
    report = import_into(cal, text.encode(), now=NOW)
    statuses = [r[2] for r in rows(report)]
    assert statuses == ["imported", "imported", "imported", "rejected", "rejected"]
    assert "country must be a two-letter" in rows(report)[3][3]
    assert report.notes == ["ignored column(s): street"]  # the box keeps no street address
    maria = cal.find_patient("Maria", "Lopez", date(1982, 3, 4))
    james = cal.find_patient("James", "Carter", date(1975, 11, 20))
    assert maria is not None and james is not None
    assert _place(cal, maria.id) == ("Honolulu", "HI", "96813", "US")
    assert _place(cal, james.id) == ("Toronto", None, "M5V 2T6", "CA")
    fay = cal.find_patient("Fay", "Nguyen", date(1999, 7, 4))
    assert fay is not None and _place(cal, fay.id) == ("Springfield", "IL", None, "US")
    with cal.transaction() as conn:
        dump = "\n".join(conn.iterdump())
    assert "Main St" not in dump
    # A later roster with only a new city updates it and keeps the rest.
    again = import_into(
        cal, b"given_name,family_name,birth_date,city\nMaria,Lopez,1982-03-04,Hilo\n", now=NOW
    )
    assert rows(again) == [(2, "patient", "imported", "already registered; city updated")]
    assert _place(cal, maria.id) == ("Hilo", "HI", "96813", "US")


def test_fhir_home_address_is_read_and_a_foreign_country_name_is_left_out(
    cal: SqliteCalendar,
) -> None:
    def patient(pid: str, given: str, address: list[dict[str, object]]) -> dict[str, object]:
        return {
            "resource": {
                "resourceType": "Patient",
                "id": pid,
                "name": [{"given": [given], "family": "Test"}],
                "birthDate": "1980-01-01",
                "address": address,
            }
        }

    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            patient(
                "p1",
                "Ann",
                [
                    {"use": "old", "city": "Boston", "state": "MA", "country": "US"},
                    {"use": "home", "line": ["9 Elm St"], "city": "Phoenix", "state": "AZ",
                     "postalCode": "85004", "country": "United States"},
                ],
            ),
            patient("p2", "Ben", [{"city": "Lyon", "country": "France"}]),
        ],
    }  # fmt: skip
    report = import_into(cal, json.dumps(bundle).encode(), now=NOW)
    assert [r[2] for r in rows(report)] == ["imported", "imported"]
    ann = cal.find_patient("Ann", "Test", date(1980, 1, 1))
    ben = cal.find_patient("Ben", "Test", date(1980, 1, 1))
    assert ann is not None and ben is not None  # Ben is imported, only without his address
    assert _place(cal, ann.id) == ("Phoenix", "AZ", "85004", "US")
    with cal.transaction() as conn:
        assert "Elm St" not in "\n".join(conn.iterdump())
        places = conn.execute("SELECT city FROM patient_details").fetchall()
    assert ("Lyon",) not in places  # "France" is no ISO code: the number decides its zone
