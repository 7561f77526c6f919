"""Turn-taking on real recorded speech: Silero VAD, smart-turn v3, mute until disclosure.

Pipeline under test: Whisper STT -> user context aggregator (the production configuration
from :mod:`appliance.pipeline.builder`). Audio is fed in real time, 20 ms per frame.
"""

from __future__ import annotations

import numpy as np
import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMContextFrame,
    UserStartedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
)
from pipecat.tests.utils import SleepFrame, run_test

from appliance.pipeline.builder import user_turn_params
from appliance.pipeline.services import LocalWhisperSTTService
from tests.conftest import read_pcm, speech_dir

pytestmark = pytest.mark.pipeline
RATE = 16000
FRAME = 320  # samples per 20 ms


def speech_frames(pcm: np.ndarray, lead_s: float = 0.4, tail_s: float = 2.5) -> list[Frame]:
    audio = np.concatenate(
        [np.zeros(int(lead_s * RATE), np.int16), pcm, np.zeros(int(tail_s * RATE), np.int16)]
    )
    frames: list[Frame] = []
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        frames.append(
            InputAudioRawFrame(
                audio=audio[i : i + FRAME].tobytes(), sample_rate=RATE, num_channels=1
            )
        )
        frames.append(SleepFrame(sleep=0.02))
    return frames


def build(models, *, mute: bool) -> Pipeline:  # noqa: ANN001
    """STT and the production user aggregator (builder.user_turn_params)."""
    context = LLMContext(messages=[{"role": "system", "content": "test"}])
    pair = LLMContextAggregatorPair(
        context, user_params=user_turn_params(models, mute_until_first_bot=mute)
    )
    return Pipeline([LocalWhisperSTTService(models.stt), pair.user()])


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    pcm = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", RATE)
    return pcm[: int(3.0 * RATE)]  # "A gold ring will please most any girl."


def contexts(frames: list[Frame]) -> list[str]:
    out = []
    for f in frames:
        if isinstance(f, LLMContextFrame):
            msgs = [m for m in f.context.get_messages() if m.get("role") == "user"]
            out.append(str(msgs[-1]["content"]))
    return out


@pytest.mark.asyncio
async def test_complete_sentence_ends_the_turn(models, sentence) -> None:  # noqa: ANN001
    down, _ = await run_test(build(models, mute=False), frames_to_send=speech_frames(sentence))
    said = contexts(down)
    assert len(said) == 1, f"expected one turn, got {said}"
    assert "gold ring" in said[0].lower()
    assert any(isinstance(f, UserStartedSpeakingFrame) for f in down)


@pytest.mark.asyncio
async def test_speech_during_the_disclosure_is_muted(models, sentence) -> None:  # noqa: ANN001
    # The bot has not finished its first utterance (the disclosure): the caller's speech
    # must neither start a turn nor interrupt.
    frames = [BotStartedSpeakingFrame(), *speech_frames(sentence)]
    down, up = await run_test(build(models, mute=True), frames_to_send=frames)
    assert contexts(down) == []
    assert not any(isinstance(f, UserStartedSpeakingFrame | InterruptionFrame) for f in down + up)


@pytest.mark.asyncio
async def test_after_the_disclosure_speech_interrupts_and_is_a_turn(models, sentence) -> None:  # noqa: ANN001
    frames = [
        BotStartedSpeakingFrame(),
        SleepFrame(sleep=0.05),
        BotStoppedSpeakingFrame(),
        BotStartedSpeakingFrame(),
        *speech_frames(sentence),
    ]
    down, up = await run_test(build(models, mute=True), frames_to_send=frames)
    assert any(isinstance(f, InterruptionFrame) for f in down + up), "no barge-in"
    said = contexts(down)
    assert len(said) == 1 and "ring" in said[0].lower()
