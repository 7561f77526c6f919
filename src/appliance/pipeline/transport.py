"""pipecat transport over a pjsua2 call: an input/output :class:`FrameProcessor` pair.

Input: caller audio arrives from the media thread in 20 ms frames of 16-bit mono PCM at the
bridge clock (16 kHz) and is pushed as :class:`InputAudioRawFrame`; DTMF (RFC 4733 or SIP INFO)
is pushed as :class:`InputDTMFFrame`.

Output: pipecat's :class:`BaseOutputTransport` chunks agent audio into 20 ms pieces
(``audio_out_10ms_chunks=2``); :meth:`PjsuaOutputTransport.write_audio_frame` queues each on
the call's :class:`~appliance.audio.bridge.AudioBridge` and paces the writer so that at most
``lead_ms`` of audio is queued ahead of the wire. Text frames that follow the audio therefore
leave the transport when their audio has (nearly) been played, which is how the assistant
context records only what the caller heard. On :class:`InterruptionFrame` the queued
interruptible audio is dropped, so the wire goes quiet at the next 20 ms tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from appliance.audio.bridge import AudioBridge, loop_notifier


@dataclass
class SipDTMFFrame(InputDTMFFrame):
    """A DTMF digit from the call; ``method`` is ``"rfc4733"`` or ``"sip-info"``."""

    method: str = "rfc4733"


#: Agent audio kept queued ahead of the wire, in ms. Bounds barge-in reaction on our side.
DEFAULT_LEAD_MS = 60


def transport_params(sample_rate: int) -> TransportParams:
    """Transport parameters for a call bridged at ``sample_rate`` Hz (mono, 20 ms chunks)."""
    return TransportParams(
        audio_in_enabled=True,
        audio_in_sample_rate=sample_rate,
        audio_out_enabled=True,
        audio_out_sample_rate=sample_rate,
        audio_out_10ms_chunks=2,
        audio_out_end_silence_secs=0,
    )


class PjsuaInputTransport(BaseInputTransport):
    """Pushes caller audio and DTMF from a call's bridge into the pipeline."""

    def __init__(self, bridge: AudioBridge, params: TransportParams, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self._bridge = bridge
        self._wakeup = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None

    async def start(self, frame: StartFrame) -> None:
        """Start pumping bridge audio into the pipeline."""
        await super().start(frame)
        self._bridge.on_inbound = loop_notifier(asyncio.get_running_loop(), self._wakeup)
        if self._pump_task is None:
            self._pump_task = self.create_task(self._pump())
        await self.set_transport_ready(frame)

    async def stop(self, frame: EndFrame) -> None:
        """Stop pumping."""
        await self._stop_pump()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop pumping immediately."""
        await self._stop_pump()
        await super().cancel(frame)

    async def _stop_pump(self) -> None:
        self._bridge.on_inbound = None
        if self._pump_task is not None:
            await self.cancel_task(self._pump_task)
            self._pump_task = None

    async def _pump(self) -> None:
        rate = self._bridge.sample_rate
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            for pcm in self._bridge.drain_inbound():
                await self.push_audio_frame(
                    InputAudioRawFrame(audio=pcm, sample_rate=rate, num_channels=1)
                )

    async def push_dtmf(self, digit: str, method: str) -> None:
        """Push one DTMF digit (``0-9``, ``*``, ``#``) as a :class:`SipDTMFFrame`.

        Unknown symbols (e.g. ``A``-``D``) are ignored.
        """
        try:
            entry = KeypadEntry(digit)
        except ValueError:
            return
        await self.push_frame(SipDTMFFrame(button=entry, method=method))


class PjsuaOutputTransport(BaseOutputTransport):
    """Writes agent audio to a call's bridge, paced to the wire, cleared on barge-in.

    Args:
        bridge: The call's audio bridge.
        params: Transport parameters (see :func:`transport_params`).
        lead_ms: Audio kept queued ahead of the wire, in ms.
        on_cleared: Called with the dropped audio in ms when a barge-in clears the queue.
    """

    def __init__(
        self,
        bridge: AudioBridge,
        params: TransportParams,
        *,
        lead_ms: int = DEFAULT_LEAD_MS,
        on_cleared: Callable[[float], None] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(params, **kwargs)
        self._bridge = bridge
        self._lead_ms = lead_ms
        self._on_cleared = on_cleared
        self.last_clear_at: float | None = None

    async def start(self, frame: StartFrame) -> None:
        """Start the output."""
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Clear queued interruptible audio first on an interruption, then let pipecat run."""
        if isinstance(frame, InterruptionFrame):
            dropped = self._bridge.clear_interruptible()
            self.last_clear_at = time.monotonic()
            if self._on_cleared is not None:
                self._on_cleared(dropped)
        await super().process_frame(frame, direction)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Queue one chunk of agent audio and wait until the wire has caught up."""
        if self._bridge.closed:
            return False
        self._bridge.put_outbound(frame.audio, interruptible=frame.interruptible)
        # Paced by the media clock thread, which does not wake asyncio per frame.
        while self._bridge.queued_ms > self._lead_ms and not self._bridge.closed:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return True


class PjsuaTransport(BaseTransport):
    """The input/output pair for one call."""

    def __init__(
        self,
        bridge: AudioBridge,
        *,
        on_cleared: Callable[[float], None] | None = None,
        lead_ms: int = DEFAULT_LEAD_MS,
    ) -> None:
        super().__init__()
        params = transport_params(bridge.sample_rate)
        self._input = PjsuaInputTransport(bridge, params, name="pjsua-in")
        self._output = PjsuaOutputTransport(
            bridge, params, lead_ms=lead_ms, on_cleared=on_cleared, name="pjsua-out"
        )

    def input(self) -> PjsuaInputTransport:
        """The input processor."""
        return self._input

    def output(self) -> PjsuaOutputTransport:
        """The output processor."""
        return self._output
