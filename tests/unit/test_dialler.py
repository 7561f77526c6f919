"""The outbound dialler (issue 15, Deliver item 4): the gate at dial time, rate, cap, retries.

Real consent and DNC files, the real gate and calling window, a frozen clock that the dialler's
waits advance, and a placer that records each INVITE it was asked to send (the SIP path itself
is tested end to end in tests/e2e/test_outbound.py, with sipp as the callee).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from appliance.app.dialler import (
    DialJob,
    Dialler,
    DialResult,
    OutcomeStore,
    backoff_s,
    caller_id_headers,
    classify,
    open_gate,
)
from appliance.audio.bridge import AudioBridge
from appliance.config.outbound import OutboundSettings
from appliance.config.settings import ApplianceSettings
from appliance.events import DialRefused, Event
from appliance.media.sip import CallHandle

NY = "+12125550134"
CHICAGO = "+13125550134"
SF = "+14155550134"
HAWAII = "+18085550134"
# 2026-12-01 15:00 UTC: 10:00 in New York, 09:00 Chicago, 07:00 San Francisco, 05:00 Hawaii.
T0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


class Clock:
    """A frozen wall clock; the dialler's sleeps advance it (no real waiting)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class Placer:
    """Records every INVITE; answers from a per-number script of SIP statuses."""

    def __init__(self, clock: Clock, script: dict[str, list[int]] | None = None) -> None:
        self.clock = clock
        self.script = script or {}
        self.invites: list[tuple[str, dict[str, str], datetime]] = []
        self.hold = 0.0  # real seconds each call stays up (the concurrency test)

    async def place(
        self, call_id: str, uri: str, headers: dict[str, str], ring_timeout_s: float
    ) -> DialResult:
        self.invites.append((uri, headers, self.clock.now))
        number = uri.removeprefix("sip:").split("@")[0]
        statuses = self.script.get(number, [200])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if self.hold:
            await asyncio.sleep(self.hold)
        if status == 200:
            return DialResult(200, CallHandle(call_id=call_id, bridge=AudioBridge(16000)))
        return DialResult(status)


class Rig:
    def __init__(self, tmp_path: Path, **overrides: object) -> None:
        values: dict[str, object] = {
            "enabled": True,
            "trunk_uri": "sip:{number}@pbx.clinic.lan",
            "caller_id": "+12125550100",
            "consent_db": tmp_path / "consent.sqlite",
            "dnc_db": tmp_path / "dnc.sqlite",
            "outcomes_db": tmp_path / "dialler.sqlite",
            "rate_per_minute": 60,
            "max_concurrent": 1,
            **overrides,
        }
        self.settings = OutboundSettings.model_validate(values)
        self.events: list[Event] = []
        self.consent, self.dnc, self.gate = open_gate(self.settings, self.events.append)
        self.store = OutcomeStore(self.settings.outcomes_db)
        self.clock = Clock(T0)
        self.placer = Placer(self.clock)
        self.conversations: list[str] = []

        async def converse(job: DialJob, handle: CallHandle) -> str:
            self.conversations.append(job.appointment_id)
            return "confirmed"

        self.dialler = Dialler(
            self.settings,
            self.gate,
            self.placer,
            self.store,
            converse=converse,
            clock=self.clock,
            sleep=self.clock.sleep,
        )

    def grant(self, *numbers: str, scope: str = "reminders") -> None:
        for n in numbers:
            self.consent.capture(n, scope, method="written", source="import", evidence="form 7")

    def run(self) -> None:
        asyncio.run(asyncio.wait_for(self.dialler.run_until_idle(), 20))

    def refused(self) -> list[tuple[str, str]]:
        return [(e.phone_number, e.reason) for e in self.events if isinstance(e, DialRefused)]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_allowed_dial_goes_to_the_trunk_with_caller_id_and_records_the_outcome(rig: Rig) -> None:
    rig.grant(NY)
    job = rig.dialler.submit(DialJob("(212) 555-0134", appointment_id="appt-1"))
    rig.run()
    assert [(u, h) for u, h, _ in rig.placer.invites] == [
        ("sip:+12125550134@pbx.clinic.lan", {"P-Asserted-Identity": "<tel:+12125550100>"})
    ]
    assert rig.conversations == ["appt-1"]
    assert rig.store.outcome(job.job_id) == "confirmed"
    assert rig.store.latest_for_appointment("appt-1") == "confirmed"
    assert [a[2:] for a in rig.store.attempts(job.job_id)] == [(200, "confirmed")]
    assert rig.refused() == []


