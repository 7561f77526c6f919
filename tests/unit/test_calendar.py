"""Built-in scheduling calendar: identity check, slots, idempotent booking, migrations."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from appliance.agent.calendar import (
    Appointment,
    NotFound,
    SchedulingAdapter,
    SchedulingError,
    SlotUnavailable,
    SqliteCalendar,
    idempotency_key,
    seed_demo,
)
from appliance.agent.calendar.schema import MIGRATIONS
from appliance.errors import ApplianceError

TODAY = date(2025, 3, 3)  # a Monday
TUESDAY = date(2025, 3, 4)  # first Tuesday after TODAY
THURSDAY = date(2025, 3, 6)  # first Thursday after TODAY
NOW = datetime.combine(TODAY, time(12, 0))
MARIA_DOB = date(1982, 3, 4)
JAMES_DOB = date(1975, 11, 20)
AISHA_DOB = date(1990, 7, 15)


@pytest.fixture
def cal(tmp_path: Path):
    calendar = seed_demo(tmp_path / "calendar.sqlite", TODAY)
    yield calendar
    calendar.close()


def _maria(cal: SqliteCalendar):
    patient = cal.find_patient("Maria", "Lopez", MARIA_DOB)
    assert patient is not None
    return patient


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(str(path))
    try:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("providers", "slots", "patients", "appointments", "idempotency")
        }
    finally:
        conn.close()


# --------------------------------------------------------------------------- schema and seed


def test_implements_the_adapter_protocol(cal: SqliteCalendar) -> None:
    assert isinstance(cal, SchedulingAdapter)


def test_errors_are_appliance_errors() -> None:
    assert issubclass(SlotUnavailable, SchedulingError)
    assert issubclass(NotFound, SchedulingError)
    assert issubclass(SchedulingError, ApplianceError)
    assert SlotUnavailable("slot x is taken").code == "slot_unavailable"
    assert NotFound("no slot x").code == "not_found"
    assert SchedulingError.stage == "scheduling"


def test_database_is_wal_with_named_migrations(cal: SqliteCalendar) -> None:
    conn = sqlite3.connect(str(cal.path))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = [r[0] for r in conn.execute("SELECT name FROM _migrations")]
    finally:
        conn.close()
    assert names == ["001_calendar", "002_patient_details", "003_patient_address"]


def test_database_written_by_the_old_migration_runner_opens_unchanged(tmp_path: Path) -> None:
    """A calendar created by the calendar's own runner, before the shared helper, opens as is.

    Its ``_migrations (name, applied_at)`` rows were written by that runner; nothing re-runs.
    """
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    conn.execute("BEGIN IMMEDIATE")
    for name, fn in MIGRATIONS[:1]:  # that runner knew only the first
        fn(conn)
        conn.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", [name])
    conn.execute("INSERT INTO providers VALUES ('prov-old', 'Dr. Old')")
    conn.execute(
        "INSERT INTO slots VALUES ('slot-old', 'prov-old', '2025-03-04T09:00:00',"
        " '2025-03-04T09:30:00', 1)"
    )
    conn.execute("COMMIT")
    stamped = conn.execute("SELECT applied_at FROM _migrations").fetchone()[0]
    conn.close()

    with SqliteCalendar(path) as cal:
        assert cal.provider("prov-old").name == "Dr. Old"
        [slot] = cal.free_slots(datetime.combine(TODAY, time(0, 0)))
        assert slot.id == "slot-old"
        patient = cal.add_patient("Ada", "Old", date(1950, 1, 2))
        assert cal.book(patient.id, slot.id, idempotency_key="k-old").slot_id == "slot-old"
    conn = sqlite3.connect(str(path))
    try:
        rows = conn.execute("SELECT name, applied_at FROM _migrations").fetchall()
    finally:
        conn.close()
    assert rows[0] == ("001_calendar", stamped)  # recorded once, by the old runner
    assert [name for name, _ in rows] == [
        "001_calendar",
        "002_patient_details",
        "003_patient_address",
    ]


def test_seed_demo_contents(cal: SqliteCalendar) -> None:
    assert cal.provider("prov-patel").name == "Dr. Patel"
    assert cal.provider("prov-nguyen").name == "Dr. Nguyen"
    counts = _counts(cal.path)
    # 14 days after a Monday: 10 weekdays; 09:00-16:30 in 30 minutes is 15 slots; 2 providers.
    assert counts["slots"] == 10 * 15 * 2
    assert counts["patients"] == 5
    assert counts["appointments"] == 3
    all_slots = cal.free_slots(datetime(2000, 1, 1), limit=1000)
    assert len(all_slots) == 10 * 15 * 2 - 3
    assert all(s.start.weekday() < 5 for s in all_slots)
    assert all(TODAY < s.start.date() <= TODAY + timedelta(days=14) for s in all_slots)
    assert min(s.start.time() for s in all_slots) == time(9, 0)
    assert max(s.end.time() for s in all_slots) == time(16, 30)
    assert all(s.end - s.start == timedelta(minutes=30) for s in all_slots)


def test_seed_demo_appointments(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    [appt] = cal.upcoming(maria.id, NOW)
    assert appt.provider_id == "prov-patel"
    assert appt.start == datetime.combine(TUESDAY, time(10, 30))
    assert appt.end == datetime.combine(TUESDAY, time(11, 0))
    assert appt.status == "booked"
    assert not cal.slot(appt.slot_id).free
    james = cal.find_patient("James", "Carter", JAMES_DOB)
    assert james is not None
    [appt] = cal.upcoming(james.id, NOW)
    assert appt.start == datetime.combine(THURSDAY, time(14, 0))
    aisha = cal.find_patient("Aisha", "Khan", AISHA_DOB)
    assert aisha is not None
    assert cal.upcoming(aisha.id, NOW) == []


def test_seed_demo_first_weekday_is_strictly_after_today(tmp_path: Path) -> None:
    with seed_demo(tmp_path / "c.sqlite", TUESDAY) as cal:
        [appt] = cal.upcoming(_maria(cal).id, datetime.combine(TUESDAY, time(0, 0)))
        assert appt.start == datetime.combine(TUESDAY + timedelta(days=7), time(10, 30))


def test_seed_demo_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "calendar.sqlite"
    seed_demo(path, TODAY).close()
    first = _counts(path)
    seed_demo(path, TODAY).close()
    assert _counts(path) == first
    with SqliteCalendar(path) as cal:
        assert len(cal.upcoming(_maria(cal).id, NOW)) == 1


# --------------------------------------------------------------------------- identity


def test_identity_exact_match(cal: SqliteCalendar) -> None:
    patient = cal.find_patient("Maria", "Lopez", MARIA_DOB)
    assert patient is not None
    assert (patient.given_name, patient.family_name, patient.birth_date) == (
        "Maria",
        "Lopez",
        MARIA_DOB,
    )


@pytest.mark.parametrize(
    ("given", "family"),
    [
        ("maria", "LOPEZ"),  # case
        ("  María ", "López"),  # accents and whitespace
        ("Maria", "Lo pez"),  # split by the recogniser
        ("Maria", "Lopes"),  # spelling difference
        ("Marie", "Lopez"),
    ],
)
def test_identity_tolerates_case_accents_spaces_and_small_misspellings(
    cal: SqliteCalendar, given: str, family: str
) -> None:
    assert cal.find_patient(given, family, MARIA_DOB) == _maria(cal)


def test_identity_fuzzy_jon_john(cal: SqliteCalendar) -> None:
    john = cal.add_patient("John", "Smith", date(1960, 1, 2))
    assert cal.find_patient("Jon", "Smith", date(1960, 1, 2)) == john


def test_identity_wrong_dob_fails(cal: SqliteCalendar) -> None:
    assert cal.find_patient("Maria", "Lopez", date(1982, 4, 3)) is None
    assert cal.find_patient("Maria", "Lopez", date(1983, 3, 4)) is None


def test_identity_dob_alone_fails(cal: SqliteCalendar) -> None:
    assert cal.find_patient("", "", MARIA_DOB) is None
    assert cal.find_patient("   ", "Lopez", MARIA_DOB) is None
    assert cal.find_patient("Aisha", "Khan", MARIA_DOB) is None
    assert cal.find_patient("Marcus", "Lopez", MARIA_DOB) is None
    assert cal.find_patient("Maria", "Lambert", MARIA_DOB) is None


def test_identity_prefers_exact_match_and_refuses_ambiguity(cal: SqliteCalendar) -> None:
    twins_dob = date(2001, 5, 6)
    jon = cal.add_patient("Jon", "Reyes", twins_dob)
    joan = cal.add_patient("Joan", "Reyes", twins_dob)
    assert cal.find_patient("Jon", "Reyes", twins_dob) == jon
    assert cal.find_patient("Joan", "Reyes", twins_dob) == joan
    # "Jo" is close to neither strictly enough; "Jonn" is close to Jon only.
    assert cal.find_patient("Jonn", "Reyes", twins_dob) == jon
    cal.add_patient("Joann", "Reyes", twins_dob)
    # "Joanne" is near both Joan and Joann: ambiguous, so no match.
    assert cal.find_patient("Joanne", "Reyes", twins_dob) is None


# --------------------------------------------------------------------------- reads


def test_upcoming_is_booked_future_and_sorted(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    later = cal.free_slots(datetime.combine(TODAY + timedelta(days=9), time(9, 0)), limit=1)[0]
    cal.book(maria.id, later.id, idempotency_key="k-later")
    upcoming = cal.upcoming(maria.id, NOW)
    assert [a.start for a in upcoming] == sorted(a.start for a in upcoming)
    assert len(upcoming) == 2
    # An appointment that has started before ``now`` is no longer upcoming.
    after_first = datetime.combine(TUESDAY, time(10, 31))
    assert [a.slot_id for a in cal.upcoming(maria.id, after_first)] == [later.id]
    assert cal.upcoming("pat-unknown", NOW) == []


def test_free_slots_ordering_limit_and_provider_filter(cal: SqliteCalendar) -> None:
    after = datetime.combine(TUESDAY, time(10, 0))
    slots = cal.free_slots(after, limit=5)
    assert len(slots) == 5
    assert all(s.free and s.start >= after for s in slots)
    assert [(s.start, s.provider_id) for s in slots] == sorted(
        (s.start, s.provider_id) for s in slots
    )
    # Maria's 10:30 with Dr. Patel is taken; Dr. Nguyen's 10:30 is free.
    starts = [(s.start.time(), s.provider_id) for s in slots]
    assert (time(10, 30), "prov-patel") not in starts
    assert (time(10, 30), "prov-nguyen") in starts

    patel = cal.free_slots(after, provider_id="prov-patel")
    assert len(patel) == 3
    assert {s.provider_id for s in patel} == {"prov-patel"}
    assert [s.start.time() for s in patel] == [time(10, 0), time(11, 0), time(11, 30)]

    assert cal.free_slots(after, limit=0) == []
    assert cal.free_slots(datetime(2100, 1, 1)) == []
    with pytest.raises(NotFound):
        cal.free_slots(after, provider_id="prov-nobody")


def test_free_slots_default_limit_is_three(cal: SqliteCalendar) -> None:
    assert len(cal.free_slots(NOW)) == 3


def test_timezone_aware_times_are_rejected(cal: SqliteCalendar) -> None:
    with pytest.raises(ValueError):
        cal.free_slots(datetime(2025, 3, 4, 9, 0, tzinfo=UTC))


def test_provider_not_found(cal: SqliteCalendar) -> None:
    with pytest.raises(NotFound):
        cal.provider("prov-nobody")
    assert [p.name for p in cal.providers()] == ["Dr. Nguyen", "Dr. Patel"]


# --------------------------------------------------------------------------- writes


def test_book_takes_the_slot(cal: SqliteCalendar) -> None:
    aisha = cal.find_patient("Aisha", "Khan", AISHA_DOB)
    assert aisha is not None
    slot = cal.free_slots(NOW, provider_id="prov-nguyen", limit=1)[0]
    appt = cal.book(aisha.id, slot.id, idempotency_key="k1")
    assert appt == Appointment(
        appt.id, aisha.id, "prov-nguyen", slot.id, slot.start, slot.end, "booked"
    )
    assert not cal.slot(slot.id).free
    assert slot.id not in [s.id for s in cal.free_slots(NOW, limit=1000)]
    assert cal.upcoming(aisha.id, NOW) == [appt]


def test_book_replay_with_same_key_returns_same_appointment(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    slot = cal.free_slots(NOW, limit=1)[0]
    key = idempotency_key("call-1", "book_appointment", {"slot_id": slot.id})
    first = cal.book(maria.id, slot.id, idempotency_key=key)
    before = _counts(cal.path)
    second = cal.book(maria.id, slot.id, idempotency_key=key)
    assert second == first
    assert _counts(cal.path) == before
    assert len(cal.upcoming(maria.id, NOW)) == 2  # the demo one and this one, not three


def test_book_taken_slot_with_different_key_raises(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    aisha = cal.find_patient("Aisha", "Khan", AISHA_DOB)
    assert aisha is not None
    slot = cal.free_slots(NOW, limit=1)[0]
    cal.book(maria.id, slot.id, idempotency_key="k-a")
    before = _counts(cal.path)
    with pytest.raises(SlotUnavailable):
        cal.book(aisha.id, slot.id, idempotency_key="k-b")
    with pytest.raises(SlotUnavailable):
        cal.book(maria.id, slot.id, idempotency_key="k-c")
    assert _counts(cal.path) == before
    # The demo appointment's slot is taken too.
    [demo] = cal.upcoming(maria.id, datetime.combine(TUESDAY, time(0, 0)))[:1]
    with pytest.raises(SlotUnavailable):
        cal.book(aisha.id, demo.slot_id, idempotency_key="k-d")


def test_key_reused_for_a_different_request_is_refused(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    first, second = cal.free_slots(NOW, limit=2)
    cal.book(maria.id, first.id, idempotency_key="k-same")
    with pytest.raises(SchedulingError) as info:
        cal.book(maria.id, second.id, idempotency_key="k-same")
    assert info.value.code == "idempotency_conflict"
    assert cal.slot(second.id).free


def test_book_unknown_ids(cal: SqliteCalendar) -> None:
    slot = cal.free_slots(NOW, limit=1)[0]
    with pytest.raises(NotFound):
        cal.book("pat-nobody", slot.id, idempotency_key="k1")
    with pytest.raises(NotFound):
        cal.book(_maria(cal).id, "slot-nowhere", idempotency_key="k2")
    assert cal.slot(slot.id).free


def test_reschedule_moves_atomically_and_replays(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    [appt] = cal.upcoming(maria.id, NOW)
    new_slot = cal.free_slots(NOW, provider_id="prov-nguyen", limit=1)[0]
    moved = cal.reschedule(appt.id, new_slot.id, idempotency_key="r1")
    assert moved.id == appt.id
    assert (moved.slot_id, moved.start, moved.provider_id) == (
        new_slot.id,
        new_slot.start,
        "prov-nguyen",
    )
    assert cal.slot(appt.slot_id).free
    assert not cal.slot(new_slot.id).free
    assert cal.upcoming(maria.id, NOW) == [moved]

    before = _counts(cal.path)
    assert cal.reschedule(appt.id, new_slot.id, idempotency_key="r1") == moved
    assert _counts(cal.path) == before
    assert cal.slot(appt.slot_id).free


def test_reschedule_to_taken_slot_changes_nothing(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    james = cal.find_patient("James", "Carter", JAMES_DOB)
    assert james is not None
    [mine] = cal.upcoming(maria.id, NOW)
    [theirs] = cal.upcoming(james.id, NOW)
    with pytest.raises(SlotUnavailable):
        cal.reschedule(mine.id, theirs.slot_id, idempotency_key="r-x")
    assert cal.appointment(mine.id) == mine
    assert not cal.slot(mine.slot_id).free
    # The failed attempt did not record the key: a retry after freeing the slot works.
    cal.cancel(theirs.id, idempotency_key="c-x")
    assert cal.reschedule(mine.id, theirs.slot_id, idempotency_key="r-x").slot_id == theirs.slot_id


def test_reschedule_cancelled_or_unknown(cal: SqliteCalendar) -> None:
    [appt] = cal.upcoming(_maria(cal).id, NOW)
    slot = cal.free_slots(NOW, limit=1)[0]
    with pytest.raises(NotFound):
        cal.reschedule("appt-nowhere", slot.id, idempotency_key="r1")
    with pytest.raises(NotFound):
        cal.reschedule(appt.id, "slot-nowhere", idempotency_key="r2")
    cal.cancel(appt.id, idempotency_key="c1")
    with pytest.raises(SchedulingError) as info:
        cal.reschedule(appt.id, slot.id, idempotency_key="r3")
    assert info.value.code == "appointment_cancelled"
    assert cal.slot(slot.id).free


def test_cancel_frees_the_slot_and_replays(cal: SqliteCalendar) -> None:
    maria = _maria(cal)
    [appt] = cal.upcoming(maria.id, NOW)
    cancelled = cal.cancel(appt.id, idempotency_key="c1")
    assert cancelled.status == "cancelled"
    assert cancelled.slot_id == appt.slot_id
    assert cal.slot(appt.slot_id).free
    assert cal.upcoming(maria.id, NOW) == []
    before = _counts(cal.path)
    assert cal.cancel(appt.id, idempotency_key="c1") == cancelled
    assert _counts(cal.path) == before
    # The freed slot can be booked by someone else.
    aisha = cal.find_patient("Aisha", "Khan", AISHA_DOB)
    assert aisha is not None
    assert cal.book(aisha.id, appt.slot_id, idempotency_key="b1").status == "booked"
    # A replay of the old cancel does not free the slot again.
    assert cal.cancel(appt.id, idempotency_key="c1") == cancelled
    assert not cal.slot(appt.slot_id).free
    with pytest.raises(NotFound):
        cal.cancel("appt-nowhere", idempotency_key="c2")


def test_missing_idempotency_key_is_refused(cal: SqliteCalendar) -> None:
    slot = cal.free_slots(NOW, limit=1)[0]
    with pytest.raises(SchedulingError):
        cal.book(_maria(cal).id, slot.id, idempotency_key="")
    assert cal.slot(slot.id).free


def test_state_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "calendar.sqlite"
    cal = seed_demo(path, TODAY)
    maria = _maria(cal)
    [demo] = cal.upcoming(maria.id, NOW)
    slot = cal.free_slots(NOW, provider_id="prov-patel", limit=1)[0]
    booked = cal.book(maria.id, slot.id, idempotency_key="k-persist")
    cal.cancel(demo.id, idempotency_key="c-persist")
    cal.close()

    with SqliteCalendar(path) as reopened:
        assert reopened.upcoming(maria.id, NOW) == [booked]
        assert not reopened.slot(slot.id).free
        assert reopened.slot(demo.slot_id).free
        assert reopened.appointment(demo.id).status == "cancelled"
        # Idempotency records survive the restart too.
        assert reopened.book(maria.id, slot.id, idempotency_key="k-persist") == booked
        assert len(reopened.upcoming(maria.id, NOW)) == 1


def test_closed_calendar_raises(tmp_path: Path) -> None:
    cal = SqliteCalendar(tmp_path / "c.sqlite")
    cal.close()
    cal.close()
    with pytest.raises(SchedulingError):
        cal.providers()


# --------------------------------------------------------------------------- keys


def test_idempotency_key_is_stable_and_opaque() -> None:
    args = {"given_name": "Maria", "birth_date": date(1982, 3, 4), "slot_id": "s1"}
    key = idempotency_key("call-1", "book_appointment", args)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == idempotency_key("call-1", "book_appointment", dict(reversed(args.items())))
    assert key != idempotency_key("call-2", "book_appointment", args)
    assert key != idempotency_key("call-1", "cancel_appointment", args)
    assert key != idempotency_key("call-1", "book_appointment", {**args, "slot_id": "s2"})
    assert "maria" not in key.lower() and "1982" not in key


def test_one_name_heard_right_and_the_other_close_still_verifies(tmp_path: Path) -> None:
    """Speech recognition garbles one name of the pair: "Asia Khan" for "Aisha Khan"."""
    cal = seed_demo(tmp_path / "c.sqlite", date(2026, 11, 22))
    try:
        dob = date(1990, 7, 15)
        assert cal.find_patient("Asia", "Khan", dob) is not None
        assert cal.find_patient("Aisha", "Kahn", dob) is not None
        assert cal.find_patient("Asia", "Kahn", dob) is None  # both only close: refused
        assert cal.find_patient("Maria", "Lohan", date(1982, 3, 4)) is None  # too far
        assert cal.find_patient("Asia", "Khan", date(1990, 7, 16)) is None  # DOB must be exact
    finally:
        cal.close()


def test_the_calendar_file_is_never_world_readable_and_group_writable(tmp_path: Path) -> None:
    """Names and dates of birth: 0660 whatever the umask, so the admin page can import."""
    import os
    import stat

    from appliance.agent.calendar.store import CALENDAR_MODE

    old = os.umask(0o027)  # the agent's unit
    try:
        path = tmp_path / "calendar.sqlite"
        cal = SqliteCalendar(path)
        cal.add_provider("prov-a", "Dr A")
        for file in (path, path.with_name(path.name + "-wal")):
            assert stat.S_IMODE(file.stat().st_mode) == CALENDAR_MODE, file.name
        cal.close()
        os.chmod(path, 0o644)  # left world-readable by an older version
        SqliteCalendar(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == CALENDAR_MODE
    finally:
        os.umask(old)
