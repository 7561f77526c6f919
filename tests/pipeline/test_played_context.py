"""The conversation context keeps only what the caller actually heard.

Output transport (paced by a simulated media clock) -> played-text tracker -> assistant
aggregator. Two sentences are queued; the caller barges in while the second is playing.
"""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.tests.utils import SleepFrame, run_test

from appliance.audio.bridge import AudioBridge
from appliance.events import AgentSpoke, Event
from appliance.pipeline.played import PlayedTextTracker
from appliance.pipeline.transport import PjsuaOutputTransport, transport_params
from tests.pipeline.test_output_transport import RATE, MediaClock, tone


@pytest.mark.asyncio
async def test_interrupted_reply_keeps_only_played_sentences() -> None:
    bridge = AudioBridge(RATE)
    context = LLMContext(messages=[{"role": "system", "content": "s"}])
    pair = LLMContextAggregatorPair(context)
    events: list[Event] = []
    tracker = PlayedTextTracker("c1", events.append, disclosure="")
    tracker._opening = False  # not the opening burst
    out = PjsuaOutputTransport(bridge, transport_params(RATE))
    pipeline = Pipeline([out, tracker, pair.assistant()])
    frames = [
        LLMFullResponseStartFrame(),
        TTSStartedFrame(context_id="a"),
        TTSAudioRawFrame(audio=tone(0.6), sample_rate=RATE, num_channels=1, context_id="a"),
        TTSTextFrame("The first sentence was heard.", text_type="sentence", context_id="a"),
        TTSAudioRawFrame(audio=tone(2.0), sample_rate=RATE, num_channels=1, context_id="a"),
        TTSTextFrame("The second one was cut off.", text_type="sentence", context_id="a"),
        TTSStoppedFrame(context_id="a"),
        LLMFullResponseEndFrame(),
        SleepFrame(sleep=1.2),
        InterruptionFrame(),
        SleepFrame(sleep=0.5),
    ]
    with MediaClock(bridge):
        await run_test(pipeline, frames_to_send=frames)
    assistant = [m["content"] for m in context.get_messages() if m["role"] == "assistant"]
    said = " ".join(str(c) for c in assistant)
    assert "first sentence was heard" in said
    assert "cut off" not in said
    spoke = [e for e in events if isinstance(e, AgentSpoke)]
    assert spoke and spoke[0].interrupted and "cut off" not in spoke[0].text