@pytest.mark.parametrize(
    ("setup", "number", "reason"),
    [
        ("none", NY, "no-consent"),
        ("revoked", NY, "consent-revoked"),
        ("recall-only", NY, "consent-out-of-scope"),
        ("dnc", NY, "dnc"),
        ("granted", SF, "outside-window"),  # 07:00 in San Francisco
        ("granted", HAWAII, "outside-window"),  # 05:00 in Honolulu
        ("granted", "+1 555 555 0134", "invalid-number"),
    ],
)
def test_every_refused_dial_sends_no_invite_and_is_recorded(
    rig: Rig, setup: str, number: str, reason: str
) -> None:
    if setup in ("revoked", "dnc", "granted"):
        rig.grant(NY, SF, HAWAII)
    if setup == "revoked":
        rig.consent.revoke(NY, "reminders", method="verbal", source="admin")
    if setup == "recall-only":
        rig.grant(NY, scope="recall")
    if setup == "dnc":
        rig.dnc.import_list(NY + "\n", "registry")
    job = rig.dialler.submit(DialJob(number))
    rig.run()
    assert rig.placer.invites == []
    assert rig.store.outcome(job.job_id) == f"refused:{reason}"
    assert rig.store.attempts(job.job_id)[0][2:] == (None, f"refused:{reason}")
    assert [r for _, r in rig.refused()] == [reason]


def test_the_gate_is_asked_again_at_dial_time_with_the_clock_of_that_moment(rig: Rig) -> None:
    """A job queued at 08:30 Chicago time for a busy line is retried only inside the window."""
    rig = Rig(rig.settings.consent_db.parent, window_end=time(17, 0), busy_backoff_s=[7200.0])
    rig.grant(CHICAGO)
    rig.clock.now = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)  # 16:30 in Chicago
    rig.placer.script[CHICAGO] = [486, 200]
    job = rig.dialler.submit(DialJob(CHICAGO))
    rig.run()
    # First dial at 16:30 (busy); the retry comes due at 18:30, after the stricter 17:00 end.
    assert len(rig.placer.invites) == 1
    assert rig.store.outcome(job.job_id) == "refused:outside-window"
    assert [a[3] for a in rig.store.attempts(job.job_id)] == ["busy", "refused:outside-window"]


def test_a_window_opening_later_is_not_anticipated_when_queued(rig: Rig) -> None:
    """Checked when it is dialled, not when queued: 07:59 New York refuses, 08:00 dials."""
    rig.grant(NY)
    rig.clock.now = datetime(2026, 12, 1, 12, 59, tzinfo=UTC)
    early = rig.dialler.submit(DialJob(NY))
    rig.run()
    rig.clock.now = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
    on_time = rig.dialler.submit(DialJob(NY))
    rig.run()
    assert rig.store.outcome(early.job_id) == "refused:outside-window"
    assert rig.store.outcome(on_time.job_id) == "confirmed"
    assert [t for _, _, t in rig.placer.invites] == [rig.clock.now]


def test_holidays_from_settings_block_the_dial(tmp_path: Path) -> None:
    rig = Rig(tmp_path, holidays=[date(2026, 12, 1)])
    rig.grant(NY)
    job = rig.dialler.submit(DialJob(NY))
    rig.run()
    assert rig.placer.invites == [] and rig.store.outcome(job.job_id) == "refused:holiday"


