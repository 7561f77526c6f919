"""Outbound reminder calls inside ``appliance serve``: the dialler wired to the agent.

When ``[outbound] enabled``, the agent process opens the consent and DNC files with the event
bus as their sink (every ``ConsentRecorded`` and ``DialRefused`` reaches the
``AuditObserver`` like any other event, sealed under the consent key scope), and runs a
:class:`~appliance.app.dialler.Dialler` on its own pjsua2 user agent. An answered call runs
the ordinary call pipeline with the ``reminders`` workflow started by the dialler
(:meth:`~appliance.agent.dialog.DialogManager.start_outbound`): the AI disclosure naming the
clinic first, then the workflow's opening. An opt-out on the call revokes every consent scope
of the dialled number (source ``outbound-call``), which also puts it on the DNC list.

Before that, answering-machine detection listens to the callee's first seconds
(:class:`~appliance.app.answering_machine.AnsweringMachineScreen`, ADR 0022 appendix): a live
or not-sure answer gets the conversation at once; a machine gets, after its beep, the
disclosure and :func:`voicemail_text` (a call-back number, no PHI), then the BYE, and the job
ends ``voicemail``.

Control socket operations (the box's other operations go the same way; ``appliance outbound``
is the CLI over them):

- ``outbound.dial`` ``{"number", "appointment_id", "scope"?, "campaign"?}`` -> ``{"job_id"}``;
- ``outbound.reminders`` ``{"days", "campaign"?}`` -> ``{"campaign", "jobs": [job ids]}``:
  every booked appointment in the next ``days`` days whose patient has a phone on file;
- ``outbound.job`` ``{"job_id"}`` -> ``{"outcome", "attempts": [[attempt, t, status, result]]}``;
- ``outbound.campaign`` ``{"campaign"}`` -> ``{"outcomes": {outcome: count}}``;
- ``outbound.preview`` ``{"days"}`` -> ``{"appointments": n, "refused": {reason: count}}``: a
  dry run of ``outbound.reminders`` (nothing queued, dialled or recorded).

Starting a campaign is recorded on the audit log with its actor (``AdminOutboundStarted``).
The admin page's campaigns (``appliance.admin.campaigns``) call ``outbound.reminders`` only
after a compliance review and the owner's sign-off by two other people (ADR 0021 appendix).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import phonenumbers

from appliance.agent.calendar.schema import fmt
from appliance.agent.dialog import DialogManager
from appliance.app.answering_machine import AnsweringMachineScreen
from appliance.app.control_ops_audit import AuditOps, check_actor
from appliance.app.dialler import DialJob, Dialler, OutcomeStore, SipPlacer, open_gate
from appliance.config.settings import ApplianceSettings
from appliance.control import ControlError, ControlServer
from appliance.events import AgentSpoke, Event
from appliance.media.sip import CallHandle
from appliance.policy.address_zone import PostalAddress, address_zones
from appliance.policy.outbound_gate import OutboundGate

if TYPE_CHECKING:
    from appliance.app.server import ApplianceServer

_LOGGER = logging.getLogger(__name__)

WORKFLOW = "reminders"
"""The outbound workflow a reminder call runs."""

CAMPAIGN_DAYS_MAX = 14
"""The furthest ahead a reminder campaign may reach, days."""

MESSAGE_TAIL_S = 0.6
"""Wait after the voicemail message has played before the BYE (the far end's jitter buffer)."""
MESSAGE_TIMEOUT_S = 45.0
"""Longest a voicemail message may take to play (disclosure included) before the hang-up."""


def spoken_number(number: str, region: str = "US") -> str:
    """A phone number as the TTS should say it: digit by digit, in its national groups.

    ``"+12125550100"`` -> ``"2 1 2, 5 5 5, 0 1 0 0"``. A ``tel:`` or ``sip:`` URI's user part
    is used. Returns ``""`` when ``number`` holds no digits.
    """
    user = number.split(":", 1)[1] if number.startswith(("tel:", "sip:", "sips:")) else number
    user = user.split("@", 1)[0].split(";", 1)[0]
    try:
        parsed = phonenumbers.parse(user, region)
        text = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    except phonenumbers.NumberParseException:
        text = user
    return ", ".join(" ".join(group) for group in re.findall(r"\d+", text))


def voicemail_text(settings: ApplianceSettings) -> str:
    """The voicemail message said after the AI disclosure; ``""`` with no call-back number.

    ``[outbound] voicemail_message`` with the clinic's name and the call-back number
    (``callback_number``, else ``caller_id``) filled in. The settings allow no other
    placeholder, so no patient name or appointment detail can reach an answering machine.
    """
    outbound = settings.outbound
    number = spoken_number(outbound.callback_number or outbound.caller_id, outbound.region)
    if not number:
        return ""
    return outbound.voicemail_message.replace("{clinic}", settings.clinic.name).replace(
        "{callback_number}", number
    )


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'")))


class _PlayedWatch:
    """Set :attr:`done` (on ``loop``) once a call's played agent text holds ``expected``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expected: str) -> None:
        self.loop = loop
        self.expected = _words(expected)
        self.parts: list[str] = []
        self.done = asyncio.Event()

    def heard(self, text: str) -> None:
        self.parts.append(text)
        if self.expected in _words(" ".join(self.parts)):
            self.loop.call_soon_threadsafe(self.done.set)


def reminder_outcome(dialog: DialogManager) -> str:
    """What a reminder conversation came to, for the dialler's outcome table.

    ``opted-out`` wins; then the calendar change the workflow made (``cancelled``,
    ``rescheduled``), then ``confirmed`` (``reminder.confirm``); else ``no-decision``.
    """
    if dialog.opted_out:
        return "opted-out"
    done = {a.get("tool") for a in dialog.actions if a.get("ok")}
    for tool, outcome in (
        ("calendar.cancel", "cancelled"),
        ("calendar.reschedule", "rescheduled"),
        ("reminder.confirm", "confirmed"),
    ):
        if tool in done:
            return outcome
    return "no-decision"


def reminder_jobs(
    calendar_db: Path, now: datetime, days: int, campaign: str, region: str = "US"
) -> list[DialJob]:
    """One job per booked appointment in ``[now, now + days)`` whose patient has a phone.

    A patient whose roster entry has an address gets its zones as ``address_tz``
    (:func:`appliance.policy.address_zone.address_zones`); others are placed by their number.

    Args:
        calendar_db: The calendar's SQLite file (read only).
        now: Naive local clinic time (the calendar's time base).
        days: How far ahead, 1 to :data:`CAMPAIGN_DAYS_MAX`.
        campaign: The campaign name the jobs carry.
        region: The clinic's country (ISO 3166-1 alpha-2), for addresses without one.

    Raises:
        ValueError: ``days`` out of range.
        sqlite3.Error: The calendar cannot be read.
    """
    if not 1 <= days <= CAMPAIGN_DAYS_MAX:
        raise ValueError(f"days must be 1 to {CAMPAIGN_DAYS_MAX}")
    conn = sqlite3.connect(f"file:{calendar_db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT a.id, d.phone, d.city, d.region, d.postal_code, d.country FROM appointments a"
            " JOIN patient_details d ON d.patient_id = a.patient_id"
            " WHERE a.status = 'booked' AND a.start >= ? AND a.start < ?"
            " AND coalesce(d.phone, '') != '' ORDER BY a.start, a.id",
            (fmt(now), fmt(now + timedelta(days=days))),
        ).fetchall()
    finally:
        conn.close()
    jobs = []
    for appt, phone, *place in rows:
        # The patient's address, when the roster gave one, places the calling window.
        zones = address_zones(PostalAddress(*(str(p or "") for p in place)), region)
        jobs.append(
            DialJob(
                str(phone), appointment_id=str(appt), campaign=campaign, address_tz=zones or None
            )
        )
    return jobs


class OutboundService:
    """The dialler of one agent process (created by :func:`start_outbound`)."""

    def __init__(self, server: ApplianceServer) -> None:
        assert server._ua is not None
        self.server = server
        settings = server.settings.outbound
        self.consent, self.dnc, self.gate = open_gate(settings, server.bus.emit)
        self.store = OutcomeStore(settings.outcomes_db)
        self.dialler = Dialler(
            settings,
            self.gate,
            SipPlacer(server._ua),
            self.store,
            converse=self.converse,
            detect_machine=self.detect_machine,
            leave_message=self.leave_message,
            hold=lambda: server._ua is not None and server._ua.draining,
        )
        self.task: asyncio.Task[None] | None = None
        self._audit = AuditOps(server)
        assert server.models is not None
        self.screen = AnsweringMachineScreen(server.models.vad_path, server.bus.emit)
        self._watches: dict[str, _PlayedWatch] = {}
        server.bus.subscribe(self._on_event)

    def start(self) -> None:
        """Run the dialler in the background."""
        self.task = asyncio.create_task(self.dialler.run_forever(), name="dialler")

    def close(self) -> None:
        """Stop dialling; close the files."""
        if self.task is not None:
            self.task.cancel()
        self.store.close()
        self.consent.close()
        self.dnc.close()

    async def detect_machine(self, handle: CallHandle) -> bool:
        """The dialler's AMD seam: ``True`` when an answering machine took the call.

        Listens to the callee's first seconds (:class:`AnsweringMachineScreen`); a live answer
        or a not-sure one returns as soon as it is decided, so the disclosure starts then.
        """
        return await self.screen.detect(handle)

    async def leave_message(self, job: DialJob, handle: CallHandle) -> None:
        """Wait for the beep (or the greeting's end), say the voicemail message, hang up.

        The message is the AI disclosure naming the clinic (the pipeline's opener, as on every
        call) and :func:`voicemail_text`: a call-back number, no patient name, no appointment
        detail. It is spoken with the call's own pipeline (TTS, played-text tracking, the
        audit's ``DisclosurePlayed`` and ``AgentSpoke``); the BYE follows once it has played.
        """
        text = voicemail_text(self.server.settings)
        cue = await self.screen.wait_for_cue(handle)
        if cue is None:  # the machine hung up first
            return
        if not text:
            _LOGGER.warning("dial %s: no call-back number set; no message left", job.job_id)
            return
        await self._speak_then_hang_up(handle, text)

    async def _speak_then_hang_up(self, handle: CallHandle, text: str) -> None:
        server = self.server
        watch = _PlayedWatch(asyncio.get_running_loop(), text)
        self._watches[handle.call_id] = watch
        server._call_events[handle.call_id] = []
        call = asyncio.create_task(
            server._run_call(handle, "outbound", greeting=text), name=f"voicemail-{handle.call_id}"
        )
        played = asyncio.ensure_future(watch.done.wait())
        try:
            await asyncio.wait(
                {played, call}, timeout=MESSAGE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            if played.done():
                await asyncio.sleep(MESSAGE_TAIL_S)
            else:
                _LOGGER.warning("call %s: the voicemail message did not play", handle.call_id)
        finally:
            played.cancel()
            self._watches.pop(handle.call_id, None)
            handle.hangup()
            try:
                await asyncio.wait_for(call, 15.0)
            except TimeoutError:
                _LOGGER.warning("call %s: the pipeline outlived the hang-up", handle.call_id)

    def _on_event(self, event: Event) -> None:
        """Bus listener: the played agent text of calls leaving a voicemail message."""
        if isinstance(event, AgentSpoke):
            watch = self._watches.get(event.call_id)
            if watch is not None:
                watch.heard(event.text)

    async def converse(self, job: DialJob, handle: CallHandle) -> str:
        """Run the reminder conversation on an answered call; its outcome."""
        if handle.disconnected.is_set():  # the callee hung up while AMD listened
            return "no-decision"
        server = self.server
        agent = server.agent
        assert agent is not None
        dialog = agent.new_dialog(handle.call_id, server.bus.emit)

        def opt_out(method: str) -> None:
            self.consent.revoke(
                job.number,
                "all",
                method=method,
                source="outbound-call",
                evidence=f"opt-out on reminder call {handle.call_id}",
                call_id=handle.call_id,
            )

        opening = dialog.start_outbound(WORKFLOW, job.appointment_id, opt_out)
        server._call_events[handle.call_id] = []
        await server._run_call(handle, "outbound", dialog=dialog, greeting=opening.text)
        return reminder_outcome(dialog)

    # -- control socket --------------------------------------------------------------------

    def register(self, control: ControlServer) -> None:
        """Register the ``outbound.*`` operations."""
        control.register("outbound.dial", self.op_dial)
        control.register("outbound.reminders", self.op_reminders)
        control.register("outbound.job", self.op_job)
        control.register("outbound.campaign", self.op_campaign)
        control.register("outbound.preview", self.op_preview)

    async def _record(self, actor: str, meta: dict[str, Any]) -> None:
        """Put a campaign start on the audit log first; refused if it cannot be written."""
        check_actor(actor)
        if self.server.audit is not None:
            await self._audit.record("AdminOutboundStarted", actor, meta)

    async def op_dial(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """Queue one reminder dial (the gate still decides at dial time)."""
        number, appt = args.get("number"), args.get("appointment_id", "")
        if not isinstance(number, str) or not number.strip() or not isinstance(appt, str):
            raise ControlError("bad_request", "number (text) and appointment_id (text) needed")
        job = DialJob(
            number.strip(),
            appointment_id=appt,
            scope=str(args.get("scope", "reminders")),
            campaign=str(args.get("campaign", "manual")),
        )
        await self._record(actor, {"campaign": job.campaign, "jobs": 1})
        self.dialler.submit(job)
        return {"job_id": job.job_id}

    async def _calendar_jobs(self, args: dict[str, Any], campaign: str) -> list[DialJob]:
        """:func:`reminder_jobs` for ``args["days"]``; a bad ``days`` or calendar is refused."""
        days = args.get("days")
        if not isinstance(days, int) or isinstance(days, bool):
            raise ControlError("bad_request", "days (a whole number) needed")
        db = Path(self.server.settings.scheduling.db)
        try:
            region = self.server.settings.outbound.region
            return await asyncio.to_thread(
                reminder_jobs, db, datetime.now(), days, campaign, region
            )
        except ValueError as exc:
            raise ControlError("bad_request", str(exc)) from exc
        except sqlite3.Error as exc:
            raise ControlError("unavailable", "the calendar cannot be read") from exc

    async def op_reminders(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """Queue a reminder campaign for the appointments of the next ``days`` days."""
        campaign = str(args.get("campaign") or f"reminders-{datetime.now():%Y%m%d-%H%M%S}")
        jobs = await self._calendar_jobs(args, campaign)
        days = args["days"]
        await self._record(actor, {"campaign": campaign, "jobs": len(jobs), "days": days})
        for job in jobs:
            self.dialler.submit(job)
        return {"campaign": campaign, "jobs": [j.job_id for j in jobs]}

    async def op_job(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """A job's outcome and attempts."""
        job_id = str(args.get("job_id", ""))
        return {
            "outcome": self.store.outcome(job_id),
            "attempts": [list(a) for a in self.store.attempts(job_id)],
        }

    async def op_campaign(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """A campaign's jobs per outcome (``""``: still running)."""
        return {"outcomes": self.store.summary(str(args.get("campaign", "")))}

    async def op_preview(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """A dry run of ``outbound.reminders`` for the campaigns page: counts only.

        Every appointment the campaign would dial is put to the real gate (DNC, consent, the
        calling window at the dialler's clock, ``now``) through a silent sink: nothing is
        queued, dialled or recorded, and no ``DialRefused`` is emitted for a dial never tried.
        The answer holds no number: ``{"appointments": n, "refused": {reason: count}}``.
        """
        jobs = await self._calendar_jobs(args, "preview")
        quiet = OutboundGate(
            self.consent,
            self.dnc,
            self.gate.window,
            lambda _event: None,
            region=self.server.settings.outbound.region,
        )
        now = self.dialler.clock()
        refused = Counter(
            d.reason
            for j in jobs
            if not (d := quiet.check(j.number, j.scope, now, j.address_tz)).allowed
        )
        return {"appointments": len(jobs), "refused": dict(refused)}


def start_outbound(
    server: ApplianceServer, control: ControlServer | None
) -> OutboundService | None:
    """Start the dialler when ``[outbound] enabled`` (else ``None``); register its operations."""
    if not server.settings.outbound.enabled:
        return None
    service = OutboundService(server)
    if control is not None:
        service.register(control)
    service.start()
    _LOGGER.info("outbound dialler ready (max %d at once)", server.settings.outbound.max_concurrent)
    return service
