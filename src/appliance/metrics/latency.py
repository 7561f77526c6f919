"""Per-turn latency breakdown from pipecat frames (an observer, never a stage).

Stages, all in seconds, for each caller turn (reference: the pipecat frame flow):

* ``endpointing_s``: caller's last voice (VAD stop minus the VAD ``stop_secs`` hangover) to
  the turn being declared over (:class:`UserStoppedSpeakingFrame`, smart-turn v3's decision).
* ``stt_s``: VAD stop to the final :class:`TranscriptionFrame` (segment transcription).
* ``llm_ttft_s``: the LLM's time to first token (its TTFB metric); ``None`` for templated turns.
* ``tts_ttfa_s``: the TTS's time to first audio (its TTFB metric) for the first sentence.
* ``voice_to_voice_s``: caller's last voice to :class:`BotStartedSpeakingFrame` (agent audio
  queued to the wire), measured inside the process. The wire-level figure is measured by the
  calling peer in ``benchmarks/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    MetricsFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed

from appliance.events import Event, TurnLatency


@dataclass
class _Turn:
    voice_end: float
    user_stopped: float | None = None
    transcript: float | None = None
    llm_ttft: float | None = None
    tts_ttfa: float | None = None


class TurnLatencyObserver(BaseObserver):
    """Emits one :class:`~appliance.events.TurnLatency` per answered caller turn.

    Args:
        call_id: Opaque call id.
        emit: Event sink.
        vad_stop_secs: The VAD's stop hangover in seconds, subtracted to find the voice end.
        llm_name: Substring of the LLM processor's name (to attribute TTFB metrics).
        tts_name: Substring of the TTS processor's name.
    """

    def __init__(
        self,
        call_id: str,
        emit: Callable[[Event], None],
        *,
        vad_stop_secs: float,
        llm_name: str = "LLM",
        tts_name: str = "TTS",
    ) -> None:
        super().__init__()
        self._call_id = call_id
        self._emit = emit
        self._vad_stop = vad_stop_secs
        self._llm_name = llm_name
        self._tts_name = tts_name
        self._turn: _Turn | None = None
        self._seen: set[int] = set()
        self.turns: list[TurnLatency] = []

    async def on_push_frame(self, data: FramePushed) -> None:
        """Track the frames that mark each stage boundary (first push only)."""
        frame = data.frame
        if frame.id in self._seen:
            return
        now = time.monotonic()
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self._seen.add(frame.id)
            self._turn = _Turn(voice_end=now - self._vad_stop)
        elif self._turn is None:
            return
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._seen.add(frame.id)
            self._turn.user_stopped = self._turn.user_stopped or now
        elif isinstance(frame, TranscriptionFrame):
            self._seen.add(frame.id)
            self._turn.transcript = self._turn.transcript or now
        elif isinstance(frame, MetricsFrame):
            self._seen.add(frame.id)
            for item in frame.data:
                if isinstance(item, TTFBMetricsData) and item.value > 0:
                    if self._llm_name in item.processor and self._turn.llm_ttft is None:
                        self._turn.llm_ttft = item.value
                    elif self._tts_name in item.processor and self._turn.tts_ttfa is None:
                        self._turn.tts_ttfa = item.value
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._seen.add(frame.id)
            turn, self._turn = self._turn, None
            if turn.transcript is None:
                return  # a VAD blip without a transcript: not a caller turn
            end = turn.voice_end
            latency = TurnLatency(
                self._call_id,
                endpointing_s=None if turn.user_stopped is None else turn.user_stopped - end,
                stt_s=turn.transcript - (end + self._vad_stop),
                llm_ttft_s=turn.llm_ttft,
                tts_ttfa_s=turn.tts_ttfa,
                voice_to_voice_s=now - end,
            )
            self.turns.append(latency)
            self._emit(latency)
        if len(self._seen) > 4096:
            self._seen.clear()