def test_consent_revoked_mid_campaign_stops_the_next_dial(rig: Rig) -> None:
    """The callee opts out during the first call: the second job to them is refused."""
    rig.grant(NY, CHICAGO)

    async def converse(job: DialJob, handle: CallHandle) -> str:
        if job.number != NY:
            return "confirmed"
        rig.consent.revoke(
            NY, "all", method="verbal-on-call", source="inbound-call", call_id=handle.call_id
        )
        return "opted-out"

    rig.dialler.converse = converse
    first = rig.dialler.submit(DialJob(NY, appointment_id="a1", campaign="dec"))
    other = rig.dialler.submit(DialJob(CHICAGO, appointment_id="a2", campaign="dec"))
    again = rig.dialler.submit(DialJob(NY, appointment_id="a3", campaign="dec"))
    rig.run()
    assert [u for u, _, _ in rig.placer.invites] == [
        "sip:+12125550134@pbx.clinic.lan",
        "sip:+13125550134@pbx.clinic.lan",
    ]
    assert rig.store.outcome(first.job_id) == "opted-out"
    assert rig.store.outcome(other.job_id) == "confirmed"
    assert rig.store.outcome(again.job_id) == "refused:dnc"
    assert rig.dnc.contains(NY)
    assert rig.store.summary("dec") == {"opted-out": 1, "confirmed": 1, "refused:dnc": 1}


def test_rate_limit_per_campaign(tmp_path: Path) -> None:
    """Two dials per minute, at most one a second: five jobs go out at 0, 1, 60, 61, 120 s.

    Another campaign has its own bucket.
    """
    rig = Rig(tmp_path, rate_per_minute=2)
    rig.grant(NY, CHICAGO)
    for i in range(5):
        rig.dialler.submit(DialJob(NY if i % 2 else CHICAGO, campaign="a"))
    rig.run()
    offsets = [round((t - T0).total_seconds()) for _, _, t in rig.placer.invites]
    assert offsets == [0, 1, 60, 61, 120]
    rig.dialler.submit(DialJob(NY, campaign="b"))
    rig.run()
    assert round((rig.placer.invites[-1][2] - T0).total_seconds()) == 120  # no wait for "b"


def test_concurrency_cap(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_concurrent=2, rate_per_minute=600)
    rig.grant(NY, CHICAGO)
    rig.placer.hold = 0.05
    jobs = [rig.dialler.submit(DialJob(NY if i % 2 else CHICAGO)) for i in range(6)]
    rig.run()
    assert len(rig.placer.invites) == 6
    assert rig.dialler.peak_active == 2
    assert {rig.store.outcome(j.job_id) for j in jobs} == {"confirmed"}


def test_the_cap_must_leave_room_for_inbound() -> None:
    with pytest.raises(ValueError, match="inbound"):
        ApplianceSettings.model_validate(
            {"sip": {"max_calls": 2}, "outbound": {"enabled": True, "max_concurrent": 2}}
        )
    ApplianceSettings.model_validate(
        {"sip": {"max_calls": 3}, "outbound": {"enabled": True, "max_concurrent": 2}}
    )


def test_window_settings_can_only_be_stricter() -> None:
    OutboundSettings(window_start=time(9, 0), window_end=time(20, 0))
    for start, end in ((time(7, 59), time(20, 0)), (time(9, 0), time(21, 1))):
        with pytest.raises(ValueError, match="stricter"):
            OutboundSettings(window_start=start, window_end=end)
    with pytest.raises(ValueError, match="before its end"):
        OutboundSettings(window_start=time(12, 0), window_end=time(12, 0))
    with pytest.raises(ValueError, match="number"):
        OutboundSettings(trunk_uri="sip:pbx.clinic.lan")


