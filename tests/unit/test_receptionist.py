"""Receptionist and disclosure processors in pipecat's frame test harness."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSSpeakFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from appliance.agent.receptionist import Receptionist
from appliance.agent.templates import Action
from appliance.config.settings import ClinicSettings
from appliance.events import DtmfReceived, Event, TurnEnded
from appliance.pipeline.transport import SipDTMFFrame
from appliance.policy.disclosure import DisclosureOpener, disclosure_text

CLINIC = ClinicSettings(name="Oak Clinic", hours="nine to five")


def ctx(text: str) -> LLMContextFrame:
    return LLMContextFrame(
        LLMContext(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": text}])
    )


def make(events: list[Event], actions: list[Action]) -> Receptionist:
    async def on_action(a: Action) -> None:
        actions.append(a)

    return Receptionist("c1", CLINIC, events.append, on_action)


@pytest.mark.asyncio
async def test_templated_question_never_reaches_the_llm() -> None:
    events: list[Event] = []
    down, _ = await run_test(
        make(events, []),
        frames_to_send=[ctx("What are your hours?")],
        expected_down_frames=[LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame],
    )
    assert down[1].text == "We're open nine to five."
    assert events == [TurnEnded("c1", user_text="What are your hours?", t=events[0].t)]


@pytest.mark.asyncio
async def test_other_questions_go_to_the_llm() -> None:
    await run_test(
        make([], []), frames_to_send=[ctx("Tell me a joke")], expected_down_frames=[LLMContextFrame]
    )


@pytest.mark.asyncio
async def test_goodbye_hangs_up_only_after_the_reply_was_played() -> None:
    actions: list[Action] = []
    proc = make([], actions)
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
    assert actions == []
    await run_test(proc, frames_to_send=[BotStoppedSpeakingFrame(), SleepFrame(sleep=0.05)])
    assert actions == [Action.HANGUP]


@pytest.mark.asyncio
async def test_dtmf_frames_are_recorded_with_their_method() -> None:
    from pipecat.audio.dtmf.types import KeypadEntry

    events: list[Event] = []
    await run_test(
        make(events, []),
        frames_to_send=[SipDTMFFrame(button=KeypadEntry.FIVE, method="sip-info")],
    )
    assert [(e.digit, e.method) for e in events if isinstance(e, DtmfReceived)] == [
        ("5", "sip-info")
    ]


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
