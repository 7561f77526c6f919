"""The dialogue manager: runs the workflows for one call, turn by turn.

Pure of audio and SIP: it takes caller turns (text plus STT confidence), keypad digits and the
results of transfers and PCI pauses, and returns :class:`Reply` objects (what to say, then what
to do). The pipeline's receptionist speaks them; the server carries out transfers and hang-ups.

Order of precedence for a caller turn (rules before models, safety before convenience):

0. a free-speech turn that an earlier, obviously cut one ("I wanted to ask", "Do you
   have...") was held for is read together with it;
1. a medical-emergency cue (always answered with the 911 notice);
2. a caller the STT hears speak another language (probability >= 0.8) -> a hold prompt in
   that language where we have one, escalate ``language``;
3. an explicit request for a person -> escalate ``explicit_request`` (in every wait but a
   message, a PCI pause or a transfer);
4. an obvious fragment of free speech -> held, nothing said (``Reply()``);
5. goodbye -> hang up politely;
6. detected frustration -> escalate ``frustration``;
7. the workflow step waiting for an answer (slot, read-back, confirmation, message): values
   are checked against the slot asked, corrections replace values, and values of other slots
   said on the way are kept for their questions;
8. at the top: an intent by embeddings (of the whole turn, else of the request before a name
   or date) -> its workflow, taking every slot value the opening already holds (refused with
   a transfer, ``tier_disabled``, when its risk tier is not enabled); else the knowledge
   base; else a misunderstanding, and the second in a row escalates
   ``misunderstood_twice``.

Escalation always ends in a person or a message: if a transfer fails the caller is asked for a
message (or the workflow's ``on_fail`` node runs). The caller is never hung up on silently: a
caller who stays silent is asked once whether they are still there
(:meth:`DialogManager.caller_silent`, driven by the receptionist's idle timer), and only then
told goodbye.

The workflow in progress is run by :class:`~appliance.agent.engine.WorkflowEngine`; the reply
types and fixed phrases are in :mod:`appliance.agent.replies` (re-exported here), the tools in
:mod:`appliance.agent.tools`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from appliance.agent.calendar import SchedulingAdapter
from appliance.agent.engine import (
    DialogState,
    Wait,
    WorkflowEngine,
    readback_text,
    request_part,
)
from appliance.agent.kb import KnowledgeBase
from appliance.agent.opt_out import is_opt_out
from appliance.agent.replies import (
    CALLER_SILENT,
    EMERGENCY_TEXT,
    FOLLOW_UP_TEXT,
    FRAGMENT_WORDS,
    HOLD_TEXT,
    LANGUAGE_HOLD_TEXTS,
    LANGUAGE_SURE,
    MESSAGE_PROMPT_TEXT,
    NOT_SURE_TEXT,
    REPROMPT_TEXT,
    SILENT_GOODBYE_TEXT,
    STILL_THERE_TEXT,
    TRANSFER_FAILED_TEXT,
    DialogSettings,
    Next,
    PciRequest,
    Reply,
    TransferRequest,
    fixed_texts,
    goodbye_text,
    is_fragment,
)
from appliance.agent.scheduling_tools import default_tools
from appliance.agent.tools import ToolRegistry
from appliance.agent.understanding import (
    INTENT_UNSURE,
    IntentClassifier,
    LlmIntentClassifier,
    global_intent,
    speak_when,
    yes_no,
)
from appliance.agent.workflow import (
    AskNode,
    ConfirmNode,
    MessageNode,
    PciNode,
    Workflow,
    WorkflowSet,
)
from appliance.errors import ApplianceError
from appliance.events import (
    Escalated,
    Event,
    IntentRecognized,
    ToolCalled,
    WorkflowOutcome,
)
from appliance.text.listening import FREE, Listening
from appliance.text.sentiment import is_frustrated

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "DialogManager",
    "DialogSettings",
    "Next",
    "PciRequest",
    "Reply",
    "TransferRequest",
    "fixed_texts",
    "goodbye_text",
]


#: Waits in which the caller speaks freely (a request, a question): a fragment there is held.
_FREE_WAITS = (Wait.NOTHING, Wait.ANYTHING_ELSE)


def _language_code(language: str | None) -> str:
    """``"es"`` for ``"es"``, ``"es-MX"``, ``"ES"``; ``""`` for none."""
    if not language:
        return ""
    return language.strip().lower().replace("_", "-").split("-")[0]


_SLOT_LISTENING: dict[str, Callable[[AskNode], Listening]] = {
    "person_name": lambda n: Listening("name", slot=n.slot.name),
    "date_of_birth": lambda n: Listening("date", 8, 8, slot=n.slot.name),
    "date_time": lambda n: Listening("time", slot=n.slot.name),
    "digits": lambda n: Listening("digits", n.slot.digits_min, n.slot.digits_max, slot=n.slot.name),
    "yes_no": lambda n: Listening("yes_no", slot=n.slot.name),
    "free_text": lambda n: Listening("free", slot=n.slot.name),
    "spelled_name": lambda n: Listening("spelling", slot=n.slot.name),
}


class DialogManager:
    """Runs the workflows for one call.

    Args:
        call_id: Opaque call id for events.
        workflows: The loaded workflows (checked against ``tools``).
        classifier: Intent matching over the workflows' examples.
        kb: The clinic's knowledge base.
        calendar: The scheduling adapter.
        emit: Event sink (typed events; content fields are sealed by the audit log).
        settings: Dialogue policy.
        now: Clock for slot parsing and tools (clinic local time).
        llm_intents: Constrained LLM second opinion for unsure intents (capable models only).
        tools: The tool registry the workflows were loaded with; ``None``: the built-in tools
            (:func:`~appliance.agent.scheduling_tools.default_tools`).
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
        tools: ToolRegistry | None = None,
    ) -> None:
        self._call_id = call_id
        self._llm_intents = llm_intents
        self._workflows = workflows
        self._classifier = classifier
        self._kb = kb
        self._emit = emit
        self._settings = settings
        self._now = now
        self._s = DialogState()
        self._turn_confidence = 1.0
        #: The outbound workflow of a call the box placed (:meth:`start_outbound`), or ``None``.
        self._outbound: Workflow | None = None
        self._on_opt_out: Callable[[str], None] | None = None
        #: Whether the callee opted out on this call (and it was recorded).
        self.opted_out = False
        self._engine = WorkflowEngine(
            call_id,
            self._s,
            tools if tools is not None else default_tools(),
            calendar,
            kb,
            emit,
            settings,
            lambda: self._now(),  # late-bound: tests pin the clock after construction
            self._escalate,
        )

    # ------------------------------------------------------------------ call summary

    @property
    def main_intent(self) -> str:
        """The call's main intent (the first workflow intent; ``""`` before any)."""
        return self._s.main_intent

    @property
    def outcome(self) -> str:
        """The call's outcome so far (``""``, ``resolved``, ``message_taken``, ...)."""
        return self._s.outcome

    @property
    def escalation_reason(self) -> str:
        """The last escalation trigger (``""`` if none)."""
        return self._s.escalation_reason

    @property
    def actions(self) -> list[dict[str, Any]]:
        """What the workflows did on this call: ``{"tool", "ok"}`` and ``{"action", ...}``."""
        return list(self._s.actions)

    # ------------------------------------------------------------------ public entry points

    @property
    def expects_dtmf(self) -> bool:
        """Whether keypad digits would fill the slot being asked for."""
        return self._engine.expects_dtmf

    @property
    def waits_for_caller(self) -> bool:
        """Whether caller silence is silence: not while a transfer or a PCI pause is running."""
        return self._s.wait not in (Wait.TRANSFER, Wait.PCI)

    @property
    def listening(self) -> Listening:
        """What the caller is expected to say next (read by the STT and the endpointing).

        A slot question gives the slot's kind (``digits`` with its length, ``date`` for a date
        of birth, with the keypad's 8 digits, ``time``, ``name``); a read-back, a yes/no node,
        an unsure intent and "anything else?" give ``yes_no``; a message gives ``message``;
        everything else ``free``.

        On a call the box placed (:meth:`start_outbound`) a digit or date question is published
        as ``free``: the STT's slot vocabulary for them (numbers and month names,
        docs/decisions/0011) cannot spell "stop calling me", and an opt-out must be heard in
        every wait (47 CFR 64.1200(a)(10)). The keypad stays the opt-out's other way.
        """
        listening = self._listening()
        if self._outbound is not None and listening.numeric:
            return Listening("free", slot=listening.slot)
        return listening

    def _listening(self) -> Listening:
        s = self._s
        if s.wait is Wait.SLOT:
            node = self._engine.node()
            if isinstance(node, AskNode):
                return _SLOT_LISTENING[node.slot.type](node)
        if s.wait in (Wait.CONFIRM_SLOT, Wait.YES_NO, Wait.INTENT_CONFIRM, Wait.ANYTHING_ELSE):
            node = self._engine.node()
            slot = node.slot.name if isinstance(node, AskNode) else ""
            return Listening("yes_no", slot=slot)
        if s.wait is Wait.MESSAGE:
            return Listening("message")
        return FREE

    def start_outbound(
        self, workflow_id: str, appointment_id: str, on_opt_out: Callable[[str], None]
    ) -> Reply:
        """Open a call the box placed with the outbound workflow ``workflow_id``.

        Args:
            workflow_id: An outbound workflow (``reminders``).
            appointment_id: The appointment the call is about; its details stay out of every
                text until the workflow's identity check matched its patient.
            on_opt_out: Records the callee's opt-out, with the method (``"verbal-on-call"`` or
                ``"dtmf"``): the app revokes every consent scope of the number it dialled and
                puts it on the do-not-call list. Called before the opt-out is confirmed to the
                callee; if it raises, the callee is handed to staff instead
                (``stage_failure``), never told an opt-out happened that did not.

        Returns:
            The opening (said after the AI disclosure).

        Raises:
            KeyError: No such outbound workflow.
        """
        wf = self._workflows.outbound(workflow_id)
        s = self._s
        self._outbound, self._on_opt_out = wf, on_opt_out
        s.workflow, s.intent, s.run = wf, wf.id, s.run + 1
        s.main_intent = wf.id
        s.session.reminder_appointment_id = appointment_id
        self._intent(wf.id, 1.0, "outbound")
        if wf.risk_tier not in self._settings.enabled_tiers:
            return self._escalate("tier_disabled", HOLD_TEXT)
        return self._engine.run(wf.start)

    def _opt_out(self, method: str) -> Reply:
        """Record the callee's opt-out, then run the workflow's opt-out node."""
        wf = self._outbound
        assert wf is not None and self._on_opt_out is not None
        self._intent("opt_out", 1.0, "rule" if method != "dtmf" else "dtmf")
        try:
            self._on_opt_out(method)
        except Exception:  # noqa: BLE001 - never confirm an opt-out that was not recorded
            _LOGGER.exception("call %s: the opt-out could not be recorded", self._call_id)
            return self._escalate("stage_failure", HOLD_TEXT)
        self.opted_out = True
        s = self._s
        s.workflow, s.pending, s.dtmf = wf, None, ""
        return self._engine.run(wf.opt_out)

    def handle_turn(
        self,
        text: str,
        stt_confidence: float = 1.0,
        *,
        language: str | None = None,
        language_probability: float = 0.0,
    ) -> Reply:
        """Answer one caller turn.

        Args:
            text: The final transcript.
            stt_confidence: The STT's confidence, 0..1.
            language: The language the STT detected (ISO 639-1 code, e.g. ``"es"``), if any.
            language_probability: The STT's probability for ``language``, 0..1. A language
                other than English at :data:`LANGUAGE_SURE` or more is answered in it where
                we have the words and handed to staff (reason ``language``).
        """
        s = self._s
        e = self._engine
        self._turn_confidence = stt_confidence
        free = s.wait in _FREE_WAITS
        if s.fragment and free:
            # The caller paused mid-sentence ("I wanted to ask" | "about my bill"): endpointing
            # cut the turn, so read the two parts together.
            text, s.fragment = f"{s.fragment} {text}", ""
        s.last_text = text
        rule = global_intent(text)
        if rule == "emergency":
            self._intent("emergency", 1.0, "rule")
            wf, node = s.where()
            self._emit(Escalated(self._call_id, reason="emergency", workflow=wf, node=node))
            return Reply([EMERGENCY_TEXT], source="template")
        if self._outbound is not None and not self.opted_out and is_opt_out(text):
            return self._opt_out("verbal-on-call")
        if self._outbound is not None and s.workflow is None and s.outcome:
            # The reminder has ended (its end nodes hang up): the tail of the callee's last
            # answer, decoded again as a turn of its own, must not start anything new.
            return Reply(["Goodbye."], Next.HANGUP, source="template")
        if s.wait is Wait.MESSAGE:
            return e.take_message(text)
        if s.wait in (Wait.TRANSFER, Wait.PCI):
            return Reply()  # the call is being handed over / the keypad is collecting
        code = _language_code(language)
        if code and code != "en" and language_probability >= LANGUAGE_SURE:
            self._intent("language", language_probability, "rule")
            reply = self._escalate("language", LANGUAGE_HOLD_TEXTS.get(code, HOLD_TEXT))
            reply.source = "template"
            return reply
        if rule == "human":
            self._intent("human", 1.0, "rule")
            return self._escalate("explicit_request", HOLD_TEXT)
        if free and rule is None and is_fragment(text):
            s.fragment = text.strip()
            return Reply()  # wait for the rest of the sentence
        if rule == "goodbye" and s.wait is not Wait.SLOT:
            self._intent("goodbye", 1.0, "rule")
            if s.workflow is not None:
                e.finish("abandoned")
            return Reply([goodbye_text(self._settings)], Next.HANGUP, source="template")
        if is_frustrated(text):
            return self._escalate("frustration", HOLD_TEXT)
        if s.wait is Wait.SLOT:
            return e.answer_slot(text, stt_confidence)
        if s.wait is Wait.CONFIRM_SLOT:
            return e.confirm_slot(text, stt_confidence)
        if s.wait is Wait.YES_NO:
            return e.answer_yes_no(text, stt_confidence)
        if s.wait is Wait.INTENT_CONFIRM:
            answer = yes_no(text)
            if answer is True:
                return self._start(s.unsure_intent, 0.0, "confirmed", s.unsure_text)
            if answer is False:
                s.wait = Wait.NOTHING
                return Reply([FOLLOW_UP_TEXT])
        if s.wait is Wait.ANYTHING_ELSE:
            answer = yes_no(text)
            if answer is False:
                return Reply([goodbye_text(self._settings)], Next.HANGUP, source="template")
            if answer is True and len(text.split()) <= 3:
                s.wait = Wait.NOTHING
                return Reply([FOLLOW_UP_TEXT])
        return self._top(text)

    def handle_dtmf(self, digit: str) -> Reply | None:
        """A keypad digit outside a PCI pause: fills a digit slot (``#`` ends, ``*`` clears).

        On a call the box placed, the workflow's ``opt_out_digit`` opts out (no slot of such a
        workflow takes keypad digits, so it is never part of an answer).

        Returns ``None`` while digits are still being collected or when none are expected.
        """
        wf = self._outbound
        if wf is not None and wf.opt_out_digit == digit and not self.opted_out:
            return self._opt_out("dtmf")
        return self._engine.handle_dtmf(digit)

    @property
    def digits_pending(self) -> bool:
        """Whether keyed digits are collected but not yet taken (no ``#``, count not reached)."""
        return bool(self._s.dtmf) and self.expects_dtmf

    def flush_dtmf(self) -> Reply | None:
        """Take the keyed digits as complete (the inter-digit timeout), like ``#``."""
        if not self.digits_pending:
            return None
        return self.handle_dtmf("#")

    def caller_silent(self, times: int) -> Reply:
        """The caller said nothing (no speech, no key) for the idle timeout after the agent spoke.

        Args:
            times: Consecutive timeouts without the caller: 1 for the first.

        Returns:
            The first time, "Are you still there?" and the question the dialogue waits on
            (``Next.CONTINUE``). After that a goodbye with ``Next.HANGUP``, and the outcome
            ``caller_silent`` is recorded (``WorkflowOutcome``) for a workflow in progress or a
            call that reached no outcome yet. An empty reply while a transfer or PCI pause
            runs (:attr:`waits_for_caller` is false).
        """
        s = self._s
        if not self.waits_for_caller:
            return Reply()
        if times <= 1:
            return Reply([STILL_THERE_TEXT, self._pending_question()], source="template")
        if s.workflow is not None or not s.outcome:
            self._engine.finish(CALLER_SILENT)
        s.wait = Wait.NOTHING
        bye = [SILENT_GOODBYE_TEXT, goodbye_text(self._settings)]
        return Reply(bye, Next.HANGUP, source="template")

    def transfer_succeeded(self) -> None:
        """The REFER was accepted and the target answered: the workflow ends transferred."""
        self._engine.finish("transferred")

    def transfer_failed(self) -> Reply:
        """The transfer failed (REFER rejected, NOTIFY non-2xx, timeout): apologise, fall back."""
        s = self._s
        if s.transfer_fail_node and s.workflow is not None:
            node_id, s.transfer_fail_node = s.transfer_fail_node, ""
            reply = self._engine.run(node_id)
            reply.texts.insert(0, TRANSFER_FAILED_TEXT)
            return reply
        s.wait = Wait.MESSAGE
        s.node = ""
        return Reply([TRANSFER_FAILED_TEXT, MESSAGE_PROMPT_TEXT])

    def pci_done(self, ok: bool) -> Reply:
        """The PCI pause ended (``ok``: the payment handler accepted the card)."""
        node = self._engine.node()
        self._s.wait = Wait.NOTHING
        if not isinstance(node, PciNode):
            return Reply()
        return self._engine.run(node.on_ok if ok else node.on_fail)

    def stage_failed(self, stage: str) -> Reply:
        """A pipeline stage (STT, LLM, TTS) is unhealthy: hand the caller to a person."""
        _LOGGER.warning("call %s: %s unhealthy, escalating", self._call_id, stage)
        return self._escalate("stage_failure", HOLD_TEXT)

    def handoff_context(self, reason: str, handoff_id: str) -> dict[str, Any]:
        """The CTI screen-pop context: intent, stage, collected slots, actions, summary."""
        s = self._s
        return {
            "handoff_id": handoff_id,
            "call_id": self._call_id,
            "reason": reason,
            "intent": s.main_intent,
            "workflow": s.workflow.id if s.workflow else "",
            "stage": s.node,
            "risk_tier": s.workflow.risk_tier if s.workflow else "",
            "identity_verified": s.session.patient is not None,
            "slots": {name: ex.display for name, ex in s.slots.items()},
            "actions": list(s.actions),
            "summary": self._summary(reason),
        }

    # ------------------------------------------------------------------ top level

    def _top(self, text: str) -> Reply:
        s = self._s
        result = self._classifier.classify(text)
        request = request_part(text)
        if result.intent is None and request and request != text.strip(" ,;."):
            # "I need to reschedule, this is Maria Lopez, born ...": the request alone.
            alone = self._classifier.classify(request)
            if alone.intent is not None:
                result = alone
        if result.intent is not None:
            return self._start(result.intent, result.confidence, result.method, text)
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
            s.outcome = s.outcome or "resolved"
            return self._engine.with_anything_else(Reply([hit.text], source="kb"))
        top = result.candidates[0] if result.candidates else None
        if top is not None and top[1] >= INTENT_UNSURE and self._llm_intents is not None:
            try:
                chosen = self._llm_intents.classify(text, result.candidates)
            except ApplianceError:
                chosen = None
            if chosen is not None:
                return self._start(chosen, top[1], "llm", text)
        if top is not None and top[1] >= INTENT_UNSURE:
            wf, spec = self._workflows.intents()[top[0]]
            s.unsure_intent, s.unsure_text = top[0], text
            s.wait = Wait.INTENT_CONFIRM
            what = spec.description or wf.title[0].lower() + wf.title[1:]
            s.unsure_question = NOT_SURE_TEXT.format(what=what)
            return Reply([s.unsure_question])
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

    def _start(self, intent: str, confidence: float, method: str, text: str = "") -> Reply:
        """Start ``intent``'s workflow; slot values said in ``text`` are not asked for again."""
        s = self._s
        wf, spec = self._workflows.intents()[intent]
        s.workflow, s.intent, s.misunderstood = wf, intent, 0
        s.attempts, s.pending, s.dtmf = {}, None, ""
        s.slots, s.variables, s.volunteered, s.filled_at = {}, {}, {}, {}
        s.run += 1
        self._intent(intent, confidence, method)
        if not s.main_intent or s.main_intent in ("clinic_question", "human", "goodbye"):
            s.main_intent = intent
        if wf.risk_tier not in self._settings.enabled_tiers:
            return self._escalate("tier_disabled", HOLD_TEXT)
        if text:
            self._engine.volunteer(text, self._turn_confidence)
        return self._engine.run(spec.start)

    def _pending_question(self) -> str:
        """What the dialogue waits on, asked again after "Are you still there?"."""
        s = self._s
        e = self._engine
        node = e.node()
        if s.wait is Wait.CONFIRM_SLOT and s.pending is not None:
            return readback_text(s.pending)
        if s.wait in (Wait.SLOT, Wait.YES_NO) and isinstance(node, AskNode | ConfirmNode):
            return e.render(node.text)
        if s.wait is Wait.MESSAGE:
            return e.render(node.text) if isinstance(node, MessageNode) else MESSAGE_PROMPT_TEXT
        if s.wait is Wait.INTENT_CONFIRM and s.unsure_question:
            return s.unsure_question
        if s.wait is Wait.ANYTHING_ELSE:
            return self._settings.anything_else
        return FOLLOW_UP_TEXT

    # ------------------------------------------------------------------ escalation

    def _escalate(self, reason: str, hold_text: str, *, fail_node: str = "") -> Reply:
        s = self._s
        s.escalation_reason = reason
        wf, node = s.where()
        self._emit(Escalated(self._call_id, reason=reason, workflow=wf, node=node))
        handoff_id = uuid.uuid4().hex[:16]
        s.transfer_fail_node = fail_node
        s.wait = Wait.TRANSFER
        context = self.handoff_context(reason, handoff_id)
        s.actions.append({"action": "transfer", "reason": reason})
        texts = [hold_text] if hold_text else []
        return Reply(texts, Next.TRANSFER, transfer=TransferRequest(handoff_id, reason, context))

    def _intent(self, intent: str, confidence: float, method: str) -> None:
        wf, node = self._s.where()
        self._emit(
            IntentRecognized(
                self._call_id,
                intent=intent,
                confidence=round(confidence, 3),
                method=method,
                workflow=wf,
                node=node,
            )
        )

    def _summary(self, reason: str) -> str:
        s = self._s
        parts = [f"Caller intent: {s.main_intent or 'unknown'}."]
        if s.workflow is not None:
            parts.append(f"Workflow {s.workflow.id} at step {s.node}.")
        parts.append("Identity verified." if s.session.patient else "Identity not verified.")
        done = [
            f"{a['tool']} ({'ok' if a.get('ok') else 'failed'})" for a in s.actions if "tool" in a
        ]
        if done:
            parts.append("Actions: " + ", ".join(done) + ".")
        if s.session.appointment is not None:
            parts.append(f"Appointment on file: {speak_when(s.session.appointment.start)}.")
        parts.append(f"Escalated: {reason.replace('_', ' ')}.")
        return " ".join(parts)
