"""Tracks what the caller actually heard (after the output transport).

The output transport releases each :class:`TTSTextFrame` once the audio before it has been
written to the wire (see :mod:`appliance.pipeline.transport`), and drops queued text on an
interruption. This processor therefore sees exactly the played text, per bot speaking burst,
and emits :class:`~appliance.events.AgentSpoke` (and, once, :class:`DisclosurePlayed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.events import AgentSpoke, BargeIn, DisclosurePlayed, Event
from appliance.text import normalise


class PlayedTextTracker(FrameProcessor):
    """Emits the played agent text per speaking burst.

    Args:
        call_id: Opaque call id.
        emit: Event sink.
        disclosure: The disclosure text, to detect when it has been played in full.
        source: Called to label each burst (``"template"``/``"llm"``), e.g. from the
            receptionist.
        dropped_ms: Called to read how much queued audio the last barge-in dropped.
    """

    def __init__(
        self,
        call_id: str,
        emit: Callable[[Event], None],
        disclosure: str,
        source: Callable[[], str] = lambda: "llm",
        dropped_ms: Callable[[], float] = lambda: 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._call_id = call_id
        self._emit = emit
        self._disclosure = normalise(disclosure)
        self._source = source
        self._dropped_ms = dropped_ms
        self._parts: list[str] = []
        self._interrupted = False
        self._speaking = False
        self._started_at = time.time()
        self._disclosure_done = False
        self._opening = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Collect played text; emit on the end of each speaking burst."""
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame) and not self._speaking:
            self._speaking = True
        elif isinstance(frame, TTSTextFrame) and direction == FrameDirection.DOWNSTREAM:
            self._parts.append(frame.text)
            self._check_disclosure()
        elif isinstance(frame, InterruptionFrame) and self._speaking:
            self._interrupted = True
            self._emit(BargeIn(self._call_id, dropped_ms=self._dropped_ms()))
        elif isinstance(frame, BotStoppedSpeakingFrame) and self._speaking:
            self._flush()
        await self.push_frame(frame, direction)

    def finish(self) -> None:
        """The call ended: report a burst still in progress as interrupted."""
        if self._speaking or self._parts:
            self._interrupted = True
            self._flush()

    def _check_disclosure(self) -> None:
        if self._disclosure_done:
            return
        heard = normalise(" ".join(self._parts))
        if self._disclosure and self._disclosure in heard:
            self._disclosure_done = True
            self._emit(
                DisclosurePlayed(self._call_id, started=self._started_at, text=self._disclosure)
            )

    def _flush(self) -> None:
        text = " ".join(p.strip() for p in self._parts if p.strip())
        source = "opening" if self._opening else self._source()
        self._opening = False
        if text or self._interrupted:
            self._emit(
                AgentSpoke(self._call_id, text=text, interrupted=self._interrupted, source=source)
            )
        self._parts = []
        self._interrupted = False
        self._speaking = False
