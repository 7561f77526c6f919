"""pipecat services over the shared in-process engines of :mod:`appliance.models.engines`.

* :class:`LocalWhisperSTTService`: a :class:`SegmentedSTTService`; the segment between VAD
  start and stop (16 kHz 16-bit mono PCM) is transcribed in a worker thread. A turn the VAD
  cut into several segments is decoded once more as a whole (:meth:`take_turn_text`).
* :class:`LocalLlamaLLMService`: streams llama.cpp tokens as :class:`LLMTextFrame`; an
  interruption cancels the task awaiting the next token and the worker stops within one token.
* :class:`LocalKokoroTTSService`: sentence-by-sentence synthesis (pipecat's sentence
  aggregation), 24 kHz output resampled with soxr to the transport rate; sentences found in a
  :class:`~appliance.pipeline.phrase_cache.PhraseCache` are served without synthesis.

None of these log content: transcripts and replies travel only in frames.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

import numpy as np
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings, STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.utils.string import SENTENCE_ENDING_PUNCTUATION, match_endofsentence
from pipecat.utils.time import time_now_iso8601

from appliance.errors import ApplianceError
from appliance.models.engines import (
    SLOT_DECODING,
    KokoroEngine,
    LlamaEngine,
    Transcript,
    WhisperEngine,
)
from appliance.pipeline.phrase_cache import PhraseCache
from appliance.text import message_text
from appliance.text.listening import FREE, Listening


class _FirstSentence:
    """Finds where a streamed reply's first sentence of at least ``min_words`` words ends.

    A sentence end is what pipecat's TTS aggregation takes for one
    (:func:`~pipecat.utils.string.match_endofsentence`), confirmed by the text that follows
    it, so "Dr." or "8 a.m." does not end the reply. Short openers ("Yes.") are kept and
    the next sentence is awaited.
    """

    def __init__(self, min_words: int = 3) -> None:
        self._min_words = min_words
        self._text = ""
        self._start = 0  # where the sentence being generated starts

    def feed(self, piece: str) -> str | None:
        """Add ``piece``; return its part up to the end of the reply, or ``None`` to go on."""
        before = len(self._text)
        self._text += piece
        while True:
            rest = self._text[self._start :]
            if not any(c in SENTENCE_ENDING_PUNCTUATION for c in rest):
                return None
            end = match_endofsentence(rest)
            if not end or not rest[end:].strip():
                return None  # no sentence end yet, or none confirmed by following text
            self._start += end
            if len(self._text[: self._start].split()) >= self._min_words:
                return self._text[before : self._start] if self._start > before else ""


#: Segments whose voice starts more than this long after the previous segment's end belong to
#: a new turn (the endpointing's longest wait for an unfinished turn is 2.5 s).
TURN_GAP_S = 3.0
#: Silence kept between the segments of a turn when it is decoded as a whole (ms).
TURN_JOIN_SILENCE_MS = 200
#: At most this much audio of one turn is kept for the whole-turn decode (s); Whisper reads
#: 30 s windows, and a longer turn is left to its segment transcripts.
TURN_MAX_S = 25.0
#: Listening kinds whose segments are decoded with a slot vocabulary: their segment
#: transcripts stand (digit and date groups are already tuned per segment, docs/decisions/0011).
_SEGMENT_ONLY = frozenset(k for k, o in SLOT_DECODING.items() if o.vocabulary != "any")


class LocalWhisperSTTService(SegmentedSTTService):
    """faster-whisper STT on VAD-delimited segments, with a whole-turn decode for split turns.

    Each segment is decoded for the answer the dialogue expects (``listening``): a digit slot
    limits decoding to digit tokens, a date slot primes it with a date
    (:meth:`WhisperEngine.transcribe`; docs/decisions/0011-slot-aware-recognition.md).

    A caller's pause inside a sentence ends a VAD segment (Silero, stop after 0.2 s), and
    Whisper decodes a fragment without the words before it much worse than the sentence:
    "I want | to pay my bill by card" came through as "I won't. Okay, my bill, my card." So
    when a turn holds two or more segments (outside digit and date slots), the segments so far
    are decoded again as one utterance, joined with :data:`TURN_JOIN_SILENCE_MS` of silence,
    in the same worker call as the newest segment; :meth:`take_turn_text` hands that text to
    the dialogue in place of the joined fragments.

    Args:
        engine: The process-wide Whisper engine (expects 16 kHz input).
        listening: Returns what the dialogue expects now (read once per segment).
    """

    def __init__(
        self,
        engine: WhisperEngine,
        listening: Callable[[], Listening] = lambda: FREE,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            sample_rate=engine.sample_rate,
            settings=STTSettings(model="faster-whisper", language="en"),
            **kwargs,
        )
        self._engine = engine
        self._listening = listening
        self.last_confidence: float | None = None
        self.last_language: tuple[str | None, float] = (None, 0.0)
        #: Segments handed to the STT whose transcription has not been pushed yet (the
        #: endpointing does not end a turn while the caller's words are still being decoded).
        self.segments_pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Per queued segment, in order: whether it starts a new turn (the gap before it).
        self._starts_turn: deque[bool] = deque()
        self._last_stop: float | None = None
        #: The current turn's segments (PCM with pipecat's trailing silence removed).
        self._turn: list[bytes] = []
        self._turn_text: str | None = None
        #: Whole-turn decodes made (a count for tests and benchmarks).
        self.turn_decodes = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Count each VAD-delimited segment as pending until its transcript is out."""
        if isinstance(frame, VADUserStartedSpeakingFrame):
            now = time.monotonic()
            gap = None if self._last_stop is None else now - self._last_stop
            self._starts_turn.append(gap is None or gap > TURN_GAP_S)
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self.is_usable:
            self._last_stop = time.monotonic()
            self.segments_pending += 1
            self._idle.clear()
        await super().process_frame(frame, direction)

    async def wait_idle(self) -> None:
        """Return once every pending segment's transcript has been pushed."""
        await self._idle.wait()

    def take_turn_text(self) -> str | None:
        """The whole-turn transcript of the turn just ended, or ``None`` (one segment only).

        Called by the dialogue side once per caller turn; it also starts the next turn, so
        segments decoded after it belong to the next one.
        """
        text, self._turn_text = self._turn_text, None
        self._turn = []
        return text

    @property
    def wants_wav_segments(self) -> bool:
        """Segments arrive as raw PCM (no WAV header)."""
        return False

    def can_generate_metrics(self) -> bool:
        """Processing-time metrics are reported."""
        return True

    def _segment_and_turn(
        self, audio: bytes, listening: Listening
    ) -> tuple[Transcript, Transcript | None]:
        """Decode one segment, then (for a split turn) the turn so far (worker thread)."""
        segment = self._engine.transcribe(audio, listening)
        if listening.kind in _SEGMENT_ONLY:
            self._turn = []
            return segment, None
        trailing = int(self._trailing_silence_secs * self.sample_rate) * 2
        voiced = audio[: len(audio) - trailing] if 0 < trailing < len(audio) else audio
        self._turn.append(voiced)
        if len(self._turn) < 2:
            return segment, None
        join = bytes(int(self.sample_rate * TURN_JOIN_SILENCE_MS / 1000) * 2)
        whole = join.join(self._turn) + bytes(trailing)
        if len(whole) > TURN_MAX_S * self.sample_rate * 2:
            return segment, None
        return segment, self._engine.transcribe(whole, listening)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        """Transcribe one segment; yields a :class:`TranscriptionFrame` if speech was heard."""
        try:
            if self._starts_turn.popleft() if self._starts_turn else False:
                self._turn, self._turn_text = [], None
            await self.start_processing_metrics()
            try:
                segment, whole = await asyncio.to_thread(
                    self._segment_and_turn, audio, self._listening()
                )
            except ApplianceError as exc:
                yield ErrorFrame(error=f"stt failed: {exc.code}")
                return
            finally:
                await self.stop_processing_metrics()
            result = segment
            if whole is not None and whole.text:
                self.turn_decodes += 1
                self._turn_text = whole.text
                result = whole
            self.last_confidence = result.confidence
            self.last_language = (result.language, result.language_probability)
            if segment.text:
                yield TranscriptionFrame(segment.text, "caller", time_now_iso8601(), finalized=True)
        finally:
            self.segments_pending = max(0, self.segments_pending - 1)
            if not self.segments_pending:
                self._idle.set()


