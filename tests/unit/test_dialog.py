"""The dialogue manager on the shipped workflows, real embeddings and a real calendar."""

from __future__ import annotations

from appliance.agent.dialog import DialogManager, Next
from appliance.agent.runtime import AgentRuntime
from appliance.events import (
    Escalated,
    Event,
    IdentityVerified,
    SlotFilled,
    ToolCalled,
    WorkflowOutcome,
)
from tests.conftest import NOW


def dialog(agent: AgentRuntime, events: list[Event], **settings: object) -> DialogManager:
    if settings:
        from dataclasses import replace

        agent = AgentRuntime(
            agent.workflows, agent.classifier, agent.kb, agent.calendar,
            replace(agent.settings, **settings),
        )  # fmt: skip
    return DialogManager(
        "c1", agent.workflows, agent.classifier, agent.kb, agent.calendar, events.append,
        agent.settings, now=lambda: NOW,
    )  # fmt: skip


def test_reschedule_verifies_identity_before_any_appointment_detail(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    said = [dm.handle_turn(t, 0.9).text for t in (
        "I need to reschedule my appointment.",
        "My name is Maria Lopez.",
    )]  # fmt: skip
    assert all("Patel" not in s for s in said)
    check = dm.handle_turn("March fourth, nineteen eighty two.", 0.9)
    assert check.text == "I heard March 4, 1982. Is that right?"  # spoken DOB: always read back
    reply = dm.handle_turn("Yes.", 0.9)
    assert "Dr. Patel on Tuesday, November 24 at 10:30 AM" in reply.text
    assert dm.handle_turn("Next Wednesday at eleven in the morning.", 0.9).text.startswith(
        "The first opening is Wednesday, November 25 at 11 AM"
    )
    done = dm.handle_turn("Yes, that's right.", 0.9)
    assert "now on Wednesday, November 25 at 11 AM" in done.text
    kinds = [e.kind for e in events]
    assert kinds.index("IdentityVerified") < kinds.index("ToolCalled")
    tools = [e.tool for e in events if isinstance(e, ToolCalled)]
    assert tools == ["identity.verify", "calendar.upcoming", "calendar.free_slots",
                     "calendar.reschedule"]  # fmt: skip
    assert [e.outcome for e in events if isinstance(e, WorkflowOutcome)] == ["resolved"]
    assert dm.handle_turn("No.", 0.9).next is Next.HANGUP


def test_wrong_birth_date_is_refused_then_escalated(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    for turn in ("I need to cancel my appointment.", "My name is Maria Lopez.",
                 "January first, nineteen ninety."):  # fmt: skip
        reply = dm.handle_turn(turn, 0.9)
        assert "Patel" not in reply.text
    spell = dm.handle_turn("Yes.", 0.9)
    assert "spell your last name" in spell.text and "Patel" not in spell.text
    assert dm.listening.kind == "spelling"
    reply = dm.handle_turn("L O P E Z", 0.9)
    assert reply.next is Next.TRANSFER and reply.transfer is not None
    assert [e.ok for e in events if isinstance(e, IdentityVerified)] == [False, False]
    assert reply.transfer.context["identity_verified"] is False
    assert "Patel" not in reply.transfer.context["summary"]


def test_low_confidence_slot_is_read_back_and_dtmf_is_offered(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    dm.handle_turn("I need a refill of my blood pressure medication.", 0.9)
    dm.handle_turn("My name is Maria Lopez.", 0.9)
    check = dm.handle_turn("March fourth, nineteen eighty two.", 0.3)
    assert check.text == "I heard March 4, 1982. Is that right?"
    offer = dm.handle_turn("No.", 0.9)
    assert "key in your date of birth as eight digits" in offer.text
    assert dm.expects_dtmf
    for d in "0304198":
        assert dm.handle_dtmf(d) is None
    reply = dm.handle_dtmf("2")
    assert reply is not None and reply.next is Next.TRANSFER
    assert [e.source for e in events if isinstance(e, SlotFilled)][-1] == "dtmf"
    assert [e.reason for e in events if isinstance(e, Escalated)] == ["high_risk"]


def test_tier_not_enabled_is_refused_with_a_transfer(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events, enabled_tiers=("low",))
    reply = dm.handle_turn("I need to reschedule my appointment.", 0.9)
    assert reply.next is Next.TRANSFER
    assert [e.reason for e in events if isinstance(e, Escalated)] == ["tier_disabled"]
    # Low-tier questions still work.
    dm2 = dialog(agent, [], enabled_tiers=("low",))
    assert "Blue Cross" in dm2.handle_turn("Do you take Blue Cross insurance?", 0.9).text


def test_two_misunderstandings_escalate_and_failed_transfer_takes_a_message(
    agent: AgentRuntime,
) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    assert dm.handle_turn("blah blah flurb and more", 0.9).next is Next.CONTINUE
    reply = dm.handle_turn("zzz qqq plus some other words", 0.9)
    assert reply.next is Next.TRANSFER
    assert [e.reason for e in events if isinstance(e, Escalated)] == ["misunderstood_twice"]
    fallback = dm.transfer_failed()
    assert "couldn't reach our staff" in fallback.text and "leave a short message" in fallback.text
    bye = dm.handle_turn("Please call me back about my lab work.", 0.9)
    assert bye.next is Next.HANGUP and "Goodbye" in bye.text
    assert [e.outcome for e in events if isinstance(e, WorkflowOutcome)] == ["message_taken"]


def test_explicit_request_and_frustration_escalate(agent: AgentRuntime) -> None:
    events: list[Event] = []
    assert dialog(agent, events).handle_turn("Let me talk to a person.", 0.9).next is Next.TRANSFER
    assert (
        dialog(agent, events).handle_turn("This is ridiculous, you are useless!", 0.9).next
        is Next.TRANSFER
    )
    assert [e.reason for e in events if isinstance(e, Escalated)] == [
        "explicit_request",
        "frustration",
    ]


def test_unsure_intent_is_confirmed_in_plain_words(agent: AgentRuntime) -> None:
    dm = dialog(agent, [])
    reply = dm.handle_turn("I'd like to pay my carpet", 0.6)  # Whisper's "copay"
    assert reply.text == "Just to be sure, do you want help with paying a copay by card?"
    assert dm.handle_turn("Yes.", 0.9).next is Next.PCI


def test_unknown_question_is_not_invented(agent: AgentRuntime) -> None:
    dm = dialog(agent, [])
    reply = dm.handle_turn("Do you do laser eye surgery on dogs?", 0.9)
    assert "Blue Cross" not in reply.text and "We're open" not in reply.text


def test_a_turn_cut_mid_sentence_is_read_with_its_continuation(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    first = dm.handle_turn("I need...", 0.9)
    assert first.next is Next.CONTINUE and not [e for e in events if isinstance(e, Escalated)]
    reply = dm.handle_turn("risk schedule my appointment.", 0.9)
    assert "verify your identity" in reply.text


def test_keyed_digits_without_pound_are_taken_after_the_interdigit_timeout(
    agent: AgentRuntime,
) -> None:
    dm = dialog(agent, [])
    dm.handle_turn("I need to reschedule my appointment.", 0.9)
    dm.handle_turn("My name is Robert Brown.", 0.9)
    for d in "0912196":  # one digit short, no #
        assert dm.handle_dtmf(d) is None
    assert dm.digits_pending
    reply = dm.flush_dtmf()  # what the receptionist's inter-digit timer does
    assert reply is not None and "didn't get that number" in reply.text
    assert "key in your date of birth" in reply.text and not dm.digits_pending
    for d in "09121968":
        reply = dm.handle_dtmf(d)
    assert reply is not None and "Dr. Nguyen on Tuesday, November 24 at 9:30 AM" in reply.text


def test_requests_for_a_person_survive_stt_variants(agent: AgentRuntime) -> None:
    for said in ("Let me talk to our person.", "Can I speak with your nurse?", "Operator."):
        events: list[Event] = []
        assert dialog(agent, events).handle_turn(said, 0.6).next is Next.TRANSFER, said
        assert [e.reason for e in events if isinstance(e, Escalated)] == ["explicit_request"]
