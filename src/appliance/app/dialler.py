"""The outbound dialler: appointment reminders placed over the PBX trunk, behind the TCPA gate.

Issue 15, Deliver item 4; the gates are :mod:`appliance.policy.outbound_gate` (ADR 0019).

A :class:`Dialler` holds a queue of :class:`DialJob` (number, consent scope, appointment,
attempt), ordered by when each is due. For each job it waits, in this order, for:

1. the job's due time (a retry's back-off);
2. a free outbound slot (``[outbound] max_concurrent``, kept below ``[sip] max_calls`` so an
   inbound caller always finds one: :func:`~appliance.config.outbound.check_room_for_inbound`);
3. the campaign's rate limit (``[outbound] rate_per_minute``, a ``pyrate-limiter`` sliding
   window log per campaign, fed with the dialler's own clock);

and only then asks :meth:`~appliance.policy.outbound_gate.OutboundGate.check` with the clock's
time *at that moment*, immediately before the INVITE. A refused dial sends nothing, is recorded
as ``refused:<reason>`` and is not retried; the gate itself emits ``DialRefused`` into the
audit log. An exception from the gate is a refusal too (``refused:gate-error``): no dial
without a positive answer.

A placed call ends one of these ways (SIP final status of the INVITE, RFC 3261 section 21):

* ``busy``: 486 Busy Here, 600 Busy Everywhere: retried after ``busy_backoff_s``;
* ``no-answer``: 408 Request Timeout, 480 Temporarily Unavailable, 487 (our CANCEL once
  ``ring_timeout_s`` ran out): retried after ``no_answer_backoff_s``;
* answered (2xx): the answering-machine seam decides live or ``voicemail``, then the
  conversation gives ``confirmed``, ``cancelled``, ``rescheduled``, ``opted-out`` or
  ``no-decision``;
* ``failed``: anything else (a 404, a 503 from the trunk, no call slot).

Each job's every attempt and its final outcome are kept in :class:`OutcomeStore` (SQLite).
Nothing here logs a number: logs name the job id only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pyrate_limiter import Duration, InMemoryBucket, Rate, RateItem

from appliance.audio.bridge import AudioBridge
from appliance.config.outbound import OutboundSettings
from appliance.media.sip import CallHandle, SipUserAgent
from appliance.migrations import apply_migrations
from appliance.policy.calling_window import CallingWindow
from appliance.policy.consent import ConsentStore, Sink
from appliance.policy.dnc import DncList
from appliance.policy.outbound_gate import OutboundGate

_LOGGER = logging.getLogger(__name__)

BUSY_STATUSES = frozenset({486, 600})
"""Final INVITE statuses that mean busy (RFC 3261 21.4.24, 21.6.1)."""
NO_ANSWER_STATUSES = frozenset({408, 480, 487})
"""Final statuses that mean nobody answered (487: our CANCEL at the ring timeout)."""

CONVERSATION_OUTCOMES = ("confirmed", "cancelled", "rescheduled", "opted-out", "no-decision")
"""What an answered, live reminder call can end with."""
OUTCOMES = (*CONVERSATION_OUTCOMES, "voicemail", "no-answer", "busy", "failed")
"""Final outcomes of a job, besides ``refused:<gate reason>``."""


@dataclass(frozen=True)
class DialJob:
    """One callee to reach.

    Attributes:
        number: The callee's number (any format ``phonenumbers`` parses; E.164 preferred).
        appointment_id: The appointment the reminder is about (``""`` for none).
        scope: The consent scope the call needs (``"reminders"``).
        campaign: The campaign it belongs to (the rate limit is per campaign).
        address_tz: IANA zone(s) of the patient's address, when known (win over the number's;
            :func:`appliance.policy.address_zone.address_zones`).
        attempt: Which dial of this job comes next, 1-based.
        job_id: Opaque id for logs and the outcome table (never the number).
    """

    number: str
    appointment_id: str = ""
    scope: str = "reminders"
    campaign: str = "default"
    address_tz: str | tuple[str, ...] | None = None
    attempt: int = 1
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


@dataclass(frozen=True)
class DialResult:
    """What one placed INVITE came to.

    Attributes:
        status: The final SIP status of the INVITE (200 when answered).
        handle: The answered call (media up), or ``None``.
    """

    status: int
    handle: CallHandle | None = None


class Placer(Protocol):
    """Places one outbound INVITE and waits for its answer (:class:`SipPlacer`)."""

    async def place(
        self, call_id: str, uri: str, headers: dict[str, str], ring_timeout_s: float
    ) -> DialResult:
        """Send the INVITE; return its final status (and the call when answered)."""
        ...


#: ``(job, call) -> outcome`` (one of :data:`CONVERSATION_OUTCOMES`): runs the reminder
#: conversation on an answered live call and returns when it ended.
Converse = Callable[[DialJob, CallHandle], Awaitable[str]]
#: ``call -> True`` when an answering machine took the call (the AMD seam, see
#: ``appliance.audio.amd``); ``None`` in the dialler treats every answer as live.
DetectMachine = Callable[[CallHandle], Awaitable[bool]]
#: ``(job, call) -> None``: leave the no-PHI voicemail message after the beep.
LeaveMessage = Callable[[DialJob, CallHandle], Awaitable[None]]


def _now_utc() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- SIP placer


class SipPlacer:
    """Places calls through the box's pjsua2 user agent (``SipUserAgent.make_call``).

    Args:
        ua: The running user agent (the agent's own, so calls share its transport and slots).
    """

    def __init__(self, ua: SipUserAgent) -> None:
        self.ua = ua

    async def place(
        self, call_id: str, uri: str, headers: dict[str, str], ring_timeout_s: float
    ) -> DialResult:
        """INVITE ``uri``; wait for media (answered) or the end (a final non-2xx).

        After ``ring_timeout_s`` without an answer the INVITE is cancelled (CANCEL, so the
        final status is 487, "no answer").
        """
        handle = CallHandle(call_id=call_id, bridge=AudioBridge(self.ua.clock_rate))
        self.ua.make_call(uri, handle, headers)
        media = asyncio.ensure_future(handle.media_ready.wait())
        ended = asyncio.ensure_future(handle.disconnected.wait())
        try:
            done, _ = await asyncio.wait(
                {media, ended}, timeout=ring_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            media.cancel()
            ended.cancel()
        if handle.disconnected.is_set():
            return DialResult(handle.end_status or 500)
        if handle.media_ready.is_set():
            return DialResult(200, handle)
        handle.hangup(487)
        try:
            await asyncio.wait_for(handle.disconnected.wait(), 5.0)
        except TimeoutError:
            _LOGGER.warning("dial %s: no final answer after CANCEL", call_id)
        return DialResult(487)


# ----------------------------------------------------------------------------- outcome store


def _m001(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, campaign TEXT NOT NULL,"
        " number TEXT NOT NULL, scope TEXT NOT NULL, appointment_id TEXT NOT NULL,"
        " created_t REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " outcome TEXT NOT NULL DEFAULT '', outcome_t REAL)"
    )
    conn.execute("CREATE INDEX jobs_campaign ON jobs (campaign, outcome)")
    conn.execute("CREATE INDEX jobs_appointment ON jobs (appointment_id)")
    conn.execute(
        "CREATE TABLE attempts (id INTEGER PRIMARY KEY, job_id TEXT NOT NULL"
        " REFERENCES jobs(job_id), attempt INTEGER NOT NULL, t REAL NOT NULL,"
        " call_id TEXT NOT NULL, sip_status INTEGER, result TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX attempts_job ON attempts (job_id, attempt)")


MIGRATIONS = [("001_dialler", _m001)]


class OutcomeStore:
    """Dial jobs, every attempt and each job's final outcome, in one SQLite file (WAL).

    The numbers are kept in clear for the campaigns page; the file lives on the sealed data
    partition beside the consent and DNC files (ADR 0019, decision 8).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        apply_migrations(self._conn, MIGRATIONS, self._conn)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def add_job(self, job: DialJob, t: float) -> None:
        """Record a queued job (idempotent on its id)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO jobs (job_id, campaign, number, scope, appointment_id,"
                " created_t) VALUES (?, ?, ?, ?, ?, ?)",
                (job.job_id, job.campaign, job.number, job.scope, job.appointment_id, t),
            )

    def add_attempt(
        self, job: DialJob, t: float, call_id: str, sip_status: int | None, result: str
    ) -> None:
        """Record one dial attempt (``sip_status`` ``None`` when no INVITE was sent)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO attempts (job_id, attempt, t, call_id, sip_status, result)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job.job_id, job.attempt, t, call_id, sip_status, result),
            )
            self._conn.execute(
                "UPDATE jobs SET attempts = ? WHERE job_id = ?", (job.attempt, job.job_id)
            )

    def finish(self, job: DialJob, outcome: str, t: float) -> None:
        """Set the job's final outcome."""
        with self._lock:
            self._conn.execute(
                "UPDATE jobs SET outcome = ?, outcome_t = ? WHERE job_id = ?",
                (outcome, t, job.job_id),
            )

    def outcome(self, job_id: str) -> str:
        """The job's final outcome (``""`` while it runs)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT outcome FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        return "" if row is None else str(row[0])

    def attempts(self, job_id: str) -> list[tuple[int, float, int | None, str]]:
        """``(attempt, t, sip_status, result)`` of every attempt of a job, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT attempt, t, sip_status, result FROM attempts WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
        return [(int(a), float(t), s, str(r)) for a, t, s, r in rows]

    def summary(self, campaign: str) -> dict[str, int]:
        """Jobs per final outcome of a campaign (``""``: still running)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT outcome, count(*) FROM jobs WHERE campaign = ? GROUP BY outcome",
                (campaign,),
            ).fetchall()
        return {str(o): int(n) for o, n in rows}

    def latest_for_appointment(self, appointment_id: str) -> str:
        """The last final outcome of a reminder about an appointment (``""``: none)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT outcome FROM jobs WHERE appointment_id = ? AND outcome != ''"
                " ORDER BY outcome_t DESC LIMIT 1",
                (appointment_id,),
            ).fetchone()
        return "" if row is None else str(row[0])


