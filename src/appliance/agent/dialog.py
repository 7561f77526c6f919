"""The dialogue manager: runs the workflows for one call, turn by turn.

Pure of audio and SIP: it takes caller turns (text plus STT confidence), keypad digits and the
results of transfers and PCI pauses, and returns :class:`Reply` objects (what to say, then what
to do). The pipeline's receptionist speaks them; the server carries out transfers and hang-ups.

Order of precedence for a caller turn (rules before models, safety before convenience):

1. a medical-emergency cue (always answered with the 911 notice);
2. an explicit request for a person -> escalate ``explicit_request``;
3. goodbye -> hang up politely;
4. detected frustration -> escalate ``frustration``;
5. the workflow step waiting for an answer (slot, confirmation, message);
6. at the top: an intent by embeddings -> its workflow (refused with a transfer,
   ``tier_disabled``, when its risk tier is not enabled); else the knowledge base; else a
   misunderstanding, and the second in a row escalates ``misunderstood_twice``.

Escalation always ends in a person or a message: if a transfer fails the caller is asked for a
message (or the workflow's ``on_fail`` node runs). The caller is never hung up on silently.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from typing import Any

from appliance.agent.calendar import (
    Appointment,
    Patient,
    SchedulingAdapter,
    SchedulingError,
    Slot,
    idempotency_key,
)
from appliance.agent.kb import KnowledgeBase
from appliance.agent.understanding import (
    INTENT_UNSURE,
    Extraction,
    IntentClassifier,
    LlmIntentClassifier,
    extract_slot,
    global_intent,
    speak_when,
    yes_no,
)
from appliance.agent.workflow import (
    AskNode,
    BranchNode,
    ConfirmNode,
    EndNode,
    KbAnswerNode,
    MessageNode,
    PciNode,
    SayNode,
    ToolNode,
    TransferNode,
    Workflow,
    WorkflowSet,
)
from appliance.errors import ApplianceError
from appliance.events import (
    Escalated,
    Event,
    IdentityVerified,
    IntentRecognized,
    MessageTaken,
    SlotFilled,
    ToolCalled,
    WorkflowOutcome,
)
from appliance.text.sentiment import is_frustrated

_LOGGER = logging.getLogger(__name__)


class Next(Enum):
    """What the call does once the reply has been played."""

    CONTINUE = "continue"
    TRANSFER = "transfer"
    HANGUP = "hangup"
    PCI = "pci"


@dataclass(frozen=True)
class TransferRequest:
    """A transfer to a person.

    ``handoff_id`` is non-PHI (it goes in a SIP header); ``reason`` is the escalation trigger;
    ``context`` is for the CTI webhook (intent, stage, slots, actions, summary; may hold PHI).
    """

    handoff_id: str
    reason: str
    context: dict[str, Any]


@dataclass(frozen=True)
class PciRequest:
    """Start the PCI DTMF pause.

    Collect ``digits_min``..``digits_max`` digits, ended by ``#``, within ``timeout_s`` seconds.
    """

    digits_min: int
    digits_max: int
    timeout_s: float


@dataclass
class Reply:
    """What to say (``texts``, spoken in order) and what to do after (``next``).

    ``use_llm`` hands the turn to the LLM instead (only with ``llm_off_script``).
    """

    texts: list[str] = field(default_factory=list)
    next: Next = Next.CONTINUE
    transfer: TransferRequest | None = None
    pci: PciRequest | None = None
    use_llm: bool = False
    source: str = "workflow"

    @property
    def text(self) -> str:
        """All texts joined with spaces."""
        return " ".join(t for t in self.texts if t)


@dataclass(frozen=True)
class DialogSettings:
    """Dialogue policy: enabled risk tiers, fixed phrases, LLM use."""

    enabled_tiers: tuple[str, ...] = ("low", "medium", "high")
    clinic_name: str = "the clinic"
    anything_else: str = "Is there anything else I can help you with?"
    llm_off_script: bool = False
    facts: dict[str, str] = field(default_factory=dict)


#: An unrecognised turn this short is kept and read together with the next one.
FRAGMENT_WORDS = 3

EMERGENCY_TEXT = "If this is a medical emergency, please hang up and dial 911 now."
REPROMPT_TEXT = (
    "Sorry, I didn't catch that. I can help with appointments, prescriptions, billing, or "
    "questions about the clinic. What would you like to do?"
)
HOLD_TEXT = "Please hold while I connect you with a member of our staff."
TRANSFER_FAILED_TEXT = "I'm sorry, I couldn't reach our staff just now."
MESSAGE_PROMPT_TEXT = (
    "Please leave a short message with the best number to reach you, and our staff will call "
    "you back."
)
MESSAGE_DONE_TEXT = "Thank you. I've passed your message to our staff. Goodbye."
FOLLOW_UP_TEXT = "What can I help you with?"
NOT_SURE_TEXT = "Just to be sure, do you want help with {what}?"


def fixed_texts(settings: DialogSettings) -> list[str]:
    """Phrases the dialogue says verbatim (to pre-render their audio)."""
    return [
        EMERGENCY_TEXT,
        REPROMPT_TEXT,
        HOLD_TEXT,
        TRANSFER_FAILED_TEXT + " " + MESSAGE_PROMPT_TEXT,
        MESSAGE_DONE_TEXT,
        FOLLOW_UP_TEXT,
        settings.anything_else,
        goodbye_text(settings),
    ]


def goodbye_text(settings: DialogSettings) -> str:
    """The goodbye said before the agent hangs up."""
    return f"Thank you for calling {settings.clinic_name}. Goodbye."


class _Wait(Enum):
    NOTHING = "nothing"
    SLOT = "slot"
    CONFIRM_SLOT = "confirm_slot"
    YES_NO = "yes_no"
    INTENT_CONFIRM = "intent_confirm"
    MESSAGE = "message"
    TRANSFER = "transfer"
    PCI = "pci"
    ANYTHING_ELSE = "anything_else"


@dataclass
class _State:
    workflow: Workflow | None = None
    node: str = ""
    intent: str = ""
    wait: _Wait = _Wait.NOTHING
    slots: dict[str, Extraction] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    pending: Extraction | None = None
    dtmf: str = ""
    dtmf_offered: bool = False
    misunderstood: int = 0
    unsure_intent: str = ""
    transfer_fail_node: str = ""
    patient: Patient | None = None
    appointment: Appointment | None = None
    slot: Slot | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)
    last_text: str = ""
    fragment: str = ""


class DialogManager:
    """Runs the workflows for one call.

    Args:
        call_id: Opaque call id for events.
        workflows: The loaded workflows.
        classifier: Intent matching over the workflows' examples.
        kb: The clinic's knowledge base.
        calendar: The scheduling adapter.
        emit: Event sink (typed events; content fields are sealed by the audit log).
        settings: Dialogue policy.
        now: Clock for slot parsing (clinic local time).
        llm_intents: Constrained LLM second opinion for unsure intents (capable models only).
    """

    def __init__(
        self,
        call_id: str,
        workflows: WorkflowSet,
        classifier: IntentClassifier,
        kb: KnowledgeBase,
        calendar: SchedulingAdapter | None,
        emit: Callable[[Event], None],
        settings: DialogSettings,
        now: Callable[[], datetime] = datetime.now,
        llm_intents: LlmIntentClassifier | None = None,
    ) -> None:
        self._call_id = call_id
        self._llm_intents = llm_intents
        self._workflows = workflows
        self._classifier = classifier
        self._kb = kb
        self._calendar = calendar
        self._emit = emit
        self._settings = settings
        self._now = now
        self._s = _State()
        self.main_intent = ""
        self.outcome = ""
        self.escalation_reason = ""

    # ------------------------------------------------------------------ public entry points

    @property
    def expects_dtmf(self) -> bool:
        """Whether keypad digits would fill the slot being asked for."""
        node = self._node()
        return (
            self._s.wait in (_Wait.SLOT, _Wait.CONFIRM_SLOT)
            and isinstance(node, AskNode)
            and (node.slot.dtmf or node.slot.type == "digits")
        )

    def handle_turn(self, text: str, stt_confidence: float = 1.0) -> Reply:
        """Answer one caller turn (``text``: the final transcript; ``stt_confidence`` 0..1)."""
        s = self._s
        s.last_text = text
        rule = global_intent(text)
        if rule == "emergency":
            self._intent("emergency", 1.0, "rule")
            self._emit(Escalated(self._call_id, reason="emergency", **self._where()))
            return Reply([EMERGENCY_TEXT], source="template")
        if s.wait is _Wait.MESSAGE:
            return self._take_message(text)
        if s.wait in (_Wait.TRANSFER, _Wait.PCI):
            return Reply()  # the call is being handed over / the keypad is collecting
        if rule == "human":
            self._intent("human", 1.0, "rule")
            return self._escalate("explicit_request", HOLD_TEXT)
        if rule == "goodbye" and s.wait is not _Wait.SLOT:
            self._intent("goodbye", 1.0, "rule")
            if s.workflow is not None:
                self._finish("abandoned", hangup=False)
            return Reply([goodbye_text(self._settings)], Next.HANGUP, source="template")
        if is_frustrated(text):
            return self._escalate("frustration", HOLD_TEXT)
        if s.wait is _Wait.SLOT:
            return self._answer_slot(text, stt_confidence)
        if s.wait is _Wait.CONFIRM_SLOT:
            return self._confirm_slot(text, stt_confidence)
        if s.wait is _Wait.YES_NO:
            return self._answer_yes_no(text)
        if s.wait is _Wait.INTENT_CONFIRM:
            answer = yes_no(text)
            if answer is True:
                return self._start(s.unsure_intent, 0.0, "confirmed")
            if answer is False:
                s.wait = _Wait.NOTHING
                return Reply([FOLLOW_UP_TEXT])
        if s.wait is _Wait.ANYTHING_ELSE:
            answer = yes_no(text)
            if answer is False:
                return Reply([goodbye_text(self._settings)], Next.HANGUP, source="template")
            if answer is True and len(text.split()) <= 3:
                s.wait = _Wait.NOTHING
                return Reply([FOLLOW_UP_TEXT])
        return self._top(text)

    def handle_dtmf(self, digit: str) -> Reply | None:
        """A keypad digit outside a PCI pause: fills a digit slot (``#`` ends, ``*`` clears).

        Returns ``None`` while digits are still being collected or when none are expected.
        """
        if not self.expects_dtmf:
            return None
        node = self._node()
        assert isinstance(node, AskNode)
        s = self._s
        if digit == "*":
            s.dtmf = ""
            return None
        if digit != "#":
            s.dtmf += digit
            if len(s.dtmf) < node.slot.digits_max:
                return None
        keyed, s.dtmf = s.dtmf, ""
        if not keyed:
            return None
        ex = extract_slot(node.slot, keyed, 1.0, self._now(), keyed=True)
        if ex is None:
            return self._slot_failed(node, "I didn't get that number.")
        return self._fill(node, ex, "dtmf")

    @property
    def digits_pending(self) -> bool:
        """Whether keyed digits are collected but not yet taken (no ``#``, count not reached)."""
        return bool(self._s.dtmf) and self.expects_dtmf

    def flush_dtmf(self) -> Reply | None:
        """Take the keyed digits as complete (the inter-digit timeout), like ``#``."""
        if not self.digits_pending:
            return None
        return self.handle_dtmf("#")

    def transfer_succeeded(self) -> None:
        """The REFER was accepted and the target answered: the workflow ends transferred."""
        self._finish("transferred", hangup=True)

    def transfer_failed(self) -> Reply:
        """The transfer failed (REFER rejected, NOTIFY non-2xx, timeout): apologise, fall back."""
        s = self._s
        if s.transfer_fail_node and s.workflow is not None:
            node_id, s.transfer_fail_node = s.transfer_fail_node, ""
            reply = self._run(node_id)
            reply.texts.insert(0, TRANSFER_FAILED_TEXT)
            return reply
        s.wait = _Wait.MESSAGE
        s.node = ""
        return Reply([TRANSFER_FAILED_TEXT, MESSAGE_PROMPT_TEXT])

    def pci_done(self, ok: bool) -> Reply:
        """The PCI pause ended (``ok``: the payment handler accepted the card)."""
        node = self._node()
        self._s.wait = _Wait.NOTHING
        if not isinstance(node, PciNode):
            return Reply()
        return self._run(node.on_ok if ok else node.on_fail)

    def stage_failed(self, stage: str) -> Reply:
        """A pipeline stage (STT, LLM, TTS) is unhealthy: hand the caller to a person."""
        _LOGGER.warning("call %s: %s unhealthy, escalating", self._call_id, stage)
        return self._escalate("stage_failure", HOLD_TEXT)

    def handoff_context(self, reason: str, handoff_id: str) -> dict[str, Any]:
        """The CTI screen-pop context: intent, stage, collected slots, actions, summary."""
        s = self._s
        slots = {name: ex.display for name, ex in s.slots.items()}
        summary = self._summary(reason)
        return {
            "handoff_id": handoff_id,
            "call_id": self._call_id,
            "reason": reason,
            "intent": self.main_intent,
            "workflow": s.workflow.id if s.workflow else "",
            "stage": s.node,
            "risk_tier": s.workflow.risk_tier if s.workflow else "",
            "identity_verified": s.patient is not None,
            "slots": slots,
            "actions": list(s.actions),
            "summary": summary,
        }

    # ------------------------------------------------------------------ top level

    def _top(self, text: str) -> Reply:
        s = self._s
        if s.fragment:
            # The caller paused mid-sentence ("I need..." | "to reschedule my appointment"):
            # endpointing cut the turn, so read the two parts together.
            text, s.fragment = f"{s.fragment} {text}", ""
        result = self._classifier.classify(text)
        if result.intent is not None:
            return self._start(result.intent, result.confidence, result.method)
        hit = self._kb.answer(text)
        if hit is not None:
            self._intent("clinic_question", hit.score, "kb")
            s.misunderstood = 0
            self._emit(
                ToolCalled(
                    self._call_id,
                    tool="kb.answer",
                    ok=True,
                    idempotency_key="",
                    arguments="",
                    result=json.dumps({"entry": hit.entry_id}),
                )
            )
            self._emit(
                WorkflowOutcome(
                    self._call_id, workflow="faq", outcome="resolved", intent="clinic_question"
                )
            )
            self.outcome = self.outcome or "resolved"
            return self._with_anything_else(Reply([hit.text], source="kb"))
        top = result.candidates[0] if result.candidates else None
        if top is not None and top[1] >= INTENT_UNSURE and self._llm_intents is not None:
            try:
                chosen = self._llm_intents.classify(text, result.candidates)
            except ApplianceError:
                chosen = None
            if chosen is not None:
                return self._start(chosen, top[1], "llm")
        if top is not None and top[1] >= INTENT_UNSURE:
            wf, spec = self._workflows.intents()[top[0]]
            s.unsure_intent = top[0]
            s.wait = _Wait.INTENT_CONFIRM
            what = spec.description or wf.title[0].lower() + wf.title[1:]
            return Reply([NOT_SURE_TEXT.format(what=what)])
        if self._settings.llm_off_script:
            return Reply(use_llm=True, source="llm")
        if len(text.split()) <= FRAGMENT_WORDS:
            s.fragment = text.rstrip(".?! ")
            return Reply([REPROMPT_TEXT])  # not counted: most likely half a sentence
        return self._misunderstood()

    def _misunderstood(self) -> Reply:
        s = self._s
        s.misunderstood += 1
        if s.misunderstood >= 2:
            return self._escalate("misunderstood_twice", HOLD_TEXT)
        return Reply([REPROMPT_TEXT])

    def _start(self, intent: str, confidence: float, method: str) -> Reply:
        s = self._s
        wf, spec = self._workflows.intents()[intent]
        s.workflow, s.intent, s.misunderstood = wf, intent, 0
        s.attempts, s.pending, s.dtmf = {}, None, ""
        self._intent(intent, confidence, method)
        if not self.main_intent or self.main_intent in ("clinic_question", "human", "goodbye"):
            self.main_intent = intent
        if wf.risk_tier not in self._settings.enabled_tiers:
            return self._escalate("tier_disabled", HOLD_TEXT)
        return self._run(spec.start)

    # ------------------------------------------------------------------ node execution

    def _node(self) -> Any:
        s = self._s
        if s.workflow is None or not s.node:
            return None
        return s.workflow.nodes.get(s.node)

    def _render(self, template: str) -> str:
        s = self._s
        values = dict(self._settings.facts)
        values.update({name: ex.display for name, ex in s.slots.items()})
        values.update(s.variables)
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError):
            _LOGGER.error("call %s: template field missing at node %s", self._call_id, s.node)
            return ""

    def _run(self, node_id: str) -> Reply:
        """Execute nodes from ``node_id`` until one waits for the caller (or ends)."""
        s = self._s
        assert s.workflow is not None
        texts: list[str] = []
        for _ in range(50):  # a workflow graph cannot loop without the caller
            s.node = node_id
            node = s.workflow.nodes[node_id]
            if node.text and not isinstance(node, (KbAnswerNode, EndNode)):
                texts.append(self._render(node.text))
            if isinstance(node, SayNode):
                node_id = node.next
            elif isinstance(node, BranchNode):
                node_id = node.on_intent.get(s.intent, node.default)
            elif isinstance(node, ToolNode):
                ok = self._tool(node)
                if ok:
                    node_id = node.on_ok
                else:
                    s.attempts[node_id] = s.attempts.get(node_id, 0) + 1
                    retry = node.retry and s.attempts[node_id] < node.max_attempts
                    node_id = node.retry if retry else node.on_fail
            elif isinstance(node, KbAnswerNode):
                hit = self._kb.answer(s.last_text)
                if hit is not None:
                    s.variables["kb_answer"] = hit.text
                    texts.append(hit.text)
                    node_id = node.on_found
                else:
                    node_id = node.on_missing
            elif isinstance(node, AskNode):
                s.wait = _Wait.SLOT
                s.dtmf_offered = False
                return Reply(texts)
            elif isinstance(node, ConfirmNode):
                s.wait = _Wait.YES_NO
                return Reply(texts)
            elif isinstance(node, MessageNode):
                s.wait = _Wait.MESSAGE
                return Reply(texts)
            elif isinstance(node, PciNode):
                s.wait = _Wait.PCI
                return Reply(
                    texts,
                    Next.PCI,
                    pci=PciRequest(node.digits_min, node.digits_max, node.timeout_s),
                )
            elif isinstance(node, TransferNode):
                reply = self._escalate(node.reason, "", fail_node=node.on_fail)
                reply.texts[:0] = texts
                return reply
            elif isinstance(node, EndNode):
                if node.text:
                    texts.append(self._render(node.text))
                self._finish(node.outcome, hangup=node.hangup)
                if node.hangup:
                    return Reply(texts, Next.HANGUP)
                return self._with_anything_else(Reply(texts))
        raise RuntimeError(f"workflow {s.workflow.id} did not settle from node {node_id}")

    def _with_anything_else(self, reply: Reply) -> Reply:
        reply.texts.append(self._settings.anything_else)
        self._s.wait = _Wait.ANYTHING_ELSE
        return reply

    def _finish(self, outcome: str, *, hangup: bool) -> None:
        s = self._s
        wf = s.workflow
        self._emit(
            WorkflowOutcome(
                self._call_id, workflow=wf.id if wf else "", outcome=outcome, intent=s.intent
            )
        )
        if outcome != "abandoned" or not self.outcome:
            self.outcome = outcome
        s.workflow, s.node, s.wait = None, "", _Wait.NOTHING
        # A verified caller stays verified for the rest of the call; the rest is per workflow.
        s.slots, s.variables, s.attempts = {}, {}, {}
        s.appointment, s.slot = None, None

    # ------------------------------------------------------------------ slots

    def _answer_slot(self, text: str, stt_confidence: float) -> Reply:
        node = self._node()
        assert isinstance(node, AskNode)
        ex = extract_slot(node.slot, text, stt_confidence, self._now())
        if ex is None:
            return self._slot_failed(node, "Sorry, I didn't get that.")
        if ex.confidence < node.slot.confirm_below:
            self._s.pending = ex
            self._s.wait = _Wait.CONFIRM_SLOT
            texts = [f"I heard {ex.display}. Is that right?"]
            return Reply(texts)
        return self._fill(node, ex, "speech")

    def _confirm_slot(self, text: str, stt_confidence: float) -> Reply:
        node = self._node()
        assert isinstance(node, AskNode)
        s = self._s
        answer = yes_no(text)
        if answer is True and s.pending is not None:
            ex, s.pending = s.pending, None
            return self._fill(node, ex, "speech", confirmed=True)
        if answer is False:
            s.pending = None
            s.wait = _Wait.SLOT
            return self._slot_failed(node, "Sorry about that.")
        s.wait = _Wait.SLOT  # a fresh answer instead of yes/no
        return self._answer_slot(text, stt_confidence)

    def _slot_failed(self, node: AskNode, apology: str) -> Reply:
        s = self._s
        s.attempts[s.node] = s.attempts.get(s.node, 0) + 1
        if s.attempts[s.node] > node.max_attempts:
            return self._escalate("low_confidence", HOLD_TEXT)
        s.wait = _Wait.SLOT
        texts = [apology]
        if node.slot.dtmf and node.slot.dtmf_prompt:
            s.dtmf_offered = True
            texts.append(f"You can also key in {node.slot.dtmf_prompt}.")
        texts.append(self._render(node.text))
        return Reply(texts)

    def _fill(
        self, node: AskNode, ex: Extraction, source: str, *, confirmed: bool = False
    ) -> Reply:
        s = self._s
        s.slots[node.slot.name] = ex
        s.pending = None
        s.attempts.pop(s.node, None)
        self._emit(
            SlotFilled(
                self._call_id,
                workflow=s.workflow.id if s.workflow else "",
                slot=node.slot.name,
                value=ex.display,
                confidence=ex.confidence,
                source=source,
                confirmed=confirmed,
            )
        )
        s.wait = _Wait.NOTHING
        return self._run(node.next)

    def _answer_yes_no(self, text: str) -> Reply:
        node = self._node()
        assert isinstance(node, ConfirmNode)
        answer = yes_no(text)
        if answer is None:
            s = self._s
            s.attempts[s.node] = s.attempts.get(s.node, 0) + 1
            if s.attempts[s.node] >= 2:
                return self._escalate("misunderstood_twice", HOLD_TEXT)
            return Reply(["Sorry, was that a yes or a no?"])
        self._s.wait = _Wait.NOTHING
        return self._run(node.on_yes if answer else node.on_no)

    def _take_message(self, text: str) -> Reply:
        s = self._s
        reason = s.workflow.id if s.workflow else (self.escalation_reason or "message")
        self._emit(MessageTaken(self._call_id, reason=reason, text=text))
        s.actions.append({"action": "message_taken", "ok": True})
        node = self._node()
        if isinstance(node, MessageNode):
            s.wait = _Wait.NOTHING
            return self._run(node.next)
        self._finish("message_taken", hangup=True)
        return Reply([MESSAGE_DONE_TEXT], Next.HANGUP)

    # ------------------------------------------------------------------ escalation

    def _escalate(self, reason: str, hold_text: str, *, fail_node: str = "") -> Reply:
        s = self._s
        self.escalation_reason = reason
        self._emit(Escalated(self._call_id, reason=reason, **self._where()))
        handoff_id = uuid.uuid4().hex[:16]
        s.transfer_fail_node = fail_node
        s.wait = _Wait.TRANSFER
        context = self.handoff_context(reason, handoff_id)
        s.actions.append({"action": "transfer", "reason": reason})
        texts = [hold_text] if hold_text else []
        return Reply(texts, Next.TRANSFER, transfer=TransferRequest(handoff_id, reason, context))

    def _where(self) -> dict[str, str]:
        s = self._s
        return {"workflow": s.workflow.id if s.workflow else "", "node": s.node}

    def _intent(self, intent: str, confidence: float, method: str) -> None:
        self._emit(
            IntentRecognized(
                self._call_id,
                intent=intent,
                confidence=round(confidence, 3),
                method=method,
                **self._where(),
            )
        )

    def _summary(self, reason: str) -> str:
        s = self._s
        parts = [f"Caller intent: {self.main_intent or 'unknown'}."]
        if s.workflow is not None:
            parts.append(f"Workflow {s.workflow.id} at step {s.node}.")
        parts.append("Identity verified." if s.patient else "Identity not verified.")
        done = [
            f"{a['tool']} ({'ok' if a.get('ok') else 'failed'})" for a in s.actions if "tool" in a
        ]
        if done:
            parts.append("Actions: " + ", ".join(done) + ".")
        if s.appointment is not None:
            parts.append(f"Appointment on file: {speak_when(s.appointment.start)}.")
        parts.append(f"Escalated: {reason.replace('_', ' ')}.")
        return " ".join(parts)

    # ------------------------------------------------------------------ tools

    def _tool(self, node: ToolNode) -> bool:
        s = self._s
        args = {k: self._render(v) for k, v in node.args.items()}
        key = idempotency_key(
            self._call_id, node.tool, {**args, "node": s.node, "attempt": s.attempts.get(s.node, 0)}
        )
        try:
            ok, result = self._call_tool(node.tool)
        except SchedulingError as exc:
            ok, result = False, {"error": exc.code}
        except Exception as exc:  # noqa: BLE001 - a tool failure must not end the call
            _LOGGER.exception("call %s: tool %s failed", self._call_id, node.tool)
            ok, result = False, {"error": type(exc).__name__}
        s.actions.append({"tool": node.tool, "ok": ok})
        self._emit(
            ToolCalled(
                self._call_id,
                tool=node.tool,
                ok=ok,
                idempotency_key=key,
                arguments=json.dumps(args, sort_keys=True),
                result=json.dumps(result, sort_keys=True, default=str),
            )
        )
        return ok

    def _call_tool(self, tool: str) -> tuple[bool, dict[str, Any]]:
        s = self._s
        cal = self._calendar
        if cal is None:
            return False, {"error": "no_calendar"}
        if tool == "identity.verify":
            return self._verify(cal)
        if s.patient is None:
            # Identity before PHI is enforced here, not by the workflow author.
            return False, {"error": "identity_not_verified"}
        now = self._now()
        if tool == "calendar.upcoming":
            upcoming = cal.upcoming(s.patient.id, now)
            if not upcoming:
                return False, {"appointments": 0}
            s.appointment = upcoming[0]
            self._set_appointment_vars(cal, s.appointment)
            return True, {"appointment_id": s.appointment.id}
        if tool == "calendar.free_slots":
            wanted = s.slots.get("new_time")
            after = wanted.value if wanted and isinstance(wanted.value, datetime) else now
            provider = s.appointment.provider_id if s.appointment else None
            slots = cal.free_slots(max(after, now), provider_id=provider, limit=1)
            if not slots:
                return False, {"slots": 0}
            s.slot = slots[0]
            s.variables["slot_when"] = speak_when(s.slot.start)
            s.variables["slot_provider"] = cal.provider(s.slot.provider_id).name
            return True, {"slot_id": s.slot.id}
        if tool in ("calendar.reschedule", "calendar.book", "calendar.cancel"):
            key = idempotency_key(
                self._call_id,
                tool,
                {
                    "appointment": s.appointment.id if s.appointment else "",
                    "slot": s.slot.id if s.slot else "",
                },
            )
            if tool == "calendar.reschedule":
                if s.appointment is None or s.slot is None:
                    return False, {"error": "nothing_to_reschedule"}
                appt = cal.reschedule(s.appointment.id, s.slot.id, idempotency_key=key)
            elif tool == "calendar.book":
                if s.slot is None:
                    return False, {"error": "no_slot"}
                appt = cal.book(s.patient.id, s.slot.id, idempotency_key=key)
            else:
                if s.appointment is None:
                    return False, {"error": "nothing_to_cancel"}
                appt = cal.cancel(s.appointment.id, idempotency_key=key)
            s.appointment = appt
            self._set_appointment_vars(cal, appt)
            return True, {"appointment_id": appt.id, "status": appt.status}
        return False, {"error": "unknown_tool"}

    def _set_appointment_vars(self, cal: SchedulingAdapter, appt: Appointment) -> None:
        self._s.variables["appointment_when"] = speak_when(appt.start)
        self._s.variables["appointment_provider"] = cal.provider(appt.provider_id).name

    def _verify(self, cal: SchedulingAdapter) -> tuple[bool, dict[str, Any]]:
        s = self._s
        name = s.slots.get("patient_name")
        dob = s.slots.get("birth_date")
        attempts = s.attempts.get(s.node, 0) + 1
        patient = None
        if name is not None and dob is not None and isinstance(dob.value, date):
            words = str(name.value).split()
            patient = cal.find_patient(words[0], words[-1], dob.value)
        self._emit(
            IdentityVerified(
                self._call_id,
                workflow=s.workflow.id if s.workflow else "",
                ok=patient is not None,
                attempts=attempts,
            )
        )
        if patient is None:
            return False, {"verified": False}
        s.patient = patient
        s.variables["patient_given_name"] = patient.given_name
        return True, {"verified": True, "patient_id": patient.id}
