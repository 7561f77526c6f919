"""PCI DTMF pause: card digits go to the payment handler and nowhere else.

A prompt-level instruction is not a control (PCI DSS v4.0 req. 3.3: sensitive authentication
data must not be stored; SECURITY.md): this processor sits directly after the transport input,
before the STT, and while a pause is active

* caller audio is replaced by silence of the same length, so nothing the caller says (or the
  keypad tones leaking into the audio) reaches the STT, the transcript or the LLM;
* RFC 4733 / SIP INFO digits are swallowed here: no :class:`InputDTMFFrame` travels further,
  so no ``DtmfReceived`` event, log line or audit record ever holds them;
* the digits are handed to a :class:`~appliance.pipeline.payments.PaymentHandler` (with the
  pause's opaque hand-off id) when ``#`` is pressed, the maximum count is reached, or the
  timeout expires; ``*`` starts the entry over. Only the count and a fixed outcome name are
  emitted (:class:`~appliance.events.PciPause`).

The appliance does not record calls; were recording added, it must take its audio after this
processor to stay muted too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

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
        **kwargs: Any,
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

    @property
    def handoff_id(self) -> str:
        """The hand-off id of the current (or last) pause; ``""`` before the first."""
        return self._handoff_id

    def start(
        self,
        on_done: Callable[[bool], Awaitable[None]],
        *,
        digits_max: int = 19,
        timeout_s: float = 30.0,
        handoff_id: str = "",
    ) -> str:
        """Begin a pause; ``on_done(ok)`` is awaited when it ends (digits never passed).

        Must be called from the event loop. A pause already in progress is replaced (its
        digits are dropped, its timer cancelled).

        Args:
            on_done: Awaited with ``True`` when the payment handler accepted the card.
            digits_max: The pause ends by itself after this many digits.
            timeout_s: The pause ends by itself after this many seconds.
            handoff_id: Opaque, non-PHI id sent to the payment handler with the card number;
                ``""`` mints a fresh one (16 hex digits, like transfer hand-off ids).

        Returns:
            The hand-off id of this pause.
        """
        if self._timer is not None:
            self._timer.cancel()
        self._active = True
        self._digits = []
        self._max = digits_max
        self._handoff_id = handoff_id or uuid.uuid4().hex[:16]
        self._on_done = on_done
        self._emit(PciPause(self._call_id, active=True, handoff_id=self._handoff_id))
        self._timer = asyncio.get_running_loop().create_task(self._timeout(timeout_s))
        return self._handoff_id

    async def _timeout(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self._active:
            await self._finish()

    async def _finish(self) -> None:
        self._active = False
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None
        pan = "".join(self._digits)
        count = len(self._digits)
        self._digits = []
        # This pause's id and callback: a new pause may start while the handler is awaited.
        handoff_id, on_done = self._handoff_id, self._on_done
        try:
            result = await self._handler.handle(pan, handoff_id) if count else None
        except Exception as exc:  # noqa: BLE001 - a failing processor falls back to staff
            # The exception's type only: its message or traceback could quote the digits.
            _LOGGER.error("call %s: payment handler failed (%s)", self._call_id, type(exc).__name__)
            result = PaymentResult(False, "handler_error")
        del pan
        outcome = result.outcome if result else "no_digits"
        self._emit(PciPause(self._call_id, active=False, digits=count, outcome=outcome))
        _LOGGER.info("call %s: PCI pause %s ended (%s)", self._call_id, handoff_id, outcome)
        if on_done is not None:
            await on_done(bool(result and result.ok))

    async def cleanup(self) -> None:
        """Drop a pause still in progress when the call ends (its digits go nowhere)."""
        await super().cleanup()  # type: ignore[no-untyped-call]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._active = False
        self._digits = []

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