# ----------------------------------------------------------------------------- dialler


def open_gate(settings: OutboundSettings, sink: Sink) -> tuple[ConsentStore, DncList, OutboundGate]:
    """Open the consent and DNC files of ``[outbound]`` and build the gate over them.

    ``sink`` receives every ``ConsentRecorded`` and ``DialRefused`` (the app passes its event
    bus's ``emit``, so the ``AuditObserver`` seals them in the audit log).
    """
    dnc = DncList(settings.dnc_db, sink, region=settings.region)
    consent = ConsentStore(settings.consent_db, sink, dnc=dnc, region=settings.region)
    window = CallingWindow(settings.window_start, settings.window_end, frozenset(settings.holidays))
    return consent, dnc, OutboundGate(consent, dnc, window, sink, region=settings.region)


def classify(status: int) -> str:
    """Map a final INVITE status to ``"answered"``, ``"busy"``, ``"no-answer"`` or ``"failed"``."""
    if 200 <= status < 300:
        return "answered"
    if status in BUSY_STATUSES:
        return "busy"
    if status in NO_ANSWER_STATUSES:
        return "no-answer"
    return "failed"


def backoff_s(schedule: list[float], attempt: int) -> float:
    """The wait before dial ``attempt + 1`` after dial ``attempt`` failed (1-based).

    ``schedule[0]`` follows the first dial; past its end the last wait repeats.
    """
    return float(schedule[min(attempt, len(schedule)) - 1])


