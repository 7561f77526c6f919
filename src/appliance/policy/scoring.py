"""Post-call scoring of every call: outcome, containment and compliance flags (pure functions).

:func:`score_call` turns one call's typed events into a :class:`~appliance.events.CallScored`.
Everything is decided by rules over the events, so 100% of calls are scored at no model cost;
an optional LLM judge (:class:`Judge`) may refine only the sentiment and the summary, never a
compliance flag.

Rules (``events`` are one call's events in time order):

======================= ===================================================================
Field                   Rule
======================= ===================================================================
outcome                 The last ``WorkflowOutcome.outcome`` (:data:`OUTCOMES`); with none,
                        ``"transferred"`` if a ``TransferResult`` has ``ok``, else
                        ``"abandoned"`` (the caller hung up before any outcome).
                        ``"caller_silent"``: the agent hung up after the caller stayed silent
                        through the idle re-prompt, during a workflow or before any outcome.
contained               No ``TransferResult`` with ``ok``: the industry's containment, "handled
                        end to end by the AI without a live agent". A failed transfer followed
                        by a message or a resolution is still contained.
transfer_appropriate    ``None`` when no ``TransferAttempted``. Otherwise every attempt is judged
                        on the ``Escalated`` reasons before it in the call, counting only the
                        documented triggers (:data:`TRIGGERS`):

                        * no trigger before it: **False** (a transfer with no reason);
                        * only ``out_of_scope``/``low_confidence``, and an ``IntentRecognized``
                          before it for a low-risk FAQ intent (:data:`FAQ_INTENTS`, or workflow
                          ``faq``) with confidence >= 0.8: **False** (avoidable: the KB could
                          have answered);
                        * otherwise **True**.

                        The call is True only when every attempt is.
disclosure_ok           A ``DisclosurePlayed`` that started within 10 s of ``CallAnswered``
                        (:data:`DISCLOSURE_DEADLINE_S`). shared/SECURITY.md (TCPA, FCC 24-17):
                        "At the start of the call, identify the business and disclose that the
                        caller is speaking with an AI"; the 10 s bound is ours. False without a
                        ``CallAnswered`` or a ``DisclosurePlayed``.
identity_before_phi_ok  Every ``ToolCalled`` whose tool discloses or changes a patient's record
                        (:func:`is_phi_tool`: ``calendar.*`` except ``calendar.free_slots``),
                        successful or not, and every ``AgentSpoke`` after such a tool, comes
                        after an ``IdentityVerified`` with ``ok`` in the call. True with no
                        such tool.
no_card_number_ok       No Luhn-valid 13-19 digit number (spaces or dashes between digits) in
                        any ``TurnEnded.user_text``, ``AgentSpoke.text``, ``SlotFilled.value``
                        or ``MessageTaken.text``: the ``PAN`` detector of
                        :mod:`appliance.policy.redaction`.
sentiment               Mean :func:`~appliance.text.sentiment.sentiment` of the non-blank
                        caller turns (``TurnEnded.user_text``); 0.0 with none.
summary                 One paragraph from fixed identifiers only (intents, workflows, tools,
                        escalation reasons, outcome), never the caller's words. Content all the
                        same (sealed in the audit log).
judge                   ``"rules"``, or ``"llm:<model>"`` when a judge refined sentiment/summary.
======================= ===================================================================
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

from appliance.events import (
    ESCALATION_REASONS,
    AgentSpoke,
    CallAnswered,
    CallEnded,
    CallScored,
    DisclosurePlayed,
    Escalated,
    Event,
    IdentityVerified,
    IntentRecognized,
    MessageTaken,
    PciPause,
    SlotFilled,
    ToolCalled,
    TransferAttempted,
    TransferResult,
    TurnEnded,
    WorkflowOutcome,
)
from appliance.policy.redaction import find_phi, redact
from appliance.text.sentiment import sentiment

_LOGGER = logging.getLogger(__name__)

TRIGGERS = frozenset(ESCALATION_REASONS)
"""Documented escalation triggers: :data:`appliance.events.ESCALATION_REASONS` as a set."""

WEAK_TRIGGERS = frozenset({"out_of_scope", "low_confidence"})
"""Triggers that do not justify a transfer when a confident FAQ intent was recognised."""

FAQ_INTENTS = frozenset({"clinic_question", "hours", "address", "parking", "directions", "faq"})
"""Low-risk FAQ intents the knowledge base answers: the ``faq`` workflow's ``clinic_question``
and the keyword templates' names (also any ``faq.*``/``faq_*`` intent, and any intent that the
``IntentRecognized`` event places in the :data:`FAQ_WORKFLOW`)."""

FAQ_WORKFLOW = "faq"
"""The low-risk workflow answered from the knowledge base."""

FAQ_CONFIDENCE = 0.8
"""Confidence at or above which a recognised FAQ intent makes a weak-trigger transfer avoidable."""

OUTCOMES = ("resolved", "transferred", "message_taken", "abandoned", "caller_silent")
"""Every call outcome: the workflows' terminal outcomes, then the caller leaving (hanging up
during a workflow or before any outcome) and the agent hanging up on a silent caller."""

DISCLOSURE_DEADLINE_S = 10.0
"""Seconds after the answer by which the AI disclosure must have started."""

PHI_TOOL_PREFIX = "calendar."
NON_PHI_TOOLS = frozenset({"calendar.free_slots"})
"""Tools under :data:`PHI_TOOL_PREFIX` that read no patient record (open slots only)."""


class Judge(Protocol):
    """An LLM judge: ``judge(transcript) -> {"sentiment": float, "summary": str}``.

    Used only where a capable model is configured. Either key may be missing; anything else in
    the dict is ignored. ``model`` names the model (recorded as ``judge="llm:<model>"``).
    """

    model: str

    def __call__(self, transcript: str) -> dict[str, Any]:
        """Judge a redacted ``Caller:``/``Agent:`` transcript."""
        ...


def is_phi_tool(tool: str) -> bool:
    """Return True if ``tool`` discloses or changes a patient's record."""
    return tool.startswith(PHI_TOOL_PREFIX) and tool not in NON_PHI_TOOLS


