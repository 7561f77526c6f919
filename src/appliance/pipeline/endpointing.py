"""Slot-aware endpointing: when is the caller's turn over, given what the dialogue asked for.

pipecat's :class:`TurnAnalyzerUserTurnStopStrategy` ends a turn when smart-turn v3 says the
utterance is complete and the transcript is in; when smart-turn says "incomplete" it waits for
the analyzer's own silence timeout (3 s). That is wrong in both directions on a phone line:

* a date of birth or a phone number is said in groups with pauses ("oh three ... fifteen ...
  eighty-eight"); smart-turn often calls the first group complete, and the agent answers in the
  middle of the number;
* a short, complete answer ("yes", "March 4th 1982") that smart-turn calls incomplete costs the
  caller three seconds of dead air.

:class:`SlotAwareTurnStopStrategy` keeps smart-turn and the VAD, and adds the content of the
turn so far, judged against the dialogue's :class:`~appliance.text.listening.Listening`
(:func:`judge`):

* ``complete`` (the expected digit count, a parsable date of birth or time, a yes/no, a name):
  the turn ends after :data:`COMPLETE_SILENCE_S` of silence, whatever smart-turn says (not
  its 3 s when it says "incomplete"; not at once when it calls "Yeah," complete);
* ``partial`` (some digits or a month, not yet a whole value): the turn does not end at a
  pause; it ends when the value completes or after :data:`NUMERIC_SILENCE_S` of silence;
* ``open`` (free speech, or nothing of the expected kind): smart-turn decides; when it says
  "incomplete", the turn ends after :data:`INCOMPLETE_SILENCE_S` of silence, or after
  :data:`FRAGMENT_SILENCE_S` when the words so far end like an unfinished sentence ("Do you
  have", "I wanted to ask about").

All silences count from the caller's last voice (VAD stop minus its hangover). The pause
lengths follow conversation-analysis figures for the gap before a next turn (Stivers et al.
2009, PNAS 106(26): median gap around 200 ms, most under 1 s) and the inter-digit pauses of
the recorded FSDD strings used in ``benchmarks/callers.py`` (150-600 ms).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal

from pipecat.frames.frames import TranscriptionFrame, VADUserStoppedSpeakingFrame
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy

from appliance.agent.replies import is_fragment
from appliance.agent.understanding import (
    extract_birth_date,
    extract_name,
    extract_when,
    itn,
    yes_no,
)
from appliance.text.listening import FREE, Listening

#: Silence (s) that ends a turn holding a complete value ("Yeah, | that's right": the caller
#: benchmark's voices pause 0.3-0.5 s at a comma, and the VAD reports them back 0.2 s later).
COMPLETE_SILENCE_S = 0.8

#: Silence (s) after the caller's voice that ends a numeric turn holding a partial value.
NUMERIC_SILENCE_S = 2.2

#: Silence (s) that ends a digit turn holding at least ``digits_min`` but fewer than
#: ``digits_max`` digits (a variable-length number may be finished).
SHORT_NUMBER_SILENCE_S = 0.9

#: Silence (s) that ends an open turn smart-turn called incomplete.
INCOMPLETE_SILENCE_S = 1.1

#: Silence (s) that ends an open turn whose words end like an unfinished sentence.
FRAGMENT_SILENCE_S = 2.5

Verdict = Literal["complete", "partial", "open"]

_MONTH = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b", re.IGNORECASE
)


def looks_unfinished(text: str) -> bool:
    """Whether ``text`` ends like an unfinished sentence ("I wanted to ask about", "Do you").

    The dialogue's own test (:func:`appliance.agent.replies.is_fragment`), so endpointing waits
    for exactly the turns the dialogue would otherwise hold as fragments.
    """
    return is_fragment(text)


def judge(listening: Listening, text: str, now: datetime | None = None) -> Verdict:
    """How complete the turn's words are as an answer of the expected kind.

    Args:
        listening: What the dialogue asked for.
        text: The transcript of the turn so far (all its segments).
        now: Clock for date parsing (default: now).

    Returns:
        ``"complete"``, ``"partial"`` or ``"open"`` (see the module docstring).
    """
    said = text.strip()
    if not said:
        return "open"
    today = (now or datetime.now()).date()
    kind = listening.kind
    if kind == "digits":
        count = len(re.sub(r"\D", "", itn(said)))
        if count == 0:
            return "open"
        if listening.digits_max and count >= listening.digits_max:
            return "complete"
        return "partial"
    if kind == "date":
        digits = re.sub(r"\D", "", itn(said))
        if 5 <= len(digits) <= 7 and digits[4:6] in ("19", "20"):
            # "oh nine, one two, one nine ..." parses as 9/12/(20)19, but a caller who has
            # said "nineteen" or "twenty" of the year is mid-way through a four-digit year.
            return "partial"
        if extract_birth_date(said, 1.0, today) is not None:
            return "complete"
        if re.search(r"\d", itn(said)) or _MONTH.search(said):
            return "partial"
        return "open"
    if kind == "time":
        return "complete" if extract_when(said, 1.0, now or datetime.now()) else "open"
    if kind == "yes_no":
        return "complete" if yes_no(said) is not None else "open"
    if kind == "name":
        return "complete" if extract_name(said, 1.0) is not None else "open"
    return "open"


async def _no_wait() -> None:
    return None


class SlotAwareTurnStopStrategy(TurnAnalyzerUserTurnStopStrategy):  # type: ignore[no-untyped-call]
    """smart-turn v3 endpointing that follows the slot being asked for.

    Args:
        turn_analyzer: The smart-turn analyzer.
        listening: Returns what the dialogue expects now (read at each decision).
        stt_pending: Returns how many of the caller's segments the STT has not transcribed
            yet; the turn never ends while one is pending (a loaded CPU decodes behind the
            caller, and the words still in the queue may complete or extend the value).
        stt_idle: Awaited for the STT to have no pending segment.
        clock: Wall clock in seconds (tests); VAD frame timestamps are ``time.time()``.
        **kwargs: For :class:`TurnAnalyzerUserTurnStopStrategy`.
    """

    def __init__(
        self,
        *,
        turn_analyzer: Any,
        listening: Callable[[], Listening] = lambda: FREE,
        stt_pending: Callable[[], int] = lambda: 0,
        stt_idle: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(turn_analyzer=turn_analyzer, **kwargs)
        self._listening = listening
        self._stt_pending = stt_pending
        self._stt_idle = stt_idle or _no_wait
        self._clock = clock
        self._turn_text = ""
        self._voice_end: float | None = None
        self._late: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self.last_verdict: Verdict = "open"

    async def _reset(self) -> None:
        self._turn_text = ""
        await super()._reset()  # type: ignore[no-untyped-call]

    async def _discard_pending_end_of_turn(self) -> None:
        await self._cancel_late()
        self._voice_end = None
        await super()._discard_pending_end_of_turn()  # type: ignore[no-untyped-call]

    async def cleanup(self) -> None:
        """Stop the pending late end with the pipeline."""
        await self._cancel_late()
        await super().cleanup()  # type: ignore[no-untyped-call]

    async def _handle_vad_user_stopped_speaking(self, frame: VADUserStoppedSpeakingFrame) -> None:
        self._voice_end = frame.timestamp - frame.stop_secs
        await super()._handle_vad_user_stopped_speaking(frame)

    async def _handle_transcription(self, frame: TranscriptionFrame) -> None:
        if frame.text.strip():
            self._turn_text = f"{self._turn_text} {frame.text.strip()}".strip()
        await super()._handle_transcription(frame)

    async def _maybe_trigger_user_turn_stopped(self) -> None:
        """Decide on the turn's end from smart-turn, the transcript and the expected slot."""
        if self._vad_user_speaking or self._voice_end is None:
            if not self._vad_user_speaking and self._voice_end is None and self._turn_complete:
                await super()._maybe_trigger_user_turn_stopped()  # type: ignore[no-untyped-call]
            return
        if not self._text or not (self._transcript_finalized or self._timeout_expired):
            return  # the transcript is not in yet
        if self._stt_pending():
            if self._recheck is None:  # decide again once the queued segments are decoded
                self._recheck = self.task_manager.create_task(self._wait_stt(), f"{self}::stt")
            return
        listening = self._listening()
        verdict = await asyncio.to_thread(judge, listening, self._turn_text)
        self.last_verdict = verdict
        if self._vad_user_speaking or self._voice_end is None:
            return  # the caller spoke again while the words were judged
        if verdict == "complete":
            # "Yeah, | that's right": a caller who paused at a comma goes on within a moment.
            # The transcript itself comes about 0.6 s after the voice ends, so the wait costs
            # little; smart-turn calls "Yeah." complete, so it does not shorten it.
            self._arm_late(COMPLETE_SILENCE_S)
            return
        if verdict == "partial":
            count_ok = (
                listening.kind == "digits"
                and listening.digits_min
                and len(re.sub(r"\D", "", itn(self._turn_text))) >= listening.digits_min
            )
            self._arm_late(SHORT_NUMBER_SILENCE_S if count_ok else NUMERIC_SILENCE_S)
            return
        if self._turn_complete and not (
            listening.kind == "free" and looks_unfinished(self._turn_text)
        ):
            await self._end_now()
            return
        unfinished = looks_unfinished(self._turn_text)
        self._arm_late(FRAGMENT_SILENCE_S if unfinished else INCOMPLETE_SILENCE_S)

    async def _end_now(self) -> None:
        await self._cancel_late()
        if self._timeout_task:
            await self.task_manager.cancel_task(self._timeout_task)
            self._timeout_task = None
        await self.trigger_user_turn_stopped()

    def _arm_late(self, silence_s: float) -> None:
        if self._late is not None or self._voice_end is None:
            return
        delay = max(0.0, self._voice_end + silence_s - self._clock())
        self._late = self.task_manager.create_task(self._late_end(delay), f"{self}::late_end")

    async def _late_end(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            return
        self._late = None
        if self._vad_user_speaking or not self._text:
            return
        if self._stt_pending():
            await self._stt_idle()
        if not self._vad_user_speaking:
            await self._end_now()

    async def _wait_stt(self) -> None:
        try:
            await self._stt_idle()
        except asyncio.CancelledError:
            return
        self._recheck = None
        await self._maybe_trigger_user_turn_stopped()

    async def _cancel_late(self) -> None:
        if self._late is not None:
            task, self._late = self._late, None
            await self.task_manager.cancel_task(task)
        if self._recheck is not None:
            task, self._recheck = self._recheck, None
            await self.task_manager.cancel_task(task)
