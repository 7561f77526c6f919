"""Receptionist and disclosure processors in pipecat's frame test harness."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSSpeakFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from appliance.agent.dialog import Next, Reply
from appliance.agent.receptionist import Receptionist
from appliance.agent.runtime import AgentRuntime
from appliance.events import DtmfReceived, Event, IntentRecognized, SlotFilled, TurnEnded
from appliance.pipeline.transport import SipDTMFFrame
from appliance.policy.disclosure import DisclosureOpener, disclosure_text
from tests.conftest import NOW


def ctx(text: str) -> LLMContextFrame:
    return LLMContextFrame(
        LLMContext(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": text}])
    )


def make(agent: AgentRuntime, events: list[Event], after: list[Reply]) -> Receptionist:
    async def on_after(reply: Reply) -> None:
        after.append(reply)

    dialog = agent.new_dialog("c1", events.append)
    dialog._now = lambda: NOW  # noqa: SLF001 - the demo calendar is seeded for NOW
    return Receptionist("c1", dialog, events.append, on_after, stt_confidence=lambda: 0.9)


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
    from pipecat.audio.dtmf.types import KeypadEntry

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
