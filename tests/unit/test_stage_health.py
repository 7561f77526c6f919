"""A failing model stage escalates the call once; other errors do not."""

from __future__ import annotations

import asyncio

import pytest
from pipecat.frames.frames import ErrorFrame, TextFrame
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.agent.dialog import Next
from appliance.agent.runtime import AgentRuntime
from appliance.events import Escalated, Event
from appliance.pipeline.health import StageHealthObserver


def pushed(source: str, frame: object) -> FramePushed:
    return FramePushed(
        source=FrameProcessor(name=source),
        destination=FrameProcessor(name="next"),
        frame=frame,
        direction=FrameDirection.UPSTREAM,
        timestamp=0,
    )


@pytest.mark.asyncio
async def test_first_stage_error_escalates_once(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dialog = agent.new_dialog("c1", events.append)
    replies = []

    async def on_failure(stage: str) -> None:
        replies.append((stage, dialog.stage_failed(stage)))

    observer = StageHealthObserver("c1", on_failure)
    await observer.on_push_frame(pushed("Receptionist", ErrorFrame(error="x")))  # not a stage
    await observer.on_push_frame(pushed("STT", TextFrame(text="hello")))  # not an error
    soft = ErrorFrame(error="TTS context 3 completed with no audio")  # pipecat's soft report
    await observer.on_push_frame(pushed("TTS", soft))
    await observer.on_push_frame(pushed("TTS", ErrorFrame(error="tts failed: tts_failed")))
    await observer.on_push_frame(pushed("LLM", ErrorFrame(error="llm generation failed")))
    await asyncio.sleep(0.05)
    assert [stage for stage, _ in replies] == ["tts"]
    reply = replies[0][1]
    assert reply.next is Next.TRANSFER and reply.text.startswith("Please hold")
    assert [e.reason for e in events if isinstance(e, Escalated)] == ["stage_failure"]
