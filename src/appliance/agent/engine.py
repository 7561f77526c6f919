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
from appliance.agent.understanding import Extraction, extract_slot, yes_no
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
    ``run`` counts workflow starts (part of the tools' idempotency scope); ``session`` is what
    the tools share (the verified patient stays for the whole call). ``main_intent``,
    ``outcome`` and ``escalation_reason`` summarise the call.
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
    transfer_fail_node: str = ""
    session: ToolSession = field(default_factory=ToolSession)
    actions: list[dict[str, Any]] = field(default_factory=list)
    last_text: str = ""
    fragment: str = ""
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
        s.session.end_workflow()

    # ------------------------------------------------------------------ answers

    def answer_slot(self, text: str, stt_confidence: float) -> Reply:
        """Fill the asked slot from a spoken answer (read back when unsure)."""
        node = self.node()
        assert isinstance(node, AskNode)
        ex = extract_slot(node.slot, text, stt_confidence, self._now())
        if ex is None:
            return self._slot_failed(node, "Sorry, I didn't get that.")
        if ex.confidence < node.slot.confirm_below:
            self._s.pending = ex
            self._s.wait = Wait.CONFIRM_SLOT
            return Reply([readback_text(ex)])
        return self._fill(node, ex, "speech")

    def confirm_slot(self, text: str, stt_confidence: float) -> Reply:
        """The answer to a read-back: yes fills the slot, no asks again, else a fresh answer."""
        node = self.node()
        assert isinstance(node, AskNode)
        s = self._s
        answer = yes_no(text)
        if answer is True and s.pending is not None:
            ex, s.pending = s.pending, None
            return self._fill(node, ex, "speech", confirmed=True)
        if answer is False:
            s.pending = None
            s.wait = Wait.SLOT
            return self._slot_failed(node, "Sorry about that.")
        s.wait = Wait.SLOT  # a fresh answer instead of yes/no
        return self.answer_slot(text, stt_confidence)

    def answer_yes_no(self, text: str) -> Reply:
        """The answer to a ``confirm`` node (the second unclear answer escalates)."""
        node = self.node()
        assert isinstance(node, ConfirmNode)
        answer = yes_no(text)
        if answer is None:
            s = self._s
            s.attempts[s.node] = s.attempts.get(s.node, 0) + 1
            if s.attempts[s.node] >= 2:
                return self._escalate("misunderstood_twice", HOLD_TEXT)
            return Reply(["Sorry, was that a yes or a no?"])
        self._s.wait = Wait.NOTHING
        return self.run(node.on_yes if answer else node.on_no)

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
        ex = extract_slot(node.slot, keyed, 1.0, self._now(), keyed=True)
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
        s.wait = Wait.NOTHING
        return self.run(node.next)

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