class LocalLlamaLLMService(LLMService):
    """In-process llama.cpp chat completion, streamed, cancellable.

    Args:
        engine: The process-wide llama.cpp engine.
        max_tokens: Reply budget in tokens.
        one_sentence: Stop after the first complete sentence of at least three words, as
            pipecat's sentence aggregation delimits sentences (keeps tiny models grounded).
    """

    def __init__(
        self, engine: LlamaEngine, *, max_tokens: int = 40, one_sentence: bool = True, **kwargs: Any
    ) -> None:
        settings = LLMSettings(
            model="llama.cpp",
            system_instruction=None,
            temperature=0.2,
            max_tokens=max_tokens,
            top_p=0.9,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
        )
        super().__init__(settings=settings, **kwargs)
        self._engine = engine
        self._max_tokens = max_tokens
        self._one_sentence = one_sentence

    def can_generate_metrics(self) -> bool:
        """TTFB (time to first token) metrics are reported."""
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Run a completion for each :class:`LLMContextFrame`; pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            await self._generate(frame.context.get_messages())
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)

    async def _generate(self, raw_messages: list[Any]) -> None:
        messages = [
            {"role": str(m.get("role")), "content": message_text(m.get("content"))}
            for m in raw_messages
            if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
        ]
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for piece in self._engine.stream(
                    messages, max_tokens=self._max_tokens, cancelled=cancelled.is_set
                ):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
            except BaseException as exc:  # noqa: BLE001 - forwarded to the loop
                loop.call_soon_threadsafe(pieces.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, None)

        await self.start_ttfb_metrics()
        worker = loop.run_in_executor(None, produce)
        stop = _FirstSentence() if self._one_sentence else None
        first = True
        try:
            while True:
                piece = await pieces.get()
                if piece is None:
                    break
                if isinstance(piece, BaseException):
                    # pipecat's ErrorFrame carries an Exception; a bare BaseException (SystemExit
                    # in the worker thread) is still reported, without the exception attached.
                    exception = piece if isinstance(piece, Exception) else None
                    await self.push_error(error_msg="llm generation failed", exception=exception)
                    break
                if first:
                    await self.stop_ttfb_metrics()
                    first = False
                cut = stop.feed(piece) if stop is not None else None
                out = piece if cut is None else cut
                if out:
                    await self._push_llm_text(out)
                if cut is not None:
                    break
        finally:
            cancelled.set()  # barge-in or early stop: free the model within one token
            if first:
                await self.stop_ttfb_metrics()
        await asyncio.shield(worker)