def test_busy_and_no_answer_are_retried_on_their_back_off_schedules(tmp_path: Path) -> None:
    rig = Rig(
        tmp_path,
        max_attempts=4,
        busy_backoff_s=[300.0, 900.0],
        no_answer_backoff_s=[1800.0],
    )
    rig.grant(NY, CHICAGO)
    rig.placer.script = {NY: [486, 600, 486, 486], CHICAGO: [480, 408, 487, 200]}
    busy = rig.dialler.submit(DialJob(NY))
    rig.run()
    times = [round((t - T0).total_seconds()) for _, _, t in rig.placer.invites]
    assert times == [0, 300, 1200, 2100]  # 300, then 900, then the last wait repeats
    assert rig.store.outcome(busy.job_id) == "busy"
    assert [a[0] for a in rig.store.attempts(busy.job_id)] == [1, 2, 3, 4]

    rig.placer.invites.clear()
    # The same campaign dialled a moment ago: one dial a second, so this one waits 1 s.
    start = rig.clock.now + timedelta(seconds=1)
    quiet = rig.dialler.submit(DialJob(CHICAGO))
    rig.run()
    times = [round((t - start).total_seconds()) for _, _, t in rig.placer.invites]
    assert times == [0, 1800, 3600, 5400]
    assert [a[3] for a in rig.store.attempts(quiet.job_id)] == [
        "no-answer",
        "no-answer",
        "no-answer",
        "confirmed",
    ]
    assert rig.store.outcome(quiet.job_id) == "confirmed"


def test_other_failures_are_not_retried_and_a_placer_crash_is_failed(rig: Rig) -> None:
    rig.grant(NY, CHICAGO)
    rig.placer.script = {NY: [404]}
    not_found = rig.dialler.submit(DialJob(NY))

    async def broken(call_id: str, uri: str, headers: dict[str, str], ring: float) -> DialResult:
        raise RuntimeError("no call slot")

    rig.run()
    rig.placer.place = broken  # type: ignore[method-assign]
    crashed = rig.dialler.submit(DialJob(CHICAGO))
    rig.run()
    assert rig.store.outcome(not_found.job_id) == "failed"
    assert rig.store.outcome(crashed.job_id) == "failed"
    assert len(rig.store.attempts(not_found.job_id)) == 1


def test_a_gate_error_is_a_refusal_not_a_dial(rig: Rig) -> None:
    rig.grant(NY)
    rig.consent.close()  # the consent file is gone from under the gate
    job = rig.dialler.submit(DialJob(NY))
    rig.run()
    assert rig.placer.invites == []
    assert rig.store.outcome(job.job_id) == "refused:gate-error"


def test_answering_machine_seam(rig: Rig) -> None:
    """A machine answer leaves the message and is ``voicemail``; no conversation runs."""
    rig.grant(NY)
    left: list[str] = []

    async def machine(handle: CallHandle) -> bool:
        return True

    async def leave(job: DialJob, handle: CallHandle) -> None:
        left.append(job.job_id)

    rig.dialler.detect_machine = machine
    rig.dialler.leave_message = leave
    job = rig.dialler.submit(DialJob(NY))
    rig.run()
    assert left == [job.job_id] and rig.conversations == []
    assert rig.store.outcome(job.job_id) == "voicemail"


def test_helpers() -> None:
    assert [classify(s) for s in (200, 486, 600, 408, 480, 487, 404, 503)] == [
        "answered",
        "busy",
        "busy",
        "no-answer",
        "no-answer",
        "no-answer",
        "failed",
        "failed",
    ]
    assert [backoff_s([10.0, 20.0], n) for n in (1, 2, 3, 7)] == [10.0, 20.0, 20.0, 20.0]
    assert caller_id_headers("") == {}
    assert caller_id_headers("sip:front@pbx") == {"P-Asserted-Identity": "<sip:front@pbx>"}


