"""Post-call scoring: outcome, containment, transfer appropriateness and compliance flags."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from appliance.events import (
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
    SlotFilled,
    ToolCalled,
    TransferAttempted,
    TransferResult,
    TurnEnded,
    WorkflowOutcome,
)
from appliance.metrics.store import CallMetadataStore
from appliance.policy.scoring import OUTCOMES, score_call, transcript_of

T0 = 1_700_000_000.0
DISCLOSURE = "This is Maple Clinic's automated assistant, an AI. Calls are recorded."


def opening(call: str, disclosure_after_s: float = 0.4) -> list[Event]:
    return [
        CallAnswered(call, codec="PCMU", t=T0),
        DisclosurePlayed(
            call, started=T0 + disclosure_after_s, text=DISCLOSURE, t=T0 + disclosure_after_s + 5
        ),
    ]


def resolved_reschedule(call: str = "c-resched") -> list[Event]:
    return [
        *opening(call),
        TurnEnded(call, user_text="Hi, I need to move my appointment on Tuesday", t=T0 + 9),
        IntentRecognized(
            call,
            intent="reschedule",
            confidence=0.93,
            method="embedding",
            workflow="reschedule",
            t=T0 + 9.2,
        ),
        AgentSpoke(
            call,
            text="Sure. What is your date of birth?",
            interrupted=False,
            source="template",
            t=T0 + 10,
        ),
        TurnEnded(call, user_text="March 4, 1982", t=T0 + 14),
        SlotFilled(
            call,
            workflow="reschedule",
            slot="dob",
            value="1982-03-04",
            confidence=0.97,
            t=T0 + 14.1,
        ),
        IdentityVerified(call, workflow="reschedule", ok=True, t=T0 + 14.5),
        ToolCalled(
            call,
            tool="calendar.find_appointment",
            ok=True,
            idempotency_key="k1",
            arguments='{"patient": "p1"}',
            result='{"when": "Tue 10:00"}',
            t=T0 + 15,
        ),
        ToolCalled(call, tool="calendar.free_slots", ok=True, idempotency_key="k2", t=T0 + 15.5),
        AgentSpoke(
            call,
            text="I see Tuesday at ten. Thursday at two is free. Shall I move it?",
            interrupted=False,
            source="llm",
            t=T0 + 16,
        ),
        TurnEnded(call, user_text="Yes please, that would be great, thank you", t=T0 + 20),
        ToolCalled(call, tool="calendar.reschedule", ok=True, idempotency_key="k3", t=T0 + 21),
        AgentSpoke(
            call, text="Done: Thursday at two.", interrupted=False, source="template", t=T0 + 22
        ),
        WorkflowOutcome(
            call, workflow="reschedule", outcome="resolved", intent="reschedule", t=T0 + 22.1
        ),
        CallEnded(call, disposition="caller_hangup", duration_s=25.0, t=T0 + 25),
    ]


def transfer_call(
    call: str, *, reason: str | None, ok: bool = True, pre: list[Event] | None = None
) -> list[Event]:
    events = [*opening(call), TurnEnded(call, user_text="Can I talk to a person?", t=T0 + 8)]
    events += pre or []
    if reason is not None:
        events.append(Escalated(call, reason=reason, workflow="faq", t=T0 + 8.5))
    events += [
        AgentSpoke(
            call, text="Connecting you now.", interrupted=False, source="template", t=T0 + 9
        ),
        TransferAttempted(
            call, mode="blind", target="sip:frontdesk@pbx", handoff_id="h1", t=T0 + 10
        ),
        TransferResult(call, handoff_id="h1", ok=ok, status=200 if ok else 486, t=T0 + 12),
    ]
    return events


def test_resolved_reschedule_is_contained_and_compliant() -> None:
    score = score_call(resolved_reschedule())
    assert isinstance(score, CallScored)
    assert score.call_id == "c-resched"
    assert score.outcome == "resolved"
    assert score.contained is True
    assert score.transfer_appropriate is None
    assert score.disclosure_ok is True
    assert score.identity_before_phi_ok is True
    assert score.no_card_number_ok is True
    assert score.judge == "rules"
    assert score.sentiment > 0
    assert "reschedule" in score.summary and "resolved" in score.summary
    assert "calendar.reschedule ok" in score.summary
    assert "Identity verified" in score.summary
    # The summary holds no caller words or slot values.
    for raw in ("Tuesday", "1982", "March", "great", "p1"):
        assert raw not in score.summary


def test_transfer_on_explicit_request_is_appropriate() -> None:
    score = score_call(transfer_call("c-xfer", reason="explicit_request"))
    assert score.transfer_appropriate is True
    assert score.outcome == "transferred"  # no WorkflowOutcome: from the TransferResult
    assert score.contained is False
    assert "explicit_request" in score.summary and "Transferred" in score.summary


def test_transfer_without_reason_is_inappropriate() -> None:
    score = score_call(transfer_call("c-noreason", reason=None))
    assert score.transfer_appropriate is False
    assert score.contained is False


def test_unknown_reason_counts_as_none() -> None:
    assert score_call(transfer_call("c-odd", reason="felt_like_it")).transfer_appropriate is False


def test_avoidable_transfer_after_confident_faq_intent() -> None:
    faq = [
        IntentRecognized("c-faq", intent="hours", confidence=0.91, method="embedding", t=T0 + 8.2)
    ]
    score = score_call(transfer_call("c-faq", reason="out_of_scope", pre=faq))
    assert score.transfer_appropriate is False
    # The same FAQ intent recognised with low confidence: the transfer was a fair call.
    unsure = [
        IntentRecognized("c-faq2", intent="hours", confidence=0.6, method="embedding", t=T0 + 8.2)
    ]
    assert (
        score_call(transfer_call("c-faq2", reason="out_of_scope", pre=unsure)).transfer_appropriate
        is True
    )
    # The faq workflow's intent (the KB) counts the same.
    kb = [
        IntentRecognized(
            "c-kb",
            intent="clinic_question",
            confidence=0.85,
            method="embedding",
            workflow="faq",
            t=T0 + 8.2,
        )
    ]
    assert (
        score_call(transfer_call("c-kb", reason="low_confidence", pre=kb)).transfer_appropriate
        is False
    )
    # A strong trigger next to the FAQ intent still justifies it.
    assert (
        score_call(transfer_call("c-faq3", reason="emergency", pre=faq)).transfer_appropriate
        is True
    )


def test_failed_transfer_then_message_is_still_contained() -> None:
    call = "c-msg"
    events = transfer_call(call, reason="explicit_request", ok=False) + [
        MessageTaken(
            call, reason="callback_request", text="Please call me back about my bill", t=T0 + 20
        ),
        WorkflowOutcome(call, workflow="message", outcome="message_taken", t=T0 + 21),
    ]
    score = score_call(events)
    assert score.outcome == "message_taken"
    assert score.contained is True
    assert score.transfer_appropriate is True
    assert "Transfer failed" in score.summary and "callback_request" in score.summary
    assert "bill" not in score.summary


def test_hangup_before_any_outcome_is_abandoned() -> None:
    call = "c-gone"
    events = [
        *opening(call),
        CallEnded(call, disposition="caller_hangup", duration_s=3.0, t=T0 + 3),
    ]
    score = score_call(events)
    assert score.outcome == "abandoned"
    assert score.contained is True
    assert score.sentiment == 0.0
    assert "No intent" in score.summary


def test_agent_hanging_up_on_a_silent_caller_is_its_own_outcome() -> None:
    call = "c-silent"
    events = [
        *opening(call),
        WorkflowOutcome(call, workflow="", outcome="caller_silent", t=T0 + 45),
        CallEnded(call, disposition="agent_hangup", duration_s=50.0, t=T0 + 50),
    ]
    score = score_call(events)
    assert score.outcome == "caller_silent" and score.outcome in OUTCOMES
    assert score.contained is True
    assert "Outcome: caller_silent" in score.summary


def test_late_disclosure_fails() -> None:
    call = "c-late"
    assert score_call(opening(call, disclosure_after_s=9.5)).disclosure_ok is True
    assert score_call(opening(call, disclosure_after_s=12.0)).disclosure_ok is False
    assert score_call([CallAnswered(call, t=T0)]).disclosure_ok is False


def test_calendar_tool_before_identity_fails() -> None:
    call = "c-phi"
    events = [
        *opening(call),
        TurnEnded(call, user_text="When is my next appointment?", t=T0 + 8),
        ToolCalled(call, tool="calendar.find_appointment", ok=True, idempotency_key="k", t=T0 + 9),
        AgentSpoke(
            call, text="Your next visit is Friday.", interrupted=False, source="llm", t=T0 + 10
        ),
        IdentityVerified(call, workflow="lookup", ok=True, t=T0 + 15),
    ]
    assert score_call(events).identity_before_phi_ok is False


def test_failed_verification_does_not_unlock_records() -> None:
    call = "c-phi2"
    events = [
        *opening(call),
        IdentityVerified(call, workflow="lookup", ok=False, attempts=2, t=T0 + 8),
        ToolCalled(call, tool="calendar.cancel", ok=False, idempotency_key="k", t=T0 + 9),
    ]
    score = score_call(events)
    assert score.identity_before_phi_ok is False
    assert "Identity not verified (2 attempts)" in score.summary


def test_free_slots_needs_no_identity() -> None:
    call = "c-slots"
    events = [
        *opening(call),
        ToolCalled(call, tool="calendar.free_slots", ok=True, idempotency_key="k", t=T0 + 9),
        AgentSpoke(
            call, text="Thursday at two is free.", interrupted=False, source="llm", t=T0 + 10
        ),
    ]
    assert score_call(events).identity_before_phi_ok is True


def test_luhn_valid_card_number_in_caller_turn_fails() -> None:
    call = "c-card"
    events = [*opening(call), TurnEnded(call, user_text="my card is 4111 1111 1111 1111", t=T0 + 8)]
    assert score_call(events).no_card_number_ok is False
    dashed = [
        *opening(call),
        SlotFilled(
            call, workflow="pay", slot="x", value="4111-1111-1111-1111", confidence=0.9, t=T0 + 8
        ),
    ]
    assert score_call(dashed).no_card_number_ok is False
    said = [
        *opening(call),
        AgentSpoke(
            call, text="I have 4111111111111111.", interrupted=False, source="llm", t=T0 + 8
        ),
    ]
    assert score_call(said).no_card_number_ok is False
    message = [
        *opening(call),
        MessageTaken(call, reason="billing", text="card 4111 1111 1111 1111", t=T0 + 8),
    ]
    assert score_call(message).no_card_number_ok is False


def test_non_luhn_sixteen_digits_pass() -> None:
    call = "c-nocard"
    events = [
        *opening(call),
        TurnEnded(call, user_text="my member number is 1234 5678 9012 3456", t=T0 + 8),
    ]
    assert score_call(events).no_card_number_ok is True


def test_frustrated_caller_has_negative_sentiment() -> None:
    call = "c-angry"
    events = [
        *opening(call),
        TurnEnded(call, user_text="I already told you, this is ridiculous", t=T0 + 8),
        TurnEnded(call, user_text="This stupid machine is useless, I hate this", t=T0 + 14),
    ]
    neutral = [
        *opening("c-calm"),
        TurnEnded("c-calm", user_text="What time do you open on Monday?", t=T0 + 8),
    ]
    assert score_call(events).sentiment < -0.3
    assert score_call(neutral).sentiment == pytest.approx(0.0, abs=0.1)


class _Judge:
    model = "qwen2.5-7b"

    def __init__(self, verdict: Any) -> None:
        self.verdict = verdict
        self.seen = ""

    def __call__(self, transcript: str) -> dict[str, Any]:
        self.seen = transcript
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


def test_judge_overrides_only_sentiment_and_summary() -> None:
    call = "c-judge"
    events = [
        *opening(call, disclosure_after_s=30.0),
        TurnEnded(call, user_text="my card is 4111 1111 1111 1111", t=T0 + 40),
    ]
    judge = _Judge({"sentiment": -3.0, "summary": "Caller tried to pay.", "disclosure_ok": True})
    score = score_call(events, judge=judge)
    assert score.judge == "llm:qwen2.5-7b"
    assert score.sentiment == -1.0  # clamped
    assert score.summary == "Caller tried to pay."
    assert score.disclosure_ok is False and score.no_card_number_ok is False
    assert "4111" not in judge.seen and "[PAN]" in judge.seen


def test_failing_judge_keeps_rules() -> None:
    events = resolved_reschedule()
    rules = score_call(events)
    for verdict in (RuntimeError("model crashed"), {}, {"sentiment": "bad"}, ["x"]):
        score = score_call(events, judge=_Judge(verdict))
        assert score.judge == "rules"
        assert score.sentiment == rules.sentiment and score.summary == rules.summary


def test_transcript_marks_speakers() -> None:
    text = transcript_of(resolved_reschedule())
    assert text.splitlines()[0] == "Caller: Hi, I need to move my appointment on Tuesday"
    assert text.splitlines()[1] == "Agent: Sure. What is your date of birth?"
    assert "Caller: [DOB]" in text  # redacted for the judge


def test_empty_call_is_an_error() -> None:
    with pytest.raises(ValueError):
        score_call([])


def test_rates_over_recorded_scores(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    calls = {
        "a": resolved_reschedule("a"),
        "b": transfer_call("b", reason="explicit_request"),
        "c": transfer_call("c", reason=None),
        "d": [
            *opening("d", disclosure_after_s=15.0),
            TurnEnded("d", user_text="card 4111 1111 1111 1111", t=T0 + 20),
        ],
    }
    scores = {}
    for call, events in calls.items():
        scores[call] = score_call(events)
        store.record_score(call, scores[call])
    rates = store.rates()
    assert rates["calls"] == 4
    assert rates["containment_rate"] == pytest.approx(0.5)  # a, d
    assert rates["escalation_rate"] == pytest.approx(0.5)  # b, c transferred
    assert rates["task_completion_rate"] == pytest.approx(0.25)  # a resolved
    assert rates["inappropriate_transfer_rate"] == pytest.approx(0.5)  # c of b, c
    assert rates["disclosure_failure_rate"] == pytest.approx(0.25)  # d
    assert rates["card_number_failure_rate"] == pytest.approx(0.25)  # d
    assert rates["identity_before_phi_failure_rate"] == 0.0
    assert rates["mean_sentiment"] == pytest.approx(sum(s.sentiment for s in scores.values()) / 4)
    # Only scores at or after `since` count (scored_at is the CallScored time: now, by default).
    future = time.time() + 10_000
    late = CallScored(
        "e",
        outcome="resolved",
        contained=True,
        transfer_appropriate=None,
        disclosure_ok=True,
        identity_before_phi_ok=True,
        no_card_number_ok=True,
        sentiment=0.5,
        judge="rules",
        summary="x",
        t=future,
    )
    store.on_event(late)
    store.close()
    reopened = CallMetadataStore(db)
    assert reopened.rates()["calls"] == 5
    only_late = reopened.rates(since=future - 1)
    assert only_late["calls"] == 1 and only_late["task_completion_rate"] == 1.0
    empty = reopened.rates(since=future + 1)
    assert empty["calls"] == 0 and empty["containment_rate"] is None
    reopened.close()