class LocalKokoroTTSService(TTSService):
    """Kokoro TTS on the shared engine, one sentence per :meth:`run_tts` call.

    Args:
        engine: The process-wide Kokoro engine (24 kHz output).
        speed: Speaking rate multiplier.
        cache: Pre-rendered fixed phrases, served without synthesis.
    """

    def __init__(
        self,
        engine: KokoroEngine,
        *,
        speed: float = 1.0,
        cache: PhraseCache | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model="kokoro-82m", voice=engine.voice, language="en-us"),
            **kwargs,
        )
        self._engine = engine
        self._speed = speed
        self._cache = cache
        self.cache_hits = 0
        from pipecat.audio.utils import create_stream_resampler

        self._resampler = create_stream_resampler()

    def can_generate_metrics(self) -> bool:
        """TTFB (time to first audio) metrics are reported."""
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        """Synthesise one sentence (or serve it from the cache) as audio frames.

        A long sentence is synthesised in two pieces split at its first clause boundary, so the
        first audio leaves sooner; the text frame still covers the whole sentence.
        """
        if not text.strip():
            return
        await self.start_tts_usage_metrics(text)
        cached = self._cache.get(text) if self._cache is not None else None
        pieces = [cached] if cached is not None else first_clause_split(text)
        if cached is not None:
            self.cache_hits += 1
        first = True
        for piece in pieces:
            try:
                if isinstance(piece, bytes):
                    pcm = piece
                else:
                    samples = await asyncio.to_thread(self._engine.synthesize, piece, self._speed)
                    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
            except ApplianceError as exc:
                yield ErrorFrame(error=f"tts failed: {exc.code}")
                return
            finally:
                if first:
                    await self.stop_ttfb_metrics()
            first = False
            audio = await self._resampler.resample(pcm, self._engine.sample_rate, self.sample_rate)
            yield TTSAudioRawFrame(
                audio=audio, sample_rate=self.sample_rate, num_channels=1, context_id=context_id
            )


_CLAUSE = re.compile(r"(?<=[,;:])\s+")


def first_clause_split(text: str, min_words: int = 2) -> list[str]:
    """Split a sentence at its first clause boundary (``,`` ``;`` ``:``).

    Only when both sides have at least ``min_words`` words; otherwise it is returned whole.
    """
    for match in _CLAUSE.finditer(text):
        head, tail = text[: match.start()].strip(), text[match.end() :].strip()
        if len(head.split()) >= min_words and len(tail.split()) >= min_words:
            return [head, tail]
        if len(head.split()) >= min_words:
            break
    return [text]