def test_nothing_is_dialled_while_held(rig: Rig) -> None:
    """Draining or a failed audit log: the queue waits, no INVITE, no refusal recorded."""
    rig.grant(NY)
    held = {"on": True}
    rig.dialler._hold = lambda: held["on"]
    job = rig.dialler.submit(DialJob(NY))

    async def run() -> None:
        task = asyncio.create_task(rig.dialler.run_until_idle())
        for _ in range(5):
            await asyncio.sleep(0)
        assert rig.placer.invites == [] and rig.store.outcome(job.job_id) == ""
        held["on"] = False
        await asyncio.wait_for(task, 5)

    asyncio.run(run())
    assert len(rig.placer.invites) == 1 and rig.store.outcome(job.job_id) == "confirmed"


def test_a_campaign_is_built_from_the_calendar(tmp_path: Path) -> None:
    """Booked appointments in the next N days whose patient has a phone on file."""
    import sqlite3

    from appliance.agent.calendar import idempotency_key, seed_demo
    from appliance.app.outbound import reminder_jobs

    today = date(2026, 11, 22)  # a Sunday: Tuesday 24th and Thursday 26th are booked
    cal = seed_demo(tmp_path / "calendar.sqlite", today)
    cal.cancel("appt-demo-4", idempotency_key=idempotency_key("t", "cancel", {}))
    cal.close()
    conn = sqlite3.connect(tmp_path / "calendar.sqlite")
    with conn:
        conn.executemany(
            "INSERT INTO patient_details (patient_id, phone) VALUES (?, ?)",
            [("pat-demo-1", NY), ("pat-demo-2", CHICAGO), ("pat-demo-4", SF)],
        )
    conn.close()
    now = datetime(2026, 11, 22, 10, 0)
    two = reminder_jobs(tmp_path / "calendar.sqlite", now, 3, "dec")
    assert [(j.appointment_id, j.number, j.campaign) for j in two] == [("appt-demo-1", NY, "dec")]
    five = reminder_jobs(tmp_path / "calendar.sqlite", now, 5, "dec")
    assert [j.appointment_id for j in five] == ["appt-demo-1", "appt-demo-2"]  # 4: cancelled
    assert [j.address_tz for j in five] == [None, None]  # no address: the number decides
    # A Chicago number whose holder lives in Honolulu: the address places the window.
    conn = sqlite3.connect(tmp_path / "calendar.sqlite")
    with conn:
        conn.execute(
            "UPDATE patient_details SET city = 'Honolulu', region = 'HI' WHERE patient_id = ?",
            ["pat-demo-2"],
        )
    conn.close()
    placed = reminder_jobs(tmp_path / "calendar.sqlite", now, 5, "dec")
    assert [j.address_tz for j in placed] == [None, ("Pacific/Honolulu",)]
    with pytest.raises(ValueError, match="days"):
        reminder_jobs(tmp_path / "calendar.sqlite", now, 0, "dec")


def test_the_conversation_outcome_for_the_outcome_table() -> None:
    from appliance.app.outbound import reminder_outcome

    class Dialog:
        def __init__(self, opted_out: bool, *tools: tuple[str, bool]) -> None:
            self.opted_out = opted_out
            self.actions = [{"tool": t, "ok": ok} for t, ok in tools]

    cases = [
        (Dialog(True, ("reminder.confirm", True)), "opted-out"),
        (Dialog(False, ("reminder.verify", True), ("reminder.confirm", True)), "confirmed"),
        (
            Dialog(False, ("calendar.free_slots", True), ("calendar.reschedule", True)),
            "rescheduled",
        ),
        (Dialog(False, ("calendar.cancel", True)), "cancelled"),
        (Dialog(False, ("calendar.cancel", False)), "no-decision"),
        (Dialog(False, ("reminder.verify", False)), "no-decision"),
    ]
    for dialog, outcome in cases:
        assert reminder_outcome(dialog) == outcome  # type: ignore[arg-type]
