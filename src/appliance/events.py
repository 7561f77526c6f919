"""Typed domain events of the call path.

The call path emits these; observers (call metadata, the future audit log, the test-only event
stream) consume them and never reach into pipeline stages. Some events carry caller content
(``TurnEnded.user_text``, ``DtmfReceived.digit``): such fields are marked ``content=True`` in
:data:`CONTENT_FIELDS` and must only ever go to an encrypted store or to the explicitly enabled
test event stream, never to logs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class Event:
    """Base event: ``call_id`` is our opaque per-call id (never the caller's number)."""

    call_id: str
    t: float = field(default_factory=_now, kw_only=True)

    @property
    def kind(self) -> str:
        """Event type name, e.g. ``"CallAnswered"``."""
        return type(self).__name__


@dataclass(frozen=True)
class CallOffered(Event):
    """An INVITE arrived from ``source_ip`` (the trunk peer's address, not the caller)."""

    source_ip: str


@dataclass(frozen=True)
class CallRejected(Event):
    """An INVITE was refused with a SIP status code (403 not allowed, 503 at capacity)."""

    status: int
    reason: str


@dataclass(frozen=True)
class CallAnswered(Event):
    """The call was answered with 200 OK; ``codec`` is the negotiated codec.

    ``channel`` is ``"sip"`` for a call from the trunk, ``"webrtc"`` for a signed-in user's
    browser test call from the admin page (counted apart in metrics).
    """

    codec: str = ""
    channel: str = "sip"


@dataclass(frozen=True)
class DisclosurePlayed(Event):
    """The AI disclosure finished playing; ``started``/``t`` bound it (epoch seconds)."""

    started: float
    text: str


@dataclass(frozen=True)
class AgentSpoke(Event):
    """The agent finished a reply; ``text`` is what was actually played (after barge-in)."""

    text: str
    interrupted: bool
    source: str  # "template", "llm", "disclosure", "greeting", "fallback"


@dataclass(frozen=True)
class TurnEnded(Event):
    """The caller finished a turn; ``user_text`` is the final transcript (content)."""

    user_text: str


@dataclass(frozen=True)
class BargeIn(Event):
    """The caller spoke over the agent; queued agent audio was dropped."""

    dropped_ms: float


@dataclass(frozen=True)
class DtmfReceived(Event):
    """A keypad key arrived; ``method`` is ``"rfc4733"`` or ``"sip-info"``.

    ``in_slot``: the dialogue was asking for digits (a workflow's digit slot, e.g. a date of
    birth); only then does ``digit`` (content) hold the key. Outside a digit slot the key may be
    anything (a card number typed at the wrong moment), so ``digit`` is ``""`` and ``count`` is
    how many keys the caller has pressed outside digit slots in this call, this one included
    (PCI DSS v4.0 req. 3.3: no card data stored, encrypted or not). ``count`` is 0 in a slot.
    """

    digit: str
    method: str
    in_slot: bool = True
    count: int = 0


@dataclass(frozen=True)
class TurnLatency(Event):
    """Per-turn stage latencies in seconds (no content).

    ``endpointing_s + agent_s + reply_s == voice_to_voice_s`` when all three are known: the
    caller's last voice to the turn's end, the turn's end to the dialogue's reply leaving the
    receptionist, and that to the agent's first audio. ``stt_s`` (VAD stop to transcript)
    overlaps the endpointing; ``llm_ttft_s`` and ``tts_ttfa_s`` lie inside ``reply_s``.
    ``listening`` is the kind of answer the dialogue expected (``free``, ``digits``, ...).
    ``stt_confidence`` is the STT's confidence 0..1 in the turn's last transcript (the figure
    the dialogue gets, ``LocalWhisperSTTService.last_confidence``), ``None`` when unknown.
    """

    endpointing_s: float | None
    stt_s: float | None
    llm_ttft_s: float | None
    tts_ttfa_s: float | None
    voice_to_voice_s: float | None
    agent_s: float | None = None
    reply_s: float | None = None
    listening: str = ""
    stt_confidence: float | None = None


@dataclass(frozen=True)
class CallEnded(Event):
    """The call ended; ``disposition`` e.g. ``"caller_hangup"``, ``"agent_hangup"``."""

    disposition: str
    duration_s: float


@dataclass(frozen=True)
class ConsentRecorded(Event):
    """A TCPA consent (or its revocation) for a phone number (content: number and evidence).

    ``call_id`` is the call it was given in, or ``""``. ``scope`` e.g. ``"reminders"`` (``"all"``
    for a revocation of every scope, an opt-out); ``method`` e.g. ``"verbal-on-call"``,
    ``"dtmf"``, ``"written"``; ``revoked`` marks a revocation. ``source`` is where the record
    came from (``"import"``, ``"admin"``, ``"inbound-call"``; ``""`` in records written before
    it existed) and ``given_t`` when the callee gave (or revoked) it, epoch seconds (``0.0``:
    at ``t``, the time it was recorded).
    """

    phone_number: str
    scope: str
    method: str
    evidence: str = ""
    revoked: bool = False
    source: str = ""
    given_t: float = 0.0


@dataclass(frozen=True)
class DialRefused(Event):
    """An outbound dial was refused by a TCPA gate (content: the number).

    ``reason`` is the gate's fixed reason (``"no-consent"``, ``"consent-revoked"``,
    ``"consent-out-of-scope"``, ``"dnc"``, ``"outside-window"``, ``"holiday"``,
    ``"unknown-timezone"``, ``"invalid-number"``); ``scope`` the consent scope of the call
    (``"reminders"``...). ``call_id`` is the planned call's id, or ``""``.
    """

    phone_number: str
    scope: str
    reason: str


@dataclass(frozen=True)
class AmdDecided(Event):
    """Answering-machine detection on an answered outbound call (ADR 0022); no content, no audio.

    ``decision`` is the detector's (``"human"``, ``"machine"``, ``"unknown"``) and ``cause`` the
    rule that made it (``"after_greeting_silence"``, ``"long_greeting"``, ``"beep"``...);
    ``decided_at_ms`` is audio time since the answer, ``wall_ms`` the wall-clock time since the
    answer when the decision was taken. ``speech_ms`` and ``words`` are the speech-pattern
    features, ``beep_ms``/``beep_hz`` the first beep's onset (audio ms) and frequency, when one
    was heard. ``treated_as`` is what the dialler did: ``"live"`` (the disclosure and the
    conversation; ``unknown`` counts as live) or ``"voicemail"`` (the no-PHI message). For
    voicemail the record is written when the message may start: ``cue`` says why
    (``"beep"``, ``"greeting_end"``, ``"timeout"``; ``"hung_up"``: the call ended first) and
    ``cue_at_ms`` when (audio ms); both are empty for a live answer.
    """

    decision: str
    cause: str
    decided_at_ms: int
    wall_ms: int
    speech_ms: int
    words: int
    treated_as: str
    beep_ms: int | None = None
    beep_hz: float | None = None
    cue: str = ""
    cue_at_ms: int | None = None


@dataclass(frozen=True)
class ConfigChanged(Event):
    """The configuration was reloaded (``accepted``) or a reload was refused; no content."""

    accepted: bool
    detail: str


@dataclass(frozen=True)
class IntentRecognized(Event):
    """A caller turn was classified: ``intent`` from the workflows' enum, ``confidence`` 0..1.

    ``method`` is ``"embedding"``, ``"rule"`` or ``"llm"``; ``workflow`` and ``node`` say where
    the dialogue is. No content: intents and node names are fixed identifiers.
    """

    intent: str
    confidence: float
    method: str
    workflow: str = ""
    node: str = ""


@dataclass(frozen=True)
class SlotFilled(Event):
    """A workflow slot was filled (``value`` is content: a name, date of birth, date...).

    ``confidence`` 0..1; ``source`` is ``"speech"`` or ``"dtmf"``; ``confirmed`` is set once the
    caller confirmed it.
    """

    workflow: str
    slot: str
    value: str
    confidence: float
    source: str = "speech"
    confirmed: bool = False


@dataclass(frozen=True)
class ToolCalled(Event):
    """A workflow tool ran (``arguments`` and ``result`` are content, JSON text).

    ``tool`` e.g. ``"calendar.reschedule"``; ``ok`` its success; ``idempotency_key`` makes a
    retried call a no-op (a hash of the call id, tool and arguments, no PHI).
    """

    tool: str
    ok: bool
    idempotency_key: str
    arguments: str = ""
    result: str = ""


@dataclass(frozen=True)
class IdentityVerified(Event):
    """The caller's identity check ran against the record (``ok``); no content."""

    workflow: str
    ok: bool
    attempts: int = 1


ESCALATION_REASONS = (
    "explicit_request",
    "misunderstood_twice",
    "out_of_scope",
    "high_risk",
    "low_confidence",
    "frustration",
    "stage_failure",
    "tier_disabled",
    "emergency",
    "language",
)
"""The documented escalation triggers, the values of :attr:`Escalated.reason`."""


@dataclass(frozen=True)
class Escalated(Event):
    """The dialogue decided to hand the caller to a person; ``reason`` is a fixed trigger name.

    Triggers: :data:`ESCALATION_REASONS`.
    """

    reason: str
    workflow: str = ""
    node: str = ""


@dataclass(frozen=True)
class TransferAttempted(Event):
    """A SIP REFER was sent.

    ``mode`` is ``"blind"`` or ``"attended"``; ``target`` is a queue or
    extension URI from the config, not a caller number) with the non-PHI ``handoff_id``.
    """

    mode: str
    target: str
    handoff_id: str


@dataclass(frozen=True)
class TransferResult(Event):
    """How a transfer ended.

    ``ok`` or not, the final SIP ``status`` (NOTIFY sipfrag or REFER
    response, 0 for a timeout), and whether the CTI webhook was delivered. ``mode`` is the
    attempt's ``"blind"`` or ``"attended"`` (as in :class:`TransferAttempted`; ``""`` from
    emitters that predate it).
    """

    handoff_id: str
    ok: bool
    status: int
    webhook_delivered: bool = False
    mode: str = ""


@dataclass(frozen=True)
class MessageTaken(Event):
    """The caller left a message for staff (``text`` is content: the message transcript)."""

    reason: str
    text: str = ""


@dataclass(frozen=True)
class PciPause(Event):
    """The PCI DTMF pause started (``active``) or ended.

    When it ends, ``digits`` is how many
    digits went to the payment handler and ``outcome`` its fixed result name. Never digits.
    """

    active: bool
    digits: int = 0
    outcome: str = ""
    #: The opaque id the payment handler got with the card number (links the two records).
    handoff_id: str = ""


@dataclass(frozen=True)
class WorkflowOutcome(Event):
    """A workflow reached a terminal outcome.

    ``resolved``, ``transferred`` or ``message_taken`` (or ``abandoned`` when the caller
    hung up first, ``caller_silent`` when the agent hung up on a caller who stayed silent after
    "Are you still there?"; ``workflow`` is then empty outside a workflow); ``intent`` is the
    call's main intent.
    """

    workflow: str
    outcome: str
    intent: str = ""


@dataclass(frozen=True)
class CallScored(Event):
    """Post-call score (no content except ``summary``, which is content)."""

    outcome: str
    contained: bool
    transfer_appropriate: bool | None
    disclosure_ok: bool
    identity_before_phi_ok: bool
    no_card_number_ok: bool
    sentiment: float
    judge: str
    summary: str = ""


@dataclass(frozen=True)
class ServiceStarted(Event):
    """The agent started.

    ``version`` is the running version; ``previous_version`` is the version of the last start
    when it differs (a software update or rollback is on the record), else ``""``. No content.
    """

    version: str
    previous_version: str = ""
    #: ``"unclean"`` when the last run ended without a clean stop (a crash, a kill, or the
    #: liveness deadline: the worker was restarted), else ``""``.
    previous_exit: str = ""


@dataclass(frozen=True)
class MediaStats(Event):
    """One call's media path at its end: 20 ms frame counts and callback failures, no content.

    ``rx_*`` is caller audio from RTP, ``tx_*`` agent audio to RTP; ``tx_underruns`` counts
    ticks with no agent audio queued (silence sent); ``callback_errors`` counts exceptions
    caught inside pjmedia's port callbacks.
    """

    rx_frames: int
    rx_dropped: int
    tx_frames: int
    tx_underruns: int
    callback_errors: int


CONTENT_FIELDS = {
    "text",
    "user_text",
    "digit",
    "phone_number",
    "evidence",
    "value",
    "arguments",
    "result",
    "summary",
}

Listener = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out of events to listeners; thread-safe, listener errors isolated."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        """Add a listener called for every event, in emit order."""
        with self._lock:
            self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to every listener; a failing listener never breaks the call."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - observers must not take the call down
                _LOGGER.exception("event listener failed")


def event_to_dict(event: Event) -> dict[str, Any]:
    """Serialise an event to a JSON-compatible dict with its ``kind``."""
    data = asdict(event)
    data["kind"] = event.kind
    return data


class JsonlEventSink:
    """Test-only event stream: one JSON object per line, content included.

    Enabled only by ``appliance serve --test-events PATH``; it exists so end-to-end tests can
    compare what the agent said with what arrived on the wire. Never enable it in production:
    it writes caller content in clear.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", buffering=1, encoding="utf-8")

    def __call__(self, event: Event) -> None:
        """Append one event as a JSON line."""
        line = json.dumps(event_to_dict(event), default=str)
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()
