"""LLM service on the real SmolLM2 GGUF: streaming, and cancellation on barge-in."""

from __future__ import annotations

import time

import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from appliance.pipeline.services import LocalLlamaLLMService

pytestmark = pytest.mark.pipeline

RELEVANT = (LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame)


def context(question: str) -> LLMContext:
    return LLMContext(
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": question},
        ]
    )


@pytest.mark.asyncio
async def test_streams_a_short_grounded_reply(models) -> None:  # noqa: ANN001
    llm = LocalLlamaLLMService(models.llm, max_tokens=40)
    down, _ = await run_test(
        llm,
        frames_to_send=[LLMContextFrame(context("Say hello.")), SleepFrame(sleep=0.1)],
    )
    down = [f for f in down if isinstance(f, RELEVANT)]
    kinds = [type(f) for f in down]
    assert kinds[0] is LLMFullResponseStartFrame and kinds[-1] is LLMFullResponseEndFrame
    text = "".join(f.text for f in down if isinstance(f, LLMTextFrame))
    assert 0 < len(text.split()) <= 40


@pytest.mark.asyncio
async def test_barge_in_cancels_generation_and_frees_the_model(models) -> None:  # noqa: ANN001
    llm = LocalLlamaLLMService(models.llm, max_tokens=400, one_sentence=False)
    story = context("Write a very long story about a dragon, with many details.")
    t0 = time.monotonic()
    down, _ = await run_test(
        llm,
        frames_to_send=[
            LLMContextFrame(story),
            SleepFrame(sleep=0.6),
            InterruptionFrame(),
            SleepFrame(sleep=0.05),
            LLMContextFrame(context("Say hello.")),
            SleepFrame(sleep=0.1),
        ],
    )
    elapsed = time.monotonic() - t0
    down = [f for f in down if isinstance(f, (*RELEVANT, InterruptionFrame))]
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    first, second = down[:cut], down[cut + 1 :]
    first_tokens = sum(isinstance(f, LLMTextFrame) for f in first)
    assert isinstance(first[0], LLMFullResponseStartFrame)
    assert not any(isinstance(f, LLMFullResponseEndFrame) for f in first), "not cancelled"
    assert 0 < first_tokens < 200, f"{first_tokens} tokens before the interruption"
    assert isinstance(second[0], LLMFullResponseStartFrame)
    assert isinstance(second[-1], LLMFullResponseEndFrame), "model stuck after cancellation"
    # 400 tokens at ~60-85 tok/s would take >4.5 s: the first generation really stopped.
    assert elapsed < 4.5, f"took {elapsed:.1f}s"
