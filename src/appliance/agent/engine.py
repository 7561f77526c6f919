"""The workflow engine: runs the nodes of the workflow in progress and takes the caller's answers.

:class:`~appliance.agent.dialog.DialogManager` decides which workflow runs and what the call
does around it (rules, intents, escalation); this module runs the chosen workflow's graph:
says node texts, asks for slots and reads them back when unsure, takes keyed digits, asks
yes/no questions, takes messages, calls tools through the tool registry
(:class:`~appliance.agent.tools.ToolRegistry`) and records the outcome. Both share one
:class:`DialogState` per call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from appliance.agent.calendar import SchedulingAdapter
from appliance.agent.kb import KnowledgeBase
from appliance.agent.replies import (
    CALLER_SILENT,
    HOLD_TEXT,
    MESSAGE_DONE_TEXT,
    DialogSettings,
    Next,
    PciRequest,
    Reply,
)
from appliance.agent.tools import ToolRegistry, ToolSession
from appliance.agent.understanding import (
    Extraction,
    extract_name,
    extract_slot,
    extract_spelled,
    itn,
    normalise,
    split_correction,
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
    SlotSpec,
    ToolNode,
    TransferNode,
    Workflow,
)
from appliance.events import Event, MessageTaken, SlotFilled, WorkflowOutcome

_LOGGER = logging.getLogger(__name__)

#: Outcomes that do not replace an outcome the call already reached (see ``DialogState``).
WEAK_OUTCOMES = ("abandoned", CALLER_SILENT)

#: Nodes run without the caller before the engine gives up (a graph cannot loop without them).
MAX_STEPS = 50


class Wait(Enum):
    """What the dialogue waits for from the caller."""

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
class DialogState:
    """Everything the dialogue knows about one call.

    ``workflow``/``node``/``wait`` say where the call is; ``slots``, ``variables`` (tool
    outputs, the knowledge-base answer) and ``attempts`` belong to the workflow in progress;
    ``run`` counts workflow starts (part of the tools' idempotency scope); ``volunteered``
    holds values the caller gave before they were asked (taken at their ``ask`` node instead
    of asking); ``filled_at`` names the ``ask`` node each slot was filled at (a later
    correction resumes after it); ``session`` is what the tools share (the verified patient
    stays for the whole call). ``main_intent``, ``outcome`` and ``escalation_reason``
    summarise the call.
    """

    workflow: Workflow | None = None
    node: str = ""
    intent: str = ""
    run: int = 0
    wait: Wait = Wait.NOTHING
    slots: dict[str, Extraction] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    pending: Extraction | None = None
    dtmf: str = ""
    dtmf_offered: bool = False
    misunderstood: int = 0
    unsure_intent: str = ""
    unsure_question: str = ""
    unsure_text: str = ""
    transfer_fail_node: str = ""
    session: ToolSession = field(default_factory=ToolSession)
    actions: list[dict[str, Any]] = field(default_factory=list)
    last_text: str = ""
    fragment: str = ""
    volunteered: dict[str, Extraction] = field(default_factory=dict)
    just_confirmed: bool = False
    filled_at: dict[str, str] = field(default_factory=dict)
    main_intent: str = ""
    outcome: str = ""
    escalation_reason: str = ""

    def where(self) -> tuple[str, str]:
        """``(workflow, node)`` for events (``("", "")`` outside a workflow)."""
        return (self.workflow.id if self.workflow else "", self.node)


Escalate = Callable[..., Reply]
"""``escalate(reason, hold_text, fail_node=...)``: hand the caller to a person (the dialogue's)."""


class WorkflowEngine:
    """Runs the workflow in progress for one call.

    Args:
        call_id: Opaque call id for events.
        state: The call's state, shared with the dialogue manager.
        tools: The tool registry the workflows were checked against.
        calendar: The scheduling adapter (``None``: calendar tools fail).
        kb: The knowledge base (``kb_answer`` nodes).
        emit: Event sink.
        settings: Dialogue policy (facts for templates, the "anything else" question).
        now: Clock, naive local clinic time (slot parsing, tools).
        escalate: Hands the caller to a person; called for ``transfer`` nodes and too many
            failed answers.
    """

    def __init__(
        self,
        call_id: str,
        state: DialogState,
        tools: ToolRegistry,
        calendar: SchedulingAdapter | None,
        kb: KnowledgeBase,
        emit: Callable[[Event], None],
        settings: DialogSettings,
        now: Callable[[], datetime],
        escalate: Escalate,
    ) -> None:
        self._call_id = call_id
        self._s = state
        self._tools = tools
        self._calendar = calendar
        self._kb = kb
        self._emit = emit
        self._settings = settings
        self._now = now
        self._escalate = escalate

    # ------------------------------------------------------------------ nodes

    def node(self) -> Any:
        """The node the workflow is at, or ``None`` outside a workflow."""
        s = self._s
        if s.workflow is None or not s.node:
            return None
        return s.workflow.nodes.get(s.node)

    def render(self, template: str) -> str:
        """Fill a node text with facts, slot values (as read back) and tool outputs.

        A missing field is logged (node ID only) and gives ``""``; the loader makes it rare.
        """
        s = self._s
        values = dict(self._settings.facts)
        values.update({name: ex.display for name, ex in s.slots.items()})
        values.update(s.variables)
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError):
            _LOGGER.error("call %s: template field missing at node %s", self._call_id, s.node)
            return ""

    def run(self, node_id: str) -> Reply:
        """Execute nodes from ``node_id`` until one waits for the caller (or the workflow ends).

        Raises:
            RuntimeError: More than :data:`MAX_STEPS` nodes ran without the caller.
        """
        s = self._s
        assert s.workflow is not None
        texts: list[str] = []
        for _ in range(MAX_STEPS):
            s.node = node_id
            node = s.workflow.nodes[node_id]
            if isinstance(node, AskNode) and node.slot.name in s.volunteered:
                # Said before it was asked: take it here instead of asking (read back if unsure).
                ex = s.volunteered.pop(node.slot.name)
                if ex.confidence < node.slot.confirm_below:
                    s.pending, s.wait, s.dtmf_offered = ex, Wait.CONFIRM_SLOT, False
                    texts.append(readback_text(ex))
                    return Reply(texts)
                self._store(node, ex, "speech")
                node_id = node.next
                continue
            if node.text and not isinstance(node, (KbAnswerNode, EndNode)):
                texts.append(self.render(node.text))
            if isinstance(node, SayNode):
                node_id = node.next
            elif isinstance(node, BranchNode):
                node_id = node.on_intent.get(s.intent, node.default)
            elif isinstance(node, ToolNode):
                if self._tool(node):
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
                s.wait = Wait.SLOT
                s.dtmf_offered = False
                return Reply(texts)
            elif isinstance(node, ConfirmNode):
                s.wait = Wait.YES_NO
                return Reply(texts)
            elif isinstance(node, MessageNode):
                s.wait = Wait.MESSAGE
                return Reply(texts)
            elif isinstance(node, PciNode):
                s.wait = Wait.PCI
                pci = PciRequest(node.digits_min, node.digits_max, node.timeout_s)
                return Reply(texts, Next.PCI, pci=pci)
            elif isinstance(node, TransferNode):
                reply = self._escalate(node.reason, "", fail_node=node.on_fail)
                reply.texts[:0] = texts
                return reply
            elif isinstance(node, EndNode):
                if node.text:
                    texts.append(self.render(node.text))
                self.finish(node.outcome)
                if node.hangup:
                    return Reply(texts, Next.HANGUP)
                return self.with_anything_else(Reply(texts))
        raise RuntimeError(f"workflow {s.workflow.id} did not settle from node {node_id}")

    def with_anything_else(self, reply: Reply) -> Reply:
        """Append "anything else?" to ``reply`` and wait for the answer."""
        reply.texts.append(self._settings.anything_else)
        self._s.wait = Wait.ANYTHING_ELSE
        return reply

    def finish(self, outcome: str) -> None:
        """Record the workflow's outcome (``WorkflowOutcome``) and leave the workflow.

        Outside a workflow the event has an empty ``workflow``. An outcome in
        :data:`WEAK_OUTCOMES` does not replace one the call already reached.
        """
        s = self._s
        wf = s.workflow
        self._emit(
            WorkflowOutcome(
                self._call_id, workflow=wf.id if wf else "", outcome=outcome, intent=s.intent
            )
        )
        if outcome not in WEAK_OUTCOMES or not s.outcome:
            s.outcome = outcome
        s.workflow, s.node, s.wait = None, "", Wait.NOTHING
        # A verified caller stays verified for the rest of the call; the rest is per workflow.
        s.slots, s.variables, s.attempts = {}, {}, {}
        s.volunteered, s.filled_at, s.pending = {}, {}, None
        s.session.end_workflow()

    # ------------------------------------------------------------------ answers

    def answer_slot(self, text: str, stt_confidence: float) -> Reply:
        """Fill the asked slot from a spoken answer (read back when unsure).

        Values for the workflow's other slots said in the same turn are kept for their ``ask``
        nodes (:meth:`volunteer`). A turn that holds no value of the asked slot's type but one
        of another slot is not taken for the asked slot (a date is never a name): the asked
        question is repeated, not counted as a failure. "Actually, make it Thursday" replaces
        a value given earlier in the workflow (:meth:`_revise`).
        """
        node = self.node()
        assert isinstance(node, AskNode)
        s = self._s
        confirmed_just_now, s.just_confirmed = s.just_confirmed, False
        if (
            confirmed_just_now
            and node.slot.type != "yes_no"
            and yes_no(text) is True
            and len(text.split()) <= 3
        ):
            # "Yeah. | That's right.": the second half of the confirmation the caller just gave,
            # cut off by a pause, is not an answer to the next question.
            return Reply()
        ex = self.extract(node.slot, text, stt_confidence)
        others = self._others(text, stt_confidence, exclude=node.slot.name)
        if ex is None:
            revised = self._revise(text, stt_confidence, need_cue=True)
            if revised is not None:
                return revised
            if others:
                s.volunteered.update(others)
                s.wait = Wait.SLOT
                return Reply(["Thank you.", self.render(node.text)])
            return self._slot_failed(node, "Sorry, I didn't get that.")
        s.volunteered.update(others)
        return self._accept(node, ex)

    def confirm_slot(self, text: str, stt_confidence: float) -> Reply:
        """The answer to a read-back.

        Yes fills the slot; no asks again; a correction ("no wait, Tuesday", "no, it's Lopez")
        replaces the value. A turn that is neither but holds the next slot's value ("March 4th
        1982" after "I heard Maria Lopez. Is that right?") confirms by moving on when the
        value read back was not a poor guess; otherwise the read-back is asked again and the
        other value kept. Anything else is taken as a fresh answer.
        """
        node = self.node()
        assert isinstance(node, AskNode)
        s = self._s
        answer, rest = split_correction(text)
        changed = _CHANGE.search(normalise(text)) is not None
        if answer is True and s.pending is not None and not changed:
            ex, s.pending = s.pending, None
            reply = self._fill(node, ex, "speech", confirmed=True)
            s.just_confirmed = s.wait is Wait.SLOT
            return reply
        if answer is False or changed:
            fresh = self._correction(node, rest, stt_confidence, s.pending)
            if fresh is not None:
                s.pending, s.wait = None, Wait.SLOT
                return self._accept(node, fresh)
            if answer is False:
                s.pending, s.wait = None, Wait.SLOT
                return self._slot_failed(node, "Sorry about that.")
        fresh_ex = self.extract(node.slot, text, stt_confidence)
        others = self._others(text, stt_confidence, exclude=node.slot.name)
        if fresh_ex is None and others and s.pending is not None:
            s.volunteered.update(others)
            after = self._next_ask(node)
            sensible = s.pending.confidence >= node.slot.confirm_below / 2
            if after is not None and after.slot.name in others and sensible:
                ex, s.pending = s.pending, None
                return self._fill(node, ex, "speech")
            return Reply([f"Sorry, first, {readback_text(s.pending)}"])
        s.wait = Wait.SLOT  # a fresh answer instead of yes/no
        return self.answer_slot(text, stt_confidence)

    def answer_yes_no(self, text: str, stt_confidence: float = 1.0) -> Reply:
        """The answer to a ``confirm`` node (the second unclear answer escalates).

        A new value for a slot of the workflow ("actually, make it Thursday") replaces it and
        the workflow resumes after that slot's question.
        """
        node = self.node()
        assert isinstance(node, ConfirmNode)
        answer = yes_no(text)
        if answer is None or _CHANGE.search(normalise(text)):
            revised = self._revise(text, stt_confidence, need_cue=answer is not None)
            if revised is not None:
                return revised
        if answer is None:
            s = self._s
            s.attempts[s.node] = s.attempts.get(s.node, 0) + 1
            if s.attempts[s.node] >= 2:
                return self._escalate("misunderstood_twice", HOLD_TEXT)
            return Reply(["Sorry, was that a yes or a no?"])
        self._s.wait = Wait.NOTHING
        return self.run(node.on_yes if answer else node.on_no)

    # ------------------------------------------------------------------ slot values

    def extract(
        self, spec: SlotSpec, text: str, stt_confidence: float, *, keyed: bool = False
    ) -> Extraction | None:
        """A value of ``spec``'s type from one turn, or ``None``.

        A name is read from the words before any date ("Maria Lopez, March 4th 1982") and never
        from a turn of numbers or request words; a ``spelled_name`` is letters spelled out.
        """
        if spec.type == "spelled_name":
            return _spelled(text, 1.0 if keyed else stt_confidence)
        if spec.type == "person_name" and not keyed:
            said = _before_dates(text)
            if not said.strip() or re.search(r"\d", said):
                return None
            ex = extract_name(said, stt_confidence)
            if ex is None or any(w.lower() in _NOT_NAMES for w in str(ex.value).split()):
                return None
            return ex
        return extract_slot(spec, text, stt_confidence, self._now(), keyed=keyed)

    def volunteer(self, text: str, stt_confidence: float) -> None:
        """Keep the values of the workflow's slots said in ``text`` (a workflow just started).

        Each is taken at its ``ask`` node instead of asking (read back when unsure).
        """
        self._s.volunteered.update(self._others(text, stt_confidence, exclude=""))

    def _others(self, text: str, stt_confidence: float, exclude: str) -> dict[str, Extraction]:
        """Values in ``text`` for the workflow's unfilled slots other than ``exclude``.

        Only values that stand on their own: a date of birth (with its year), an appointment
        day that is not a date of birth nor negated ("I can't make it on Friday"), a name
        introduced as one ("this is Maria Lopez"), digits. Yes/no and free text are never
        taken unasked.
        """
        s = self._s
        found: dict[str, Extraction] = {}
        if s.workflow is None:
            return found
        specs: dict[str, SlotSpec] = {}
        for n in s.workflow.nodes.values():
            if isinstance(n, AskNode):
                specs.setdefault(n.slot.name, n.slot)
        said = itn(text)
        has_year = _YEAR.search(said) is not None
        dated = False
        for name, spec in specs.items():
            if name == exclude or name in s.slots:
                continue
            ex: Extraction | None = None
            if spec.type == "date_of_birth" and has_year:
                ex = extract_slot(spec, _birth_clause(said), stt_confidence, self._now())
            elif spec.type == "date_time" and _WHEN_CUE.search(said) and not has_year:
                if _NEGATED.search(said):
                    continue
                ex = extract_slot(spec, text, stt_confidence, self._now())
            elif spec.type == "person_name":
                ex = _introduced_name(text, stt_confidence)
            elif spec.type == "digits" and not has_year and not dated:
                ex = extract_slot(spec, text, stt_confidence, self._now())
            if ex is not None:
                found[name] = ex
                dated = dated or spec.type in ("date_of_birth", "date_time")
        return found

    def _next_ask(self, node: AskNode) -> AskNode | None:
        """The ``ask`` node reached from ``node`` through ``say`` nodes, if any."""
        s = self._s
        assert s.workflow is not None
        target = s.workflow.nodes.get(node.next)
        for _ in range(MAX_STEPS):
            if isinstance(target, SayNode):
                target = s.workflow.nodes.get(target.next)
            else:
                break
        return target if isinstance(target, AskNode) else None

    def _correction(
        self, node: AskNode, rest: str, stt_confidence: float, base: Extraction | None
    ) -> Extraction | None:
        """The corrected value in what follows "no"/"wait".

        A whole value, or for a name a family name alone ("no, it's Lopez") that replaces the
        last word of ``base``.
        """
        rest = _LEAD_CUES.sub("", rest).strip()
        if not rest:
            return None
        ex = self.extract(node.slot, rest, stt_confidence)
        if ex is None and node.slot.type == "person_name" and base is not None:
            words = re.findall(r"[A-Za-z][A-Za-z'\-]*", _FAMILY_LEAD.sub("", rest))
            given = str(base.value).split()[:-1]
            if len(words) == 1 and given and words[0].lower() not in _NOT_NAMES:
                name = " ".join([*given, words[0][0].upper() + words[0][1:]])
                ex = Extraction(name, name, round(stt_confidence * 0.9, 3))
        return ex

    def _revise(self, text: str, stt_confidence: float, *, need_cue: bool) -> Reply | None:
        """Replace an earlier answer of this workflow ("actually, make it Thursday").

        With ``need_cue`` the turn must say so: a change cue ("actually", "make it") or a
        leading "no" ("no, it's Lopez" asked for the date of birth).

        The latest filled slot whose type the turn holds is replaced (read back when unsure)
        and the workflow resumes after its question. Identity slots are not revised once the
        caller is verified.
        """
        s = self._s
        if s.workflow is None or not s.filled_at:
            return None
        answer, rest = split_correction(text)
        if need_cue and answer is not False and not _CHANGE.search(normalise(text)):
            return None
        for name in reversed(list(s.filled_at)):
            ask = s.workflow.nodes.get(s.filled_at[name])
            if not isinstance(ask, AskNode) or ask.slot.type in ("yes_no", "free_text"):
                continue
            if ask.slot.type in _IDENTITY_TYPES and s.session.patient is not None:
                continue
            ex = self._correction(ask, rest, stt_confidence, s.slots.get(name))
            if ex is None:
                continue
            s.node, s.pending = s.filled_at[name], None
            return self._accept(ask, ex)
        return None

    def _accept(self, node: AskNode, ex: Extraction) -> Reply:
        """Fill ``node``'s slot with ``ex``, or read it back first when unsure."""
        if ex.confidence < node.slot.confirm_below:
            self._s.pending = ex
            self._s.wait = Wait.CONFIRM_SLOT
            return Reply([readback_text(ex)])
        return self._fill(node, ex, "speech")

    def take_message(self, text: str) -> Reply:
        """Take the caller's turn as the message (``MessageTaken``), then go on or hang up."""
        s = self._s
        reason = s.workflow.id if s.workflow else (s.escalation_reason or "message")
        self._emit(MessageTaken(self._call_id, reason=reason, text=text))
        s.actions.append({"action": "message_taken", "ok": True})
        node = self.node()
        if isinstance(node, MessageNode):
            s.wait = Wait.NOTHING
            return self.run(node.next)
        self.finish("message_taken")
        return Reply([MESSAGE_DONE_TEXT], Next.HANGUP)

    @property
    def expects_dtmf(self) -> bool:
        """Whether keypad digits would fill the slot being asked for."""
        node = self.node()
        return (
            self._s.wait in (Wait.SLOT, Wait.CONFIRM_SLOT)
            and isinstance(node, AskNode)
            and (node.slot.dtmf or node.slot.type == "digits")
        )

    def handle_dtmf(self, digit: str) -> Reply | None:
        """Collect a keyed digit for the asked slot (``#`` ends, ``*`` clears).

        Returns ``None`` while digits are still being collected or when none are expected.
        """
        if not self.expects_dtmf:
            return None
        node = self.node()
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
        ex = self.extract(node.slot, keyed, 1.0, keyed=True)
        if ex is None:
            return self._slot_failed(node, "I didn't get that number.")
        return self._fill(node, ex, "dtmf")

    def _slot_failed(self, node: AskNode, apology: str) -> Reply:
        s = self._s
        s.attempts[s.node] = s.attempts.get(s.node, 0) + 1
        if s.attempts[s.node] > node.max_attempts:
            return self._escalate("low_confidence", HOLD_TEXT)
        s.wait = Wait.SLOT
        texts = [apology]
        if node.slot.dtmf and node.slot.dtmf_prompt:
            s.dtmf_offered = True
            texts.append(f"You can also key in {node.slot.dtmf_prompt}.")
        texts.append(self.render(node.text))
        return Reply(texts)

    def _fill(
        self, node: AskNode, ex: Extraction, source: str, *, confirmed: bool = False
    ) -> Reply:
        self._store(node, ex, source, confirmed=confirmed)
        return self.run(node.next)

    def _store(
        self, node: AskNode, ex: Extraction, source: str, *, confirmed: bool = False
    ) -> None:
        s = self._s
        s.slots[node.slot.name] = ex
        s.filled_at.pop(node.slot.name, None)
        s.filled_at[node.slot.name] = s.node
        s.volunteered.pop(node.slot.name, None)
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
        s.wait = Wait.NOTHING

    # ------------------------------------------------------------------ tools

    def _tool(self, node: ToolNode) -> bool:
        s = self._s
        assert s.workflow is not None
        result = self._tools.call(
            node.tool,
            node.args,
            {name: ex.value for name, ex in s.slots.items()},
            call_id=self._call_id,
            workflow=s.workflow.id,
            run=s.run,
            node=s.node,
            attempt=s.attempts.get(s.node, 0) + 1,
            now=self._now(),
            calendar=self._calendar,
            session=s.session,
            emit=self._emit,
        )
        s.actions.append({"tool": node.tool, "ok": result.ok})
        if result.ok:
            s.variables.update(result.outputs)
        return result.ok


def readback_text(ex: Extraction) -> str:
    """The question that reads an unsure slot value back to the caller."""
    return f"I heard {ex.display}. Is that right?"


# ------------------------------------------------------------------ reading caller turns

#: Slots that identify the caller: never revised once the caller is verified.
_IDENTITY_TYPES = ("person_name", "date_of_birth", "spelled_name")

_YEAR = re.compile(r"\b(18|19|20)\d{2}\b")
_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
#: Where a date begins in a turn: a birth cue, a month followed by a number, any digit.
_DATE_START = re.compile(
    r"[,;]?\s*(?:\b(?:born|birthday|birth date|date of birth|dob|d o b)\b|\b"
    + _MONTHS
    + r"\s+\d|\d)",
    re.IGNORECASE,
)
_BIRTH_CUE = re.compile(
    r"\b(?:born(?: on)?|birthday(?: is)?|birth date(?: is)?|date of birth(?: is)?|dob(?: is)?)\s+",
    re.IGNORECASE,
)
#: Words that make a turn name a day or time ("May Johnson" names neither).
_WHEN_CUE = re.compile(
    r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday|today|tomorrow|tonight|"
    r"next week|this week|morning|afternoon|evening|noon|o'?clock|[ap]\.? ?m\b|\d)",
    re.IGNORECASE,
)
#: Negated days are the days a caller cannot come, not the ones they want.
_NEGATED = re.compile(r"\b(can'?t|cannot|won'?t|couldn'?t|not|unable)\b", re.IGNORECASE)
#: A caller changing an answer ("actually, make it Thursday", "no wait, Tuesday").
_CHANGE = re.compile(
    r"\b(actually|instead|i meant|i mean|make (it|that)|change (it|that) to|switch (it|that) to|"
    r"wait|scratch that|rather)\b"
)
#: Words that lead a correction and are not part of the value.
_LEAD_CUES = re.compile(
    r"^\W*(?:(?:no|nope|nah|yes|yeah|wait|sorry|actually|i mean|i meant|make (?:it|that)|"
    r"change (?:it|that) to|switch (?:it|that) to|scratch that|rather|instead|how about|"
    r"let'?s say|um+|uh+|oh)\b[\s,.!-]*)+",
    re.IGNORECASE,
)
_FAMILY_LEAD = re.compile(
    r"^\W*(?:(?:it'?s|it is|that'?s|that is|my|the|last|family|sur|name|is|was)\b[\s,.!-]*)+",
    re.IGNORECASE,
)
#: Introductions that put a name in a turn that was not asked for one.
_INTRO = re.compile(
    r"\b(?:my name is|my name's|name is|the name is|this is|i am|i'm|it's|it is|speaking is)\s+"
    r"([A-Za-z][A-Za-z'\-]*(?:\s+[A-Za-z][A-Za-z'\-]*){0,3})",
    re.IGNORECASE,
)
#: Words that are not names (a request taken for a name asks for the wrong thing).
_NOT_NAMES = frozenset(
    """
    i me my mine we our you your he she it its they them this that these those the a an and or
    but so to too for of on in at by with about from into is am are was were be been being do
    does did have has had can could would should will shall may might must need needs want
    wants wanted like calling call called just also here there what when where why how who
    yes no not please thanks thank hi hello hey okay ok well um uh sorry appointment
    appointments reschedule cancel book booking schedule change move visit checkup check
    doctor doctors dr nurse prescription refill bill billing payment pay born birthday birth
    date day days time today tomorrow week month year morning afternoon evening wait actually
    make sure right wrong again name last first family calling trying see kid son daughter
    """.split()
)


def _before_dates(text: str) -> str:
    """The words of ``text`` before a date or birth cue (a name comes first)."""
    said = itn(text)
    return _DATE_START.split(said, maxsplit=1)[0]


def request_part(text: str) -> str:
    """The words of an opening turn before the caller introduces themselves or a date.

    "I need to reschedule, this is Maria Lopez, born March 4th 1982" -> "I need to
    reschedule": what the intent matcher should read (names and dates only dilute it).
    """
    cut = _INTRO.search(text)
    head = text[: cut.start()] if cut else text
    return _DATE_START.split(head, maxsplit=1)[0].strip(" ,;.")


def _birth_clause(said: str) -> str:
    """From a birth cue on ("born March 4th 1982"), else all of ``said``."""
    match = _BIRTH_CUE.search(said)
    return said[match.end() :] if match else said


def _introduced_name(text: str, stt_confidence: float) -> Extraction | None:
    """A name the caller introduced ("this is Maria Lopez, born ..."), or ``None``."""
    for match in _INTRO.finditer(text):
        words: list[str] = []
        for word in match.group(1).split():
            if word.lower() in _NOT_NAMES:
                break
            words.append(word)
        if 2 <= len(words) <= 3:
            return extract_name("my name is " + " ".join(words), stt_confidence)
    return None


def _spelled(text: str, stt_confidence: float) -> Extraction | None:
    """A family name spelled letter by letter ("L O P E Z"), as ``"Lopez"``."""
    name = extract_spelled(text)
    if not name or len(name) < 2:
        return None
    return Extraction(name, name, round(stt_confidence * 0.9, 3))
