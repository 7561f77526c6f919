"""Answering-machine detection on an answered outbound call: the dialler's AMD seam (ADR 0022).

:class:`AnsweringMachineScreen` gives :class:`~appliance.app.dialler.Dialler` its
``detect_machine(handle)`` and the first half of ``leave_message`` (waiting for the beep).

**Where the audio comes from.** The callee's audio is read from the call's
:class:`~appliance.audio.bridge.AudioBridge` inbound queue: the 20 ms frames of 16-bit mono PCM
that the media port delivers from the callee's RTP, the same queue the call's pipeline reads
(``PjsuaInputTransport``) once it runs. While AMD listens there is no pipeline yet, so AMD is
the queue's only reader: the audio path is not copied, and nothing the callee says before the
decision ("hello?") becomes a turn. When AMD is done it hands the queue back
(``bridge.on_inbound`` cleared); the pipeline's input transport installs its own.

**The decision** is :class:`~appliance.audio.amd.AnsweringMachineDetector` with
:data:`~appliance.audio.amd.TUNED`, fed frame by frame as they arrive. It decides on audio time
(at the latest at ``total_analysis_ms``, 6 s); a wall-clock deadline ``slack_s`` later ends it
as ``unknown`` when the audio stops arriving. ``machine`` returns ``True``; ``human`` and
``unknown`` return ``False``: a live answer, so the AI disclosure starts at once (ADR 0022, "Not
sure counts as live"). Each answered call gets one :class:`~appliance.events.AmdDecided`
record (features and times, never audio): at the decision for a live answer, at the message
cue for a machine.

**The message cue** (:meth:`AnsweringMachineScreen.wait_for_cue`): after ``machine``, the same
detector keeps listening until the beep has ended (plus ``beep_guard_ms``), or the greeting was
followed by ``greeting_end_silence_ms`` of silence, or ``max_message_wait_ms`` after the
answer. The app then speaks the voicemail message through the call's pipeline
(:meth:`~appliance.app.outbound.OutboundService.leave_message`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.audio.amd import (
    TUNED,
    AmdParams,
    AmdResult,
    AnsweringMachineDetector,
    Decision,
    MessageCue,
)
from appliance.audio.bridge import loop_notifier
from appliance.events import AmdDecided, Event
from appliance.media.sip import CallHandle

_LOGGER = logging.getLogger(__name__)

#: Builds a detector for one call: ``(sample_rate) -> detector``.
DetectorFactory = Callable[[int], AnsweringMachineDetector]


@dataclass
class _Screening:
    """One call's detector, between the decision and the message cue."""

    detector: AnsweringMachineDetector
    started: float  # time.monotonic() when listening began (the answer)
    result: AmdResult
    wall_ms: int


