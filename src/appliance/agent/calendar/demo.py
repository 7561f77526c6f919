"""Fictional demo data for the built-in calendar (development, tests and demos).

Enabled by ``[scheduling] demo_seed``; never real patients.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

from appliance.agent.calendar.schema import fmt, slot_id
from appliance.agent.calendar.store import SqliteCalendar

DEMO_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("prov-patel", "Dr. Patel"),
    ("prov-nguyen", "Dr. Nguyen"),
)
"""``(id, name)`` of the demo providers."""

DEMO_PATIENTS: tuple[tuple[str, str, str, str], ...] = (
    ("pat-demo-1", "Maria", "Lopez", "1982-03-04"),
    ("pat-demo-2", "James", "Carter", "1975-11-20"),
    ("pat-demo-3", "Aisha", "Khan", "1990-07-15"),
    ("pat-demo-4", "Robert", "Brown", "1968-09-12"),
    ("pat-demo-5", "Linda", "Miller", "1955-01-30"),
)
"""``(id, given name, family name, date of birth)`` of the fictional demo patients."""

SLOT_MINUTES = 30
DAYS = 14
FIRST_START = time(9, 0)
LAST_END = time(16, 30)


def _first_after(today: date, weekday: int) -> date:
    """The first ``weekday`` (Monday 0) strictly after ``today``."""
    return today + timedelta(days=(weekday - today.weekday() - 1) % 7 + 1)


def demo_appointments(today: date) -> list[tuple[str, str, str, datetime]]:
    """``(appointment id, patient id, provider id, start)`` of the demo bookings for ``today``.

    Maria Lopez with Dr. Patel on the first Tuesday after ``today`` at 10:30, James Carter with
    Dr. Nguyen on the first Thursday at 14:00, Robert Brown with Dr. Nguyen on the first
    Tuesday at 09:30.
    """
    tuesday, thursday = _first_after(today, 1), _first_after(today, 3)
    return [
        ("appt-demo-1", "pat-demo-1", "prov-patel", datetime.combine(tuesday, time(10, 30))),
        ("appt-demo-2", "pat-demo-2", "prov-nguyen", datetime.combine(thursday, time(14, 0))),
        ("appt-demo-4", "pat-demo-4", "prov-nguyen", datetime.combine(tuesday, time(9, 30))),
    ]


def seed_demo(path: Path, today: date) -> SqliteCalendar:
    """Open (creating if needed) a calendar filled with fictional demo data.

    Adds :data:`DEMO_PROVIDERS` (Dr. Patel, Dr. Nguyen); 30-minute slots on weekdays from
    09:00 to 16:30 (last slot 16:00-16:30) for the 14 days after ``today``;
    :data:`DEMO_PATIENTS` (Maria Lopez, James Carter, Aisha Khan, Robert Brown, Linda Miller)
    and the bookings of :func:`demo_appointments` (Aisha Khan and Linda Miller have none).

    Idempotent: only missing rows are added, so a second run changes nothing; the demo
    appointments are created once, whatever ``today`` a later run passes, and a demo slot
    someone has since booked for real is left to them.

    Args:
        path: SQLite file.
        today: The day the demo starts from (slots begin the day after).

    Returns:
        The open calendar (the caller closes it).

    Raises:
        SchedulingError: The database cannot be opened or written.
    """
    calendar = SqliteCalendar(path)
    try:
        with calendar.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO providers VALUES (?, ?)", DEMO_PROVIDERS)
            conn.executemany("INSERT OR IGNORE INTO patients VALUES (?, ?, ?, ?)", DEMO_PATIENTS)
            for offset in range(1, DAYS + 1):
                day = today + timedelta(days=offset)
                if day.weekday() >= 5:
                    continue
                start = datetime.combine(day, FIRST_START)
                while start.time() < LAST_END:
                    end = start + timedelta(minutes=SLOT_MINUTES)
                    for provider_id, _ in DEMO_PROVIDERS:
                        conn.execute(
                            'INSERT OR IGNORE INTO slots (id, provider_id, start, "end", free)'
                            " VALUES (?, ?, ?, ?, 1)",
                            [slot_id(provider_id, start), provider_id, fmt(start), fmt(end)],
                        )
                    start = end
            for appt_id, patient_id, provider_id, start in demo_appointments(today):
                if conn.execute("SELECT 1 FROM appointments WHERE id = ?", [appt_id]).fetchone():
                    continue
                held = slot_id(provider_id, start)
                taken = conn.execute("UPDATE slots SET free = 0 WHERE id = ? AND free = 1", [held])
                if taken.rowcount != 1:
                    continue  # someone booked the demo slot for real: leave it to them
                conn.execute(
                    "INSERT INTO appointments VALUES (?, ?, ?, ?, ?, ?, 'booked', datetime('now'))",
                    [
                        appt_id,
                        patient_id,
                        provider_id,
                        held,
                        fmt(start),
                        fmt(start + timedelta(minutes=SLOT_MINUTES)),
                    ],
                )
    except BaseException:
        calendar.close()
        raise
    return calendar
