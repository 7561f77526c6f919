"""LLM service on the real SmolLM2 GGUF: streaming, grounding, cancellation on barge-in."""

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

from appliance.config.settings import ApplianceSettings, ClinicSettings
from appliance.pipeline.builder import system_prompt
from appliance.pipeline.services import LocalLlamaLLMService

pytestmark = pytest.mark.pipeline

RELEVANT = (LLMFullResponseStartFrame, LLMTextFrame, LLMFullResponseEndFrame)


def context(question: str, system: str = "You are a helpful assistant.") -> LLMContext:
    return LLMContext(
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]
    )


def clinic_prompt(name: str) -> str:
    """The production system prompt (builder.system_prompt) for a clinic called ``name``."""
    clinic = ClinicSettings(
        name=name,
        hours="Tuesday to Saturday, 7 AM to 3 PM",
        address="9 Quay Road, Portside",
        parking="Park on Quay Road.",
    )
    return system_prompt(ApplianceSettings(clinic=clinic))


async def ask(llm: LocalLlamaLLMService, ctx: LLMContext) -> tuple[list[type], str]:
    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(ctx), SleepFrame(sleep=0.1)])
    down = [f for f in down if isinstance(f, RELEVANT)]
    return [type(f) for f in down], "".join(f.text for f in down if isinstance(f, LLMTextFrame))


@pytest.mark.asyncio
async def test_streams_one_short_reply(models) -> None:  # noqa: ANN001
    llm = LocalLlamaLLMService(models.llm, max_tokens=40)
    kinds, text = await ask(llm, context("Say hello."))
    assert kinds[0] is LLMFullResponseStartFrame and kinds[-1] is LLMFullResponseEndFrame
    assert kinds.count(LLMTextFrame) >= 1 and 0 < len(text.split()) <= 40


@pytest.mark.asyncio
async def test_reply_is_grounded_in_the_clinic_named_in_its_context(models) -> None:  # noqa: ANN001
    """The clinic's name comes from the context given, and only from it.

    What SmolLM2-135M (the default model) reliably takes from the system prompt is the
    clinic's name: asked for it, it answered with it in 20 of 20 samples for each clinic
    below (temperature 0.2, this prompt). It does not reliably answer hours, address or
    parking from the prompt (hours 0 of 16, address 2 of 16 samples; it invents towns and
    calls the clinic "non-profit"), so this is not a check that the whole reply is supported:
    those questions are answered from the knowledge base, never by this model. The two
    clinics alternate on one engine, so a reply carrying the other clinic's name (a fact not
    in its context) would also reveal a stale prompt or KV-cache reuse across calls.
    """
    llm = LocalLlamaLLMService(models.llm, max_tokens=40)
    names = ("Harbour View Clinic", "Maple Street Family Clinic")
    for name in (*names, *names):
        other = names[1] if name == names[0] else names[0]
        kinds, text = await ask(
            llm, context("What is the name of the clinic?", clinic_prompt(name))
        )
        assert kinds[0] is LLMFullResponseStartFrame and kinds[-1] is LLMFullResponseEndFrame
        assert name.lower() in text.lower(), f"{name!r} not in {text!r}"
        assert other.lower() not in text.lower(), f"{other!r} leaked into {text!r}"


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