def is_faq_intent(intent: str) -> bool:
    """Return True for a low-risk FAQ intent (:data:`FAQ_INTENTS`, ``faq.*``, ``faq_*``)."""
    return intent in FAQ_INTENTS or intent.startswith(("faq.", "faq_"))


def has_card_number(text: str) -> bool:
    """Return True if ``text`` holds a Luhn-valid 13-19 digit number (a PAN)."""
    return any(span.label == "PAN" for span in find_phi(text))


def outcome_of(events: Sequence[Event]) -> str:
    """The call's outcome (see the module table)."""
    outcomes = [e for e in events if isinstance(e, WorkflowOutcome)]
    if outcomes:
        return outcomes[-1].outcome
    if any(isinstance(e, TransferResult) and e.ok for e in events):
        return "transferred"
    return "abandoned"


def contained_of(events: Sequence[Event]) -> bool:
    """True when no transfer to a person succeeded (see the module table)."""
    return not any(isinstance(e, TransferResult) and e.ok for e in events)


def transfer_appropriate_of(events: Sequence[Event]) -> bool | None:
    """Whether every transfer attempt had a justified trigger (see the module table)."""
    reasons: set[str] = set()
    confident_faq = False
    verdicts: list[bool] = []
    for event in events:
        if isinstance(event, Escalated) and event.reason in TRIGGERS:
            reasons.add(event.reason)
        elif isinstance(event, IntentRecognized):
            faq = is_faq_intent(event.intent) or event.workflow == FAQ_WORKFLOW
            if faq and event.confidence >= FAQ_CONFIDENCE:
                confident_faq = True
        elif isinstance(event, TransferAttempted):
            avoidable = reasons <= WEAK_TRIGGERS and confident_faq
            verdicts.append(bool(reasons) and not avoidable)
    if not verdicts:
        return None
    return all(verdicts)


def disclosure_ok_of(events: Sequence[Event]) -> bool:
    """True when the disclosure started within 10 s of the answer (see the module table)."""
    answered = next((e.t for e in events if isinstance(e, CallAnswered)), None)
    if answered is None:
        return False
    return any(
        isinstance(e, DisclosurePlayed) and e.started - answered <= DISCLOSURE_DEADLINE_S
        for e in events
    )


def identity_before_phi_ok_of(events: Sequence[Event]) -> bool:
    """True when record tools, and what the agent said after them, follow a verified identity."""
    verified = False
    phi_touched = False
    for event in events:
        if isinstance(event, IdentityVerified) and event.ok:
            verified = True
        elif isinstance(event, ToolCalled) and is_phi_tool(event.tool):
            if not verified:
                return False
            phi_touched = True
        elif isinstance(event, AgentSpoke) and phi_touched and not verified:
            return False
    return True


def _texts(events: Sequence[Event]) -> list[str]:
    texts: list[str] = []
    for event in events:
        if isinstance(event, TurnEnded):
            texts.append(event.user_text)
        elif isinstance(event, AgentSpoke | MessageTaken):
            texts.append(event.text)
        elif isinstance(event, SlotFilled):
            texts.append(event.value)
    return texts


def no_card_number_ok_of(events: Sequence[Event]) -> bool:
    """True when no card number was said, spoken back, filled or taken down."""
    return not any(has_card_number(text) for text in _texts(events))