class AnsweringMachineScreen:
    """Answering-machine detection for the dialler's answered calls.

    Args:
        vad_path: ``silero_vad.onnx`` in the model store (one ONNX Runtime session per call).
        emit: Event sink; receives one :class:`~appliance.events.AmdDecided` per call.
        params: Detector thresholds (:data:`~appliance.audio.amd.TUNED`).
        slack_s: Wall-clock margin past the detector's own limits (``total_analysis_ms``,
            ``max_message_wait_ms``) before listening stops without audio.
        factory: Builds a call's detector from its sample rate (tests pass a loaded VAD);
            default: a fresh detector on ``vad_path``.
    """

    def __init__(
        self,
        vad_path: Path,
        emit: Callable[[Event], None],
        params: AmdParams = TUNED,
        *,
        slack_s: float = 1.0,
        factory: DetectorFactory | None = None,
    ) -> None:
        self.vad_path = vad_path
        self.emit = emit
        self.params = params
        self.slack_s = slack_s
        self._factory = factory or (lambda rate: AnsweringMachineDetector(vad_path, params, rate))
        self._machines: dict[str, _Screening] = {}

    async def detect(self, handle: CallHandle) -> bool:
        """Listen to the answered call until AMD decides; ``True`` for an answering machine.

        ``human`` and ``unknown`` are ``False`` (a live answer). A detector that cannot be
        built (the VAD file broken, an unsupported bridge rate) or that fails while listening
        makes the answer live too (``unknown``, cause ``no_detector`` or ``error``): the
        callee gets the disclosure and the live conversation, never a machine message by
        mistake.
        """
        started = time.monotonic()
        try:
            detector = await asyncio.to_thread(self._factory, handle.bridge.sample_rate)
        except Exception:  # noqa: BLE001 - no detector: treat the answer as live
            _LOGGER.exception("call %s: no answering-machine detector; live", handle.call_id)
            wall_ms = int((time.monotonic() - started) * 1000)
            self.emit(
                AmdDecided(
                    handle.call_id, decision=str(Decision.UNKNOWN), cause="no_detector",
                    decided_at_ms=0, wall_ms=wall_ms, speech_ms=0, words=0, treated_as="live",
                )
            )  # fmt: skip
            return False
        deadline = started + self.params.total_analysis_ms / 1000 + self.slack_s
        try:
            await self._listen(handle, detector, lambda: detector.result is not None, deadline)
        except Exception:  # noqa: BLE001 - a detector failure must not leave a person unheard
            _LOGGER.exception("call %s: answering-machine detection failed", handle.call_id)
            detector.give_up("error")
        result = detector.result
        if result is None:
            result = detector.give_up("hung_up" if handle.disconnected.is_set() else "no_audio")
        wall_ms = int((time.monotonic() - started) * 1000)
        _LOGGER.info(
            "call %s: AMD %s (%s) at %d ms audio, %d ms wall",
            handle.call_id, result.decision, result.cause, result.decided_at_ms, wall_ms,
        )  # fmt: skip
        if result.decision is Decision.MACHINE:
            self._machines[handle.call_id] = _Screening(detector, started, result, wall_ms)
            return True
        self._record(handle.call_id, result, wall_ms, detector, "live", None)
        return False

    async def wait_for_cue(self, handle: CallHandle) -> MessageCue | None:
        """After ``machine``: listen until the message may start; ``None`` if the call ended.

        Returns once the cue's time has been reached on the call's audio (for a beep,
        ``beep_guard_ms`` after its end). Records the call's ``AmdDecided`` either way.

        Raises:
            KeyError: :meth:`detect` did not find a machine on this call.
        """
        screening = self._machines.pop(handle.call_id)
        detector = screening.detector
        deadline = screening.started + self.params.max_message_wait_ms / 1000 + self.slack_s
        cued = await self._listen(
            handle, detector, lambda: detector.message_cue is not None, deadline
        )
        if not cued and handle.disconnected.is_set():
            self._record(
                handle.call_id, screening.result, screening.wall_ms, detector, "voicemail", None
            )
            return None
        cue = detector.message_cue or detector.cue_now()
        ahead_s = (cue.at_ms - detector.elapsed_ms) / 1000
        if ahead_s > 0:  # the beep guard lies a little past the audio heard so far
            await asyncio.sleep(ahead_s)
        self._record(
            handle.call_id, screening.result, screening.wall_ms, detector, "voicemail", cue
        )
        return cue

    async def _listen(
        self,
        handle: CallHandle,
        detector: AnsweringMachineDetector,
        done: Callable[[], bool],
        deadline: float,
    ) -> bool:
        """Feed the call's inbound frames to ``detector`` until ``done()``.

        Returns ``False`` when the call ended or ``deadline`` (``time.monotonic()``) passed
        first.
        """
        bridge = handle.bridge
        wake = asyncio.Event()
        bridge.on_inbound = loop_notifier(asyncio.get_running_loop(), wake)
        try:
            while True:
                if done():
                    return True
                wake.clear()  # before draining: a frame queued after the drain wakes us
                for pcm in bridge.drain_inbound():
                    detector.feed(pcm)
                    if done():
                        return True
                left = deadline - time.monotonic()
                if handle.disconnected.is_set() or bridge.closed or left <= 0:
                    return False
                try:
                    await asyncio.wait_for(wake.wait(), min(left, 0.1))
                except TimeoutError:
                    pass
        finally:
            bridge.on_inbound = None

    def _record(
        self,
        call_id: str,
        result: AmdResult,
        wall_ms: int,
        detector: AnsweringMachineDetector,
        treated_as: str,
        cue: MessageCue | None,
    ) -> None:
        beeps = detector.beep_detector.beeps
        beep = beeps[0] if beeps else None
        self.emit(
            AmdDecided(
                call_id,
                decision=str(result.decision),
                cause=result.cause,
                decided_at_ms=result.decided_at_ms,
                wall_ms=wall_ms,
                speech_ms=result.speech_ms,
                words=result.words,
                treated_as=treated_as,
                beep_ms=beep.start_ms if beep else None,
                beep_hz=beep.freq_hz if beep else None,
                cue=(cue.cause if cue else "hung_up") if treated_as == "voicemail" else "",
                cue_at_ms=cue.at_ms if cue else None,
            )
        )
