"""PCI DTMF pause: card digits go to the payment handler and nowhere else.

A prompt-level instruction is not a control (PCI DSS v4.0 req. 3.3: sensitive authentication
data must not be stored; SECURITY.md): this processor sits directly after the transport input,
before the STT, and while a pause is active

* caller audio is replaced by silence of the same length, so nothing the caller says (or the
  keypad tones leaking into the audio) reaches the STT, the transcript or the LLM;
* RFC 4733 / SIP INFO digits are swallowed here: no :class:`InputDTMFFrame` travels further,
  so no ``DtmfReceived`` event, log line or audit record ever holds them;
* the digits are handed to a :class:`PaymentHandler` when ``#`` is pressed, the maximum count
  is reached, or the timeout expires. Only the count and a fixed outcome name are emitted
  (:class:`~appliance.events.PciPause`).

The appliance does not record calls; were recording added, it must take its audio after this
processor to stay muted too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pipecat.frames.frames import Frame, InputAudioRawFrame, InputDTMFFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.events import Event, PciPause
from appliance.pipeline.payments import PaymentHandler, PaymentResult

_LOGGER = logging.getLogger(__name__)


class PciGate(FrameProcessor):
    """Keeps caller audio and keypad digits away from everything downstream during a pause.

    Args:
        call_id: Opaque call id for events.
        emit: Event sink (receives only :class:`PciPause`, never digits).
        handler: Where the card number goes.
    """

    def __init__(
        self,
        call_id: str,
        emit: Callable[[Event], None],
        handler: PaymentHandler,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self._call_id = call_id
        self._emit = emit
        self._handler = handler
        self._active = False
        self._digits: list[str] = []
        self._max = 19
        self._handoff_id = ""
        self._on_done: Callable[[bool], Awaitable[None]] | None = None
        self._timer: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Whether a pause is in progress."""
        return self._active

    def start(
        self,
        on_done: Callable[[bool], Awaitable[None]],
        *,
        digits_max: int = 19,
        timeout_s: float = 30.0,
        handoff_id: str = "",
    ) -> None:
        """Begin a pause; ``on_done(ok)`` is awaited when it ends (digits never passed)."""
        self._active = True
        self._digits = []
        self._max = digits_max
        self._handoff_id = handoff_id
        self._on_done = on_done
        self._emit(PciPause(self._call_id, active=True))
        self._timer = asyncio.get_running_loop().create_task(self._timeout(timeout_s))

    async def _timeout(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self._active:
            await self._finish()

    async def _finish(self) -> None:
        self._active = False
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        pan = "".join(self._digits)
        count = len(self._digits)
        self._digits = []
        try:
            result = await self._handler.handle(pan, self._handoff_id) if count else None
        except Exception:  # noqa: BLE001 - a failing processor falls back to staff
            _LOGGER.exception("call %s: payment handler failed", self._call_id)
            result = PaymentResult(False, "handler_error")
        del pan
        outcome = result.outcome if result else "no_digits"
        self._emit(PciPause(self._call_id, active=False, digits=count, outcome=outcome))
        _LOGGER.info("call %s: PCI pause ended (%s)", self._call_id, outcome)
        if self._on_done is not None:
            await self._on_done(bool(result and result.ok))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass frames on, except caller audio (silenced) and digits (kept) during a pause."""
        await super().process_frame(frame, direction)
        if self._active and direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InputDTMFFrame):
                digit = str(frame.button.value)
                if digit == "#":
                    await self._finish()
                elif digit == "*":
                    self._digits = []
                elif digit.isdigit():
                    self._digits.append(digit)
                    if len(self._digits) >= self._max:
                        await self._finish()
                return
            if isinstance(frame, InputAudioRawFrame):
                frame = InputAudioRawFrame(
                    audio=bytes(len(frame.audio)),
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                )
        await self.push_frame(frame, direction)
