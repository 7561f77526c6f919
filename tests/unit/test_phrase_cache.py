"""The phrase cache is keyed exactly as pipecat's TTS asks for sentences.

Phrases go through the real :class:`LocalKokoroTTSService` (pipecat's sentence aggregation);
only the Kokoro engine is replaced by one that records what it is asked to synthesise, so a
cache miss is visible as a synthesis call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

from appliance.agent.templates import split_sentences
from appliance.pipeline.phrase_cache import PhraseCache, tts_sentences
from appliance.pipeline.services import LocalKokoroTTSService

#: Fixed phrases whose abbreviations, initials and decimals a naive ``[.!?]`` split breaks.
PHRASES = [
    "Dr. Smith will see you at St. Mary's. Please arrive ten minutes early.",
    "We're open Monday to Friday, 8 a.m. to 5 p.m. Is there anything else?",
    "Your copay is $12.50; Mr. J. R. Jones at the front desk can help.",
    "Our address is 12 Main St. in Springfield.",
]


class RecordingEngine:
    """Stands in for :class:`KokoroEngine`: 24 kHz float32 audio, every request recorded."""

    sample_rate = 24000
    voice = "af_heart"

    def __init__(self) -> None:
        self.requests: list[str] = []

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        self.requests.append(text)
        n = 240 * len(text)  # 10 ms per character
        return (0.1 * np.sin(np.arange(n) * 2 * np.pi * 440 / self.sample_rate)).astype(np.float32)


async def pipecat_sentences(text: str) -> list[str]:
    """What pipecat's TTS sentence aggregation cuts ``text`` into (streamed, then flushed)."""
    agg = SimpleTextAggregator(aggregation_type=TextAggregationMode.SENTENCE, language="en")
    out = [a.text async for a in agg.aggregate(text)]
    rest = await agg.flush()
    if rest is not None and rest.text.strip():
        out.append(rest.text)
    return [s.strip() for s in out]


@pytest.mark.parametrize("phrase", PHRASES)
async def test_split_matches_pipecats_sentence_aggregation(phrase: str) -> None:
    assert tts_sentences(phrase) == await pipecat_sentences(phrase)


def test_abbreviations_stay_inside_their_sentence() -> None:
    assert tts_sentences(PHRASES[0]) == [
        "Dr. Smith will see you at St. Mary's.",
        "Please arrive ten minutes early.",
    ]
    # The regex split this replaces cut the phrase where pipecat does not.
    assert "Dr." in split_sentences(PHRASES[0])
    assert tts_sentences("") == [] and tts_sentences("  no full stop ") == ["no full stop"]


async def speak_streamed(tts: LocalKokoroTTSService, chunks: list[str]) -> list[TTSAudioRawFrame]:
    down, _ = await run_test(
        tts,
        frames_to_send=[
            LLMFullResponseStartFrame(),
            *[LLMTextFrame(c) for c in chunks],
            LLMFullResponseEndFrame(),
            SleepFrame(sleep=0.2),
        ],
    )
    return [f for f in down if isinstance(f, TTSAudioRawFrame)]


@pytest.mark.parametrize("tokens", [False, True], ids=["whole-text", "token-stream"])
async def test_rendered_phrases_are_found_when_spoken(tokens: bool) -> None:
    engine = RecordingEngine()
    cache = PhraseCache(engine, 1.0)  # type: ignore[arg-type]
    assert cache.render(PHRASES) == len({s for p in PHRASES for s in tts_sentences(p)})
    engine.requests.clear()
    for phrase in PHRASES:
        tts = LocalKokoroTTSService(engine, cache=cache)  # type: ignore[arg-type]
        # The receptionist pushes a reply as one LLMTextFrame; the LLM streams tokens.
        chunks = phrase.split(" ") if tokens else [phrase]
        chunks = [c + " " for c in chunks[:-1]] + chunks[-1:] if tokens else chunks
        audio = await speak_streamed(tts, chunks)
        assert engine.requests == [], f"cache missed: {engine.requests}"
        assert tts.cache_hits == len(tts_sentences(phrase)) and audio


async def test_a_phrase_spoken_whole_is_found_when_rendered_whole() -> None:
    engine = RecordingEngine()
    cache = PhraseCache(engine, 1.0)  # type: ignore[arg-type]
    cache.render(PHRASES[:1], whole=True)
    engine.requests.clear()
    tts = LocalKokoroTTSService(engine, cache=cache)  # type: ignore[arg-type]
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame(PHRASES[0]), SleepFrame(0.2)])
    assert engine.requests == [] and tts.cache_hits == 1
    assert any(isinstance(f, TTSAudioRawFrame) for f in down)


async def test_an_unrendered_sentence_is_synthesised() -> None:
    engine = RecordingEngine()
    cache = PhraseCache(engine, 1.0)  # type: ignore[arg-type]
    cache.render(PHRASES[:1])
    engine.requests.clear()
    tts = LocalKokoroTTSService(engine, cache=cache)  # type: ignore[arg-type]
    await speak_streamed(tts, ["Dr. Smith will see you at St. Mary's. Dr. Lee is away today."])
    assert tts.cache_hits == 1
    assert engine.requests == ["Dr. Lee is away today."]


def test_disk_cache_is_shared_and_names_hold_no_text(tmp_path: Path) -> None:
    first = RecordingEngine()
    a = PhraseCache(first, 1.0, tmp_path / "phrases", voice="af_heart")  # type: ignore[arg-type]
    rendered = a.render(PHRASES[:2])
    assert rendered == len(first.requests) > 0
    files = sorted(p.name for p in (tmp_path / "phrases").iterdir())
    assert len(files) == rendered
    assert all(len(name) == len("0" * 64 + ".pcm") and "Smith" not in name for name in files)

    second = RecordingEngine()
    b = PhraseCache(second, 1.0, tmp_path / "phrases", voice="af_heart")  # type: ignore[arg-type]
    assert b.render(PHRASES[:2]) == 0 and second.requests == []
    for sentence in tts_sentences(PHRASES[0]):
        assert b.get(sentence) == a.get(sentence) is not None
    # Another voice or speed is another key.
    c = PhraseCache(second, 1.1, tmp_path / "phrases", voice="af_heart")  # type: ignore[arg-type]
    assert c.render(PHRASES[:1]) == len(tts_sentences(PHRASES[0]))