def caller_id_headers(caller_id: str) -> dict[str, str]:
    """The INVITE's caller-ID header (RFC 3325 P-Asserted-Identity), or none."""
    if not caller_id:
        return {}
    uri = caller_id if caller_id.startswith(("sip:", "sips:", "tel:")) else f"tel:{caller_id}"
    return {"P-Asserted-Identity": f"<{uri}>"}


class Dialler:
    """Runs dial jobs: due time, concurrency cap, rate limit, the gate at dial time, retries.

    Args:
        settings: ``[outbound]``.
        gate: The TCPA gate (asked immediately before every INVITE).
        placer: Places the INVITEs (:class:`SipPlacer`).
        store: Where jobs, attempts and outcomes go.
        converse: Runs the reminder conversation on a live answer; ``None`` hangs up at once
            and records ``no-decision``.
        detect_machine: The answering-machine seam; ``None`` treats every answer as live.
        leave_message: Leaves the voicemail message when ``detect_machine`` says so.
        clock: The wall clock (aware datetimes); tests freeze it.
        sleep: Waits that many seconds; tests advance their frozen clock instead.
        hold: While it returns ``True`` nothing is dialled (the agent draining, or its audit
            log failed: the box takes no new calls either way).
    """

    def __init__(
        self,
        settings: OutboundSettings,
        gate: OutboundGate,
        placer: Placer,
        store: OutcomeStore,
        *,
        converse: Converse | None = None,
        detect_machine: DetectMachine | None = None,
        leave_message: LeaveMessage | None = None,
        clock: Callable[[], datetime] = _now_utc,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        hold: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.placer = placer
        self.store = store
        self.converse = converse
        self.detect_machine = detect_machine
        self.leave_message = leave_message
        self.clock = clock
        self._sleep = sleep
        self._hold = hold
        self._queue: list[tuple[float, int, DialJob]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._buckets: dict[str, InMemoryBucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Outbound calls in progress (INVITE sent, not yet ended).
        self.active = 0
        #: Most outbound calls in progress at once so far.
        self.peak_active = 0

    # -- queue -----------------------------------------------------------------------------

    def _t(self) -> float:
        return self.clock().timestamp()

    def submit(self, job: DialJob, *, due_t: float | None = None) -> DialJob:
        """Queue a job (due now unless ``due_t``, epoch seconds); returns it."""
        self.store.add_job(job, self._t())
        heapq.heappush(self._queue, (due_t if due_t is not None else 0.0, next(self._seq), job))
        self._wakeup.set()
        return job

    @property
    def pending(self) -> int:
        """Jobs queued or dialling."""
        return len(self._queue) + len(self._tasks)

    async def run_until_idle(self) -> None:
        """Dial until the queue is empty and every call has ended (a campaign run, tests)."""
        while self._queue or self._tasks:
            if not self._queue:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                continue
            await self._next()

    async def run_forever(self) -> None:
        """Dial jobs as they are submitted, until cancelled (the agent's background task)."""
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._next()

    async def _next(self) -> None:
        if self._hold is not None and self._hold():
            await self._sleep(1.0)
            return
        due, _, job = self._queue[0]
        wait = due - self._t()
        if wait > 0:
            await self._sleep(min(wait, 60.0))
            return
        heapq.heappop(self._queue)
        await self._slots.acquire()
        try:
            await self._rate_limit(job.campaign)
            started = await self._dial(job)
        except BaseException:
            self._slots.release()
            raise
        if not started:
            self._slots.release()

    async def _rate_limit(self, campaign: str) -> None:
        bucket = self._buckets.get(campaign)
        if bucket is None:
            # Per minute as configured, and at most a sixtieth of it (rounded up) per second:
            # no burst of a whole minute's dials at once. Besides being gentler on the trunk,
            # this keeps pjsua's socket churn (2 RTP/RTCP sockets a call, freed 500 ms late by
            # the select ioqueue, 64 handles) far below the rate that aborts the process.
            per_minute = self.settings.rate_per_minute
            bucket = InMemoryBucket(
                [Rate(-(-per_minute // 60), Duration.SECOND), Rate(per_minute, Duration.MINUTE)]
            )
            self._buckets[campaign] = bucket
        while True:
            now_ms = int(self._t() * 1000)
            item = RateItem(campaign, now_ms)
            if bucket.put(item):
                bucket.leak(now_ms)
                return
            wait_ms = bucket.waiting(item)  # the in-memory bucket answers synchronously
            assert isinstance(wait_ms, int)
            await self._sleep(max(wait_ms, 1) / 1000.0)

    # -- one dial --------------------------------------------------------------------------

    async def _dial(self, job: DialJob) -> bool:
        """Gate, then INVITE in a task; ``False`` when no call was started (refused)."""
        call_id = uuid.uuid4().hex[:12]
        now = self.clock()
        try:
            decision = self.gate.check(job.number, job.scope, now, job.address_tz, call_id=call_id)
            allowed, reason = decision.allowed, decision.reason
        except Exception:  # noqa: BLE001 - no dial without a positive answer
            _LOGGER.exception("dial %s: the gate failed; not dialled", job.job_id)
            allowed, reason = False, "gate-error"
        if not allowed:
            _LOGGER.info("dial %s attempt %d refused (%s)", job.job_id, job.attempt, reason)
            self.store.add_attempt(job, now.timestamp(), call_id, None, f"refused:{reason}")
            self.store.finish(job, f"refused:{reason}", now.timestamp())
            return False
        uri = self.settings.trunk_uri.format(number=decision.number)
        task = asyncio.create_task(self._call(job, call_id, uri), name=f"dial-{job.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _call(self, job: DialJob, call_id: str, uri: str) -> None:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        t0 = self._t()
        try:
            try:
                result = await self.placer.place(
                    call_id, uri, caller_id_headers(self.settings.caller_id),
                    self.settings.ring_timeout_s,
                )  # fmt: skip
            except Exception:  # noqa: BLE001
                _LOGGER.exception("dial %s: the call could not be placed", job.job_id)
                result = DialResult(500)
            kind = classify(result.status)
            outcome = kind
            if kind == "answered" and result.handle is not None:
                outcome = await self._answered(job, result.handle)
            self.store.add_attempt(job, t0, call_id, result.status, outcome)
        finally:
            self.active -= 1
            self._slots.release()
            self._wakeup.set()
        _LOGGER.info(
            "dial %s attempt %d: SIP %d, %s", job.job_id, job.attempt, result.status, outcome
        )
        if outcome in ("busy", "no-answer") and job.attempt < self.settings.max_attempts:
            schedule = (
                self.settings.busy_backoff_s
                if outcome == "busy"
                else self.settings.no_answer_backoff_s
            )
            due = self._t() + backoff_s(schedule, job.attempt)
            heapq.heappush(
                self._queue, (due, next(self._seq), replace(job, attempt=job.attempt + 1))
            )
            self._wakeup.set()
            return
        self.store.finish(job, outcome, self._t())

    async def _answered(self, job: DialJob, handle: CallHandle) -> str:
        try:
            if self.detect_machine is not None and await self.detect_machine(handle):
                if self.leave_message is not None:
                    await self.leave_message(job, handle)
                return "voicemail"
            if self.converse is None:
                return "no-decision"
            outcome = await self.converse(job, handle)
            return outcome if outcome in CONVERSATION_OUTCOMES else "no-decision"
        except Exception:  # noqa: BLE001 - one call's failure must not stop the campaign
            _LOGGER.exception("dial %s: the answered call failed", job.job_id)
            return "failed"
        finally:
            handle.hangup()
