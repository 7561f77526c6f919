"""Per-turn latency breakdown from pipecat frames (an observer, never a stage).

Stages, all in seconds, for each caller turn (reference: the pipecat frame flow):

* ``endpointing_s``: caller's last voice (VAD stop minus the VAD ``stop_secs`` hangover) to
  the turn being declared over (:class:`UserStoppedSpeakingFrame`, smart-turn v3's decision).
* ``stt_s``: VAD stop to the final :class:`TranscriptionFrame` (segment transcription).
* ``llm_ttft_s``: the LLM's time to first token (its TTFB metric); ``None`` for templated turns.
* ``tts_ttfa_s``: the TTS's time to first audio (its TTFB metric) for the first sentence.
* ``agent_s``: the turn's end to the receptionist's reply (the dialogue manager's time: rules,
  intents, slot parsing, tools), i.e. the first reply frame the receptionist pushes
  (:class:`LLMFullResponseStartFrame`, :class:`TTSSpeakFrame`, or the
  :class:`LLMContextFrame` it hands to the LLM).
* ``reply_s``: that reply to :class:`BotStartedSpeakingFrame` (LLM, TTS or the phrase cache,
  and the output queue).
* ``stt_confidence`` (0..1, not a time): the STT's confidence in the turn's last transcript,
  read from ``stt_confidence`` when the observer sees that :class:`TranscriptionFrame` (the
  figure the dialogue gets for the turn); ``None`` when the STT gives none.
* ``voice_to_voice_s``: caller's last voice to :class:`BotStartedSpeakingFrame` (agent audio
  queued to the wire), measured inside the process; it equals
  ``endpointing_s + agent_s + reply_s``. The wire-level figure is measured by the calling peer
  in ``benchmarks/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    LLMContextFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed

from appliance.events import Event, TurnLatency

_NS = 1e9


@dataclass
class _Turn:
    vad_stop: float  # when the VAD declared the stop, pipeline-clock seconds
    hangover: float  # the VAD's stop_secs: the voice ended this long before vad_stop
    user_stopped: float | None = None
    transcript: float | None = None
    llm_ttft: float | None = None
    tts_ttfa: float | None = None
    replied: float | None = None
    confidence: float | None = None

    @property
    def voice_end(self) -> float:
        return self.vad_stop - self.hangover


class TurnLatencyObserver(BaseObserver):
    """Emits one :class:`~appliance.events.TurnLatency` per answered caller turn.

    Times are the pipeline clock's at each frame's first push (:attr:`FramePushed.timestamp`,
    nanoseconds), not when the observer gets to it (observers run behind a queue). A turn
    starts at a :class:`VADUserStoppedSpeakingFrame` and is reported at the next
    :class:`BotStartedSpeakingFrame` if a :class:`TranscriptionFrame` came in between (a VAD
    blip without a transcript is not a turn).

    Args:
        call_id: Opaque call id.
        emit: Event sink.
        vad_stop_secs: The VAD's stop hangover in seconds, subtracted to find the voice end
            when the VAD frame does not carry its own ``stop_secs``.
        llm_name: Substring of the LLM processor's name (to attribute TTFB metrics).
        tts_name: Substring of the TTS processor's name.
        agent_name: Substring of the receptionist's name (whose reply frames end ``agent_s``).
        listening: Returns the kind of answer the dialogue expects (recorded per turn).
        stt_confidence: Returns the STT's confidence 0..1 in its last transcript, or ``None``
            (``LocalWhisperSTTService.last_confidence``); read at each transcript.
    """

    def __init__(
        self,
        call_id: str,
        emit: Callable[[Event], None],
        *,
        vad_stop_secs: float,
        llm_name: str = "LLM",
        tts_name: str = "TTS",
        agent_name: str = "Receptionist",
        listening: Callable[[], str] = lambda: "",
        stt_confidence: Callable[[], float | None] = lambda: None,
    ) -> None:
        super().__init__(observe_every_push=False)
        self._call_id = call_id
        self._emit = emit
        self._vad_stop = vad_stop_secs
        self._llm_name = llm_name
        self._tts_name = tts_name
        self._agent_name = agent_name
        self._listening = listening
        self._stt_confidence = stt_confidence
        self._kind = ""
        self._turn: _Turn | None = None
        self.turns: list[TurnLatency] = []

    async def on_push_frame(self, data: FramePushed) -> None:
        """Track the frames that mark each stage boundary (first push only)."""
        if not data.first_push:
            return
        frame = data.frame
        now = data.timestamp / _NS
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self._turn = _Turn(vad_stop=now, hangover=frame.stop_secs or self._vad_stop)
        elif self._turn is None:
            return
        elif isinstance(frame, UserStoppedSpeakingFrame):
            if self._turn.user_stopped is None:
                self._turn.user_stopped = now
                self._kind = self._listening()
        elif isinstance(frame, LLMFullResponseStartFrame | TTSSpeakFrame | LLMContextFrame):
            source = getattr(data.source, "name", "")
            if (
                self._agent_name in source
                and self._turn.user_stopped is not None
                and self._turn.replied is None
            ):
                self._turn.replied = now
        elif isinstance(frame, TranscriptionFrame):
            if self._turn.transcript is None:
                self._turn.transcript = now
            self._turn.confidence = self._stt_confidence()  # the turn's last transcript's
        elif isinstance(frame, MetricsFrame):
            for item in frame.data:
                if isinstance(item, TTFBMetricsData) and item.value > 0:
                    if self._llm_name in item.processor and self._turn.llm_ttft is None:
                        self._turn.llm_ttft = item.value
                    elif self._tts_name in item.processor and self._turn.tts_ttfa is None:
                        self._turn.tts_ttfa = item.value
        elif isinstance(frame, BotStartedSpeakingFrame):
            turn, self._turn = self._turn, None
            if turn.transcript is None:
                return  # a VAD blip without a transcript: not a caller turn
            end = turn.voice_end
            agent_s = reply_s = None
            if turn.user_stopped is not None and turn.replied is not None:
                agent_s, reply_s = turn.replied - turn.user_stopped, now - turn.replied
            latency = TurnLatency(
                self._call_id,
                endpointing_s=None if turn.user_stopped is None else turn.user_stopped - end,
                stt_s=turn.transcript - turn.vad_stop,
                llm_ttft_s=turn.llm_ttft,
                tts_ttfa_s=turn.tts_ttfa,
                voice_to_voice_s=now - end,
                agent_s=agent_s,
                reply_s=reply_s,
                listening=self._kind,
                stt_confidence=turn.confidence,
            )
            self.turns.append(latency)
            self._emit(latency)
