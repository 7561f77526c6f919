"""Receptionist and disclosure processors in pipecat's frame test harness."""

from __future__ import annotations

import asyncio

import pytest
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from appliance.agent.dialog import Next, Reply
from appliance.agent.runtime import AgentRuntime
from appliance.events import (
    DtmfReceived,
    Event,
    IntentRecognized,
    SlotFilled,
    TurnEnded,
    WorkflowOutcome,
)
from appliance.pipeline.receptionist import Receptionist
from appliance.pipeline.transport import SipDTMFFrame
from appliance.policy.disclosure import DisclosureOpener, disclosure_text
from appliance.policy.scoring import score_call
from tests.conftest import NOW


def ctx(text: str) -> LLMContextFrame:
    return LLMContextFrame(
        LLMContext(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": text}])
    )


def make(
    agent: AgentRuntime, events: list[Event], after: list[Reply], idle: float | None = None
) -> Receptionist:
    async def on_after(reply: Reply) -> None:
        after.append(reply)

    dialog = agent.new_dialog("c1", events.append)
    dialog._now = lambda: NOW  # noqa: SLF001 - the demo calendar is seeded for NOW
    return Receptionist(
        "c1", dialog, events.append, on_after, stt_confidence=lambda: 0.9, idle_timeout_s=idle
    )


@pytest.mark.asyncio
async def test_knowledge_question_never_reaches_the_llm(agent: AgentRuntime) -> None:
    events: list[Event] = []
    down, _ = await run_test(
        make(agent, events, []),
        frames_to_send=[ctx("What are your hours?")],
        expected_down_frames=[LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame],
    )
    assert down[1].text.startswith("We're open Monday to Friday")
    assert events[0] == TurnEnded("c1", user_text="What are your hours?", t=events[0].t)
    assert any(isinstance(e, IntentRecognized) and e.intent == "clinic_question" for e in events)


@pytest.mark.asyncio
async def test_a_whole_turn_transcript_replaces_the_joined_fragments(agent: AgentRuntime) -> None:
    """The STT's whole-turn decode is what the dialogue, the audit record and the LLM see."""
    events: list[Event] = []
    wholes = ["I want to pay my bill by card."]
    dialog = agent.new_dialog("c1", events.append)
    proc = Receptionist(
        "c1", dialog, events.append, lambda r: asyncio.sleep(0), turn_text=lambda: wholes.pop()
        if wholes else None,
    )  # fmt: skip
    frame = ctx("I won't. Okay, my bill, my card.")
    await run_test(proc, frames_to_send=[frame])
    turn = next(e for e in events if isinstance(e, TurnEnded))
    assert turn.user_text == "I want to pay my bill by card."
    said = [m["content"] for m in frame.context.get_messages() if m["role"] == "user"]
    assert said == ["I want to pay my bill by card."]
    assert any(isinstance(e, IntentRecognized) and e.intent == "pay_copay" for e in events), events


@pytest.mark.asyncio
async def test_goodbye_hangs_up_only_after_the_reply_was_played(agent: AgentRuntime) -> None:
    after: list[Reply] = []
    proc = make(agent, [], after)
    await run_test(
        proc,
        frames_to_send=[
            ctx("okay goodbye"),
            SleepFrame(sleep=0.05),
            BotStoppedSpeakingFrame(),  # an earlier utterance ending: must not trigger
            SleepFrame(sleep=0.05),
            BotStartedSpeakingFrame(),
            SleepFrame(sleep=0.05),
        ],
    )
    assert after == []
    await run_test(proc, frames_to_send=[BotStoppedSpeakingFrame(), SleepFrame(sleep=0.05)])
    assert [r.next for r in after] == [Next.HANGUP]


@pytest.mark.asyncio
async def test_dtmf_frames_are_recorded_and_fill_a_keyed_slot(agent: AgentRuntime) -> None:
    events: list[Event] = []
    proc = make(agent, events, [])
    for turn in ("I need to reschedule my appointment.", "My name is Maria Lopez."):
        await run_test(proc, frames_to_send=[ctx(turn)])
    assert proc.dialog.expects_dtmf
    keys = [SipDTMFFrame(button=KeypadEntry(d), method="rfc4733") for d in "03041982#"]
    down, _ = await run_test(proc, frames_to_send=keys)
    assert [(e.digit, e.method) for e in events if isinstance(e, DtmfReceived)][:2] == [
        ("0", "rfc4733"),
        ("3", "rfc4733"),
    ]
    filled = [e for e in events if isinstance(e, SlotFilled) and e.slot == "birth_date"]
    assert filled and filled[0].source == "dtmf" and filled[0].value == "March 4, 1982"
    spoken = " ".join(f.text for f in down if isinstance(f, LLMTextFrame))
    assert "Dr. Patel" in spoken and "10:30 AM" in spoken


@pytest.mark.asyncio
async def test_disclosure_is_first_and_uninterruptible() -> None:
    text = disclosure_text("You reached {clinic}; I am an AI assistant.", "Oak Clinic")
    down, _ = await run_test(
        DisclosureOpener(text, "How can I help?"),
        frames_to_send=[],
        expected_down_frames=[TTSSpeakFrame, TTSSpeakFrame],
    )
    assert down[0].text == "You reached Oak Clinic; I am an AI assistant."
    assert down[0].interruptible is False
    assert down[1].text == "How can I help?" and down[1].interruptible is True


@pytest.mark.asyncio
async def test_talking_over_the_hold_prompt_does_not_cancel_the_transfer(
    agent: AgentRuntime,
) -> None:
    after: list[Reply] = []
    proc = make(agent, [], after)
    down, _ = await run_test(
        proc,
        frames_to_send=[
            ctx("Let me talk to a person."),
            SleepFrame(sleep=0.05),
            BotStartedSpeakingFrame(),
            InterruptionFrame(),  # the caller talks over "Please hold..."
            SleepFrame(sleep=0.05),
            BotStoppedSpeakingFrame(),
            SleepFrame(sleep=0.05),
        ],
    )
    holds = [f for f in down if isinstance(f, TTSSpeakFrame)]
    assert holds and all(f.interruptible is False for f in holds)
    assert [r.next for r in after] == [Next.TRANSFER]


# --------------------------------------------------------------------------- caller silence

IDLE = 0.25  # seconds; the real default is 20
SILENT = SleepFrame(sleep=IDLE * 3)  # long enough for the timer to run out
SHORT = SleepFrame(sleep=IDLE / 3)  # too short for it


def agent_says() -> list[Frame]:
    """One agent utterance played to the end, as the output transport reports it."""
    return [BotStartedSpeakingFrame(), SleepFrame(sleep=0.02), BotStoppedSpeakingFrame()]


def spoken(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if isinstance(f, LLMTextFrame | TTSSpeakFrame)]


@pytest.mark.asyncio
async def test_silent_caller_is_asked_once_then_told_goodbye_and_hung_up(
    agent: AgentRuntime,
) -> None:
    events: list[Event] = []
    after: list[Reply] = []
    proc = make(agent, events, after, idle=IDLE)
    down, _ = await run_test(
        proc,
        frames_to_send=[
            *agent_says(),  # the disclosure and greeting end
            SILENT,
            *agent_says(),  # "Are you still there? ..." played
            SILENT,
            *agent_says(),  # the goodbye played
            SleepFrame(sleep=0.05),
        ],
    )
    said = spoken(down)
    assert said[0] == "Are you still there? What can I help you with?"
    assert said[1].startswith("I haven't heard anything, so I'll end the call now.")
    assert said[1].endswith("Goodbye.") and len(said) == 2
    assert [r.next for r in after] == [Next.HANGUP]
    [outcome] = [e for e in events if isinstance(e, WorkflowOutcome)]
    assert (outcome.outcome, outcome.workflow) == ("caller_silent", "")
    assert score_call(events).outcome == "caller_silent"


@pytest.mark.asyncio
async def test_idle_timer_never_runs_while_the_agent_speaks_or_before_it_spoke(
    agent: AgentRuntime,
) -> None:
    proc = make(agent, [], [], idle=IDLE)
    down, _ = await run_test(
        proc,
        frames_to_send=[
            SILENT,  # the disclosure has not played yet: no timer
            BotStartedSpeakingFrame(),  # the disclosure, longer than the timeout
            SILENT,
            BotStoppedSpeakingFrame(),
            SHORT,
        ],
    )
    assert spoken(down) == []


@pytest.mark.asyncio
async def test_caller_speech_or_a_key_resets_the_timer_and_the_count(agent: AgentRuntime) -> None:
    events: list[Event] = []
    after: list[Reply] = []
    proc = make(agent, events, after, idle=IDLE)
    down, _ = await run_test(
        proc,
        frames_to_send=[
            *agent_says(),
            SHORT,
            UserStartedSpeakingFrame(),  # the caller talks longer than the timeout
            SILENT,
            UserStoppedSpeakingFrame(),
            ctx("What are your hours?"),
            SHORT,
            *agent_says(),  # the answer and "anything else?"
            SILENT,  # 1st silence
            *agent_says(),
            SHORT,
            SipDTMFFrame(button=KeypadEntry("5"), method="rfc4733"),  # a stray key: the caller
            SILENT,  # is there, so this is a 1st silence again, not the goodbye
            *agent_says(),
            SleepFrame(sleep=0.05),
        ],
    )
    said = spoken(down)
    assert said[0].startswith("We're open Monday to Friday")
    reprompt = "Are you still there? Is there anything else I can help you with?"
    assert said[1:] == [reprompt, reprompt]
    assert after == [] and not [e for e in events if isinstance(e, WorkflowOutcome)
                               and e.outcome == "caller_silent"]  # fmt: skip


@pytest.mark.asyncio
async def test_no_idle_prompt_during_a_pci_pause(agent: AgentRuntime) -> None:
    events: list[Event] = []
    after: list[Reply] = []
    proc = make(agent, events, after, idle=IDLE)
    down, _ = await run_test(
        proc,
        frames_to_send=[ctx("I'd like to pay my copay."), *agent_says(), SILENT],
    )
    assert [r.next for r in after] == [Next.PCI] and not proc.dialog.waits_for_caller
    # Only the card prompt: the keypad is collecting, silence is expected.
    assert [t.split(",")[0] for t in spoken(down)] == ["For your security"]

    async def pause_ends() -> None:  # what the server does when the payment handler answers
        await asyncio.sleep(0.02)
        await proc.speak(proc.dialog.pci_done(True))

    ended = asyncio.create_task(pause_ends())
    down, _ = await run_test(proc, frames_to_send=[SleepFrame(sleep=0.1), *agent_says(), SILENT])
    await ended
    assert spoken(down)[0].startswith("Thank you. Your card details went straight")
    assert spoken(down)[1:] == ["Are you still there? Is there anything else I can help you with?"]


@pytest.mark.asyncio
async def test_silence_mid_workflow_repeats_the_question_and_ends_the_workflow(
    agent: AgentRuntime,
) -> None:
    events: list[Event] = []
    after: list[Reply] = []
    proc = make(agent, events, after, idle=IDLE)
    down, _ = await run_test(
        proc,
        frames_to_send=[
            ctx("I need to reschedule my appointment."),
            *agent_says(),
            SILENT,
            *agent_says(),
            SILENT,
            *agent_says(),
            SleepFrame(sleep=0.05),
        ],
    )
    said = spoken(down)
    assert said[1] == "Are you still there? What is your first and last name?"
    assert [r.next for r in after] == [Next.HANGUP]
    [outcome] = [e for e in events if isinstance(e, WorkflowOutcome)]
    assert (outcome.workflow, outcome.outcome) == ("appointments", "caller_silent")


@pytest.mark.asyncio
async def test_card_data_is_out_of_the_record_the_dialogue_and_the_llm_context(
    agent: AgentRuntime,
) -> None:
    """A card number said aloud: the audit record, the dialogue and the LLM get ``[PAN]``."""
    events: list[Event] = []
    proc = make(agent, events, [])
    heard: list[str] = []
    handle_turn = proc.dialog.handle_turn

    def spy(text: str, *args: object, **kwargs: object) -> Reply:
        heard.append(text)
        return handle_turn(text, *args, **kwargs)  # type: ignore[arg-type]

    proc.dialog.handle_turn = spy  # type: ignore[method-assign]
    first = ctx("I want to pay my bill, my card is 4111, 1111, 1111, 1111.")
    # A later turn in the same call: the card context carries over, so a number whose Luhn
    # check broke in recognition and a spoken code are redacted too.
    second = ctx("Sorry, four one one one one one one one one one one one one one one two")
    third = ctx("It expires twelve twenty-eight and the CVV is 7 3 7.")
    for frame in (first, second, third):
        await run_test(proc, frames_to_send=[frame])
    turns = [e.user_text for e in events if isinstance(e, TurnEnded)]
    assert turns == [
        "I want to pay my bill, my card is [PAN].",
        "Sorry, [PAN]",
        "It expires [EXPIRY] and the CVV is [SAD].",
    ]
    assert heard == turns
    for frame, turn in zip((first, second, third), turns, strict=True):
        last = [m for m in frame.context.get_messages() if m["role"] == "user"][-1]
        assert last["content"] == turn


@pytest.mark.asyncio
async def test_keys_outside_a_digit_slot_are_recorded_as_a_count_only(
    agent: AgentRuntime,
) -> None:
    events: list[Event] = []
    proc = make(agent, events, [])
    assert not proc.dialog.expects_dtmf
    keys = [SipDTMFFrame(button=KeypadEntry(d), method="sip-info") for d in "4111#"]
    await run_test(proc, frames_to_send=keys)
    got = [(e.digit, e.in_slot, e.count) for e in events if isinstance(e, DtmfReceived)]
    assert got == [("", False, 1), ("", False, 2), ("", False, 3), ("", False, 4), ("", False, 5)]
    # In a digit slot the key stays on the record (the date of birth it fills).
    for turn in ("I need to reschedule my appointment.", "My name is Maria Lopez."):
        await run_test(proc, frames_to_send=[ctx(turn)])
    assert proc.dialog.expects_dtmf
    await run_test(proc, frames_to_send=[SipDTMFFrame(button=KeypadEntry("0"), method="rfc4733")])
    last = [e for e in events if isinstance(e, DtmfReceived)][-1]
    assert (last.digit, last.in_slot, last.count) == ("0", True, 0)


@pytest.mark.asyncio
async def test_a_message_left_for_staff_holds_no_card_data(agent: AgentRuntime) -> None:
    """The message the staff get (and its audit record) comes from the redacted turn."""
    events: list[Event] = []
    proc = make(agent, events, [])
    said = "Call me at 555 123 4567 about my card 4111 1111 1111 1111, security code 737."
    for text in ("Can someone call me back?", said):
        await run_test(proc, frames_to_send=[ctx(text)])
    messages = [e for e in events if type(e).__name__ == "MessageTaken"]
    assert messages, [type(e).__name__ for e in events]
    recorded = " ".join(str(v) for e in events for v in vars(e).values() if isinstance(v, str))
    assert "555 123 4567" in recorded  # the callback number stays: the staff need it
    assert "4111" not in recorded and "737" not in recorded
    assert "[PAN]" in recorded and "[SAD]" in recorded