def caller_sentiment(events: Sequence[Event]) -> float:
    """Mean sentiment of the non-blank caller turns; 0.0 with none."""
    scores = [
        sentiment(e.user_text) for e in events if isinstance(e, TurnEnded) and e.user_text.strip()
    ]
    return sum(scores) / len(scores) if scores else 0.0


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def rules_summary(events: Sequence[Event], outcome: str, contained: bool) -> str:
    """One paragraph from fixed identifiers (intents, workflows, tools, reasons), no caller words.

    Args:
        events: The call's events in time order.
        outcome: The call's outcome (:func:`outcome_of`).
        contained: Whether the AI handled it end to end (:func:`contained_of`).
    """
    parts: list[str] = []
    intents = [e for e in events if isinstance(e, IntentRecognized)]
    main = next((e.intent for e in reversed(events) if isinstance(e, WorkflowOutcome)), "")
    names = _unique([main] + [e.intent for e in intents])
    if names:
        parts.append(f"Caller intent: {', '.join(names)}.")
    else:
        parts.append("No intent was recognised.")
    workflows = _unique(
        [e.workflow for e in events if isinstance(e, IntentRecognized | WorkflowOutcome)]
    )
    if workflows:
        parts.append(f"Workflow: {', '.join(workflows)}.")
    checks = [e for e in events if isinstance(e, IdentityVerified)]
    if checks:
        last = checks[-1]
        word = "verified" if any(c.ok for c in checks) else "not verified"
        parts.append(f"Identity {word} ({last.attempts} attempt{'s' * (last.attempts != 1)}).")
    else:
        parts.append("No identity check.")
    tools = [e for e in events if isinstance(e, ToolCalled)]
    if tools:
        listed = ", ".join(f"{e.tool} {'ok' if e.ok else 'failed'}" for e in tools)
        parts.append(f"Tools: {listed}.")
    pauses = [e for e in events if isinstance(e, PciPause) and not e.active]
    for pause in pauses:
        parts.append(f"Card payment by keypad: {pause.outcome or 'no result'}.")
    reasons = _unique([e.reason for e in events if isinstance(e, Escalated)])
    if reasons:
        parts.append(f"Escalated ({', '.join(reasons)}).")
    results = [e for e in events if isinstance(e, TransferResult)]
    attempts = sum(isinstance(e, TransferAttempted) for e in events)
    if attempts:
        if any(r.ok for r in results):
            parts.append("Transferred to staff.")
        else:
            parts.append(f"Transfer failed ({attempts} attempt{'s' * (attempts != 1)}).")
    messages = [e for e in events if isinstance(e, MessageTaken)]
    if messages:
        parts.append(f"Message taken ({', '.join(_unique([m.reason for m in messages]))}).")
    handled = "handled by the AI end to end" if contained else "handed to a person"
    parts.append(f"Outcome: {outcome}; {handled}.")
    ended = next((e for e in reversed(events) if isinstance(e, CallEnded)), None)
    if ended is not None:
        parts.append(f"Call ended ({ended.disposition}) after {ended.duration_s:.0f} s.")
    return " ".join(parts)


def transcript_of(events: Sequence[Event]) -> str:
    """``Caller:``/``Agent:`` lines of the call with PHI and card numbers redacted (for a judge)."""
    lines = []
    for event in events:
        if isinstance(event, TurnEnded) and event.user_text.strip():
            lines.append(f"Caller: {redact(event.user_text)}")
        elif isinstance(event, AgentSpoke) and event.text.strip():
            lines.append(f"Agent: {redact(event.text)}")
    return "\n".join(lines)


def _ask_judge(judge: Judge, events: Sequence[Event]) -> tuple[float | None, str | None]:
    try:
        verdict = judge(transcript_of(events))
    except Exception:  # noqa: BLE001 - a failing judge leaves the rule-based score
        _LOGGER.warning("call judge %s failed; keeping the rule-based score", judge.model)
        return None, None
    if not isinstance(verdict, dict):
        return None, None
    value = verdict.get("sentiment")
    score: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        score = max(-1.0, min(1.0, float(value)))
    text = verdict.get("summary")
    summary = text.strip() if isinstance(text, str) and text.strip() else None
    return score, summary


def score_call(events: Sequence[Event], *, judge: Judge | None = None) -> CallScored:
    """Score one call (see the module table for every rule).

    Args:
        events: One call's events in time order.
        judge: Optional LLM judge; it may override only ``sentiment`` and ``summary``.

    Returns:
        The :class:`CallScored` event for the call (``summary`` is content).

    Raises:
        ValueError: ``events`` is empty.
    """
    if not events:
        raise ValueError("no events to score")
    outcome = outcome_of(events)
    contained = contained_of(events)
    mood = caller_sentiment(events)
    summary = rules_summary(events, outcome, contained)
    used = "rules"
    if judge is not None:
        judged_mood, judged_summary = _ask_judge(judge, events)
        if judged_mood is not None or judged_summary is not None:
            used = f"llm:{judge.model}"
            mood = mood if judged_mood is None else judged_mood
            summary = summary if judged_summary is None else judged_summary
    return CallScored(
        events[0].call_id,
        outcome=outcome,
        contained=contained,
        transfer_appropriate=transfer_appropriate_of(events),
        disclosure_ok=disclosure_ok_of(events),
        identity_before_phi_ok=identity_before_phi_ok_of(events),
        no_card_number_ok=no_card_number_ok_of(events),
        sentiment=mood,
        judge=used,
        summary=summary,
    )
