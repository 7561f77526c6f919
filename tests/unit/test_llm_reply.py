"""Where the LLM service ends a one-sentence reply, on scripted token streams.

The real :class:`LocalLlamaLLMService` runs in a pipecat pipeline; only the llama.cpp engine
is replaced by one that streams given pieces (modelled on SmolLM2 replies such as "The clinic
is called Dr. Patel's office."), so the cut is checked exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from pipecat.frames.frames import LLMContextFrame, LLMFullResponseEndFrame, LLMTextFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from appliance.pipeline.services import LocalLlamaLLMService


class ScriptedEngine:
    """Streams ``pieces`` like ``LlamaEngine.stream`` (``delay_s`` per piece); counts them."""

    def __init__(self, pieces: list[str], delay_s: float = 0.0) -> None:
        self.pieces = pieces
        self.delay_s = delay_s
        self.taken = 0

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        for piece in self.pieces[:max_tokens]:
            if cancelled():
                return
            time.sleep(self.delay_s)
            self.taken += 1
            yield piece


async def reply(pieces: list[str], *, one_sentence: bool = True) -> str:
    engine = ScriptedEngine(pieces)
    llm = LocalLlamaLLMService(engine, max_tokens=40, one_sentence=one_sentence)  # type: ignore[arg-type]
    context = LLMContext(messages=[{"role": "user", "content": "What is the clinic called?"}])
    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(context), SleepFrame(0.1)])
    assert isinstance(down[-1], LLMFullResponseEndFrame)
    return "".join(f.text for f in down if isinstance(f, LLMTextFrame))


def tokens(text: str) -> list[str]:
    """Word-ish pieces with the punctuation split off, as a tokenizer streams them."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        lead = " " if i else ""
        core = word.rstrip(".!?")
        out.append(lead + core)
        out.extend(word[len(core) :])
    return [p for p in out if p]


@pytest.mark.parametrize(
    ("stream", "spoken"),
    [
        # An abbreviation does not end the reply (the regex this replaces stopped at "Dr.").
        (
            "The clinic is called Dr. Patel's office. It is open daily.",
            "The clinic is called Dr. Patel's office.",
        ),
        ("Yes. We open at 8 a.m. on Monday. See you then.", "Yes. We open at 8 a.m. on Monday."),
        ("Your copay is $12.50 today. Thanks.", "Your copay is $12.50 today."),
        ("Please use St. Mary's entrance! It is on the left.", "Please use St. Mary's entrance!"),
    ],
)
async def test_reply_ends_after_the_first_real_sentence(stream: str, spoken: str) -> None:
    assert await reply(tokens(stream)) == spoken


async def test_reply_without_sentence_end_is_spoken_whole() -> None:
    assert await reply(tokens("we are open until five")) == "we are open until five"


async def test_generation_stops_one_piece_after_the_sentence() -> None:
    engine_pieces = tokens("Hello there friend. Next sentence here. And more.")
    engine = ScriptedEngine(engine_pieces, delay_s=0.03)  # SmolLM2 on 2 cores: ~15 ms/token
    llm = LocalLlamaLLMService(engine, max_tokens=40)  # type: ignore[arg-type]
    context = LLMContext(messages=[{"role": "user", "content": "Hi"}])
    down, _ = await run_test(llm, frames_to_send=[LLMContextFrame(context), SleepFrame(0.1)])
    assert "".join(f.text for f in down if isinstance(f, LLMTextFrame)) == "Hello there friend."
    # Cancelled right after the piece that confirmed the sentence end, not run to the end.
    assert len(tokens("Hello there friend. Next")) <= engine.taken <= 8 < len(engine_pieces)


async def test_multi_sentence_mode_speaks_everything() -> None:
    text = "Hello there friend. Next sentence here."
    assert await reply(tokens(text), one_sentence=False) == text
