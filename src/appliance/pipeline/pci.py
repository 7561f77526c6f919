"""PCI DTMF pause: card data goes to the payment handler and nowhere else.

A prompt-level instruction is not a control (PCI DSS v4.0 req. 3.3: sensitive authentication
data must not be stored; SECURITY.md): this processor sits directly after the transport input,
before the STT, and while a pause is active

* caller audio is replaced by silence of the same length, so nothing the caller says (or the
  keypad tones leaking into the audio) reaches the STT, the transcript or the LLM;
* RFC 4733 / SIP INFO digits are swallowed here: no :class:`InputDTMFFrame` travels further,
  so no ``DtmfReceived`` event, log line or audit record ever holds them;
* the pause collects three entries in turn, each on the keypad: the card number (PAN), ended
  by ``#`` or ``digits_max`` digits; the expiry date (``MMYY``), ended by ``#`` or its 4th
  digit; the card security code (CVV/CVC, 3-4 digits), ended by ``#`` or its 4th digit. The
  expiry and code entries are asked for with a spoken prompt (a :class:`TTSSpeakFrame`; a
  ``#`` typed right after an entry that ended by its count is ignored, not taken as an empty
  entry). ``*`` starts the current entry over. Each entry has ``timeout_s`` seconds; when it
  runs out, the pause ends with what was typed;
* the three are handed to a :class:`~appliance.pipeline.payments.PaymentHandler` together
  (with the pause's opaque hand-off id) as one :class:`~appliance.pipeline.payments.CardEntry`.
  Only the PAN's digit count and a fixed outcome name are emitted
  (:class:`~appliance.events.PciPause`).

The appliance does not record calls; were recording added, it must take its audio after this
processor to stay muted too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import Frame, InputAudioRawFrame, InputDTMFFrame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.events import Event, PciPause
from appliance.pipeline.payments import CardEntry, PaymentHandler, PaymentResult

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PciPrompts:
    """What the pause says before the expiry and the security-code entries."""

    expiry: str = (
        "Thank you. Now key in the expiry date as four digits, the month and then the year."
    )
    cvv: str = "And now the three or four digit security code from the card, then the pound key."


#: Most digits of the expiry (``MMYY``) and security-code entries; the card number's is the
#: pause's ``digits_max``.
_EXPIRY_DIGITS = 4
_CVV_DIGITS = 4


class PciGate(FrameProcessor):
    """Keeps caller audio and keypad digits away from everything downstream during a pause.

    Args:
        call_id: Opaque call id for events.
        emit: Event sink (receives only :class:`PciPause`, never digits).
        handler: Where the card number, expiry and security code go.
        prompts: The spoken prompts for the expiry and security-code entries.
    """

    def __init__(
        self,
        call_id: str,
        emit: Callable[[Event], None],
        handler: PaymentHandler,
        prompts: PciPrompts | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._call_id = call_id
        self._emit = emit
        self._handler = handler
        self._prompts = prompts or PciPrompts()
        self._active = False
        #: The entries typed so far: PAN, expiry, security code (the last one is current).
        self._entries: list[list[str]] = []
        self._skip_hash = False
        self._max = 19
        self._timeout_s = 30.0
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
            digits_max: The card-number entry ends by itself after this many digits.
            timeout_s: Each entry (card number, expiry, security code) ends the pause by
                itself after this many seconds without being completed.
            handoff_id: Opaque, non-PHI id sent to the payment handler with the card data;
                ``""`` mints a fresh one (16 hex digits, like transfer hand-off ids).

        Returns:
            The hand-off id of this pause.
        """
        if self._timer is not None:
            self._timer.cancel()
        self._active = True
        self._entries = [[]]
        self._skip_hash = False
        self._max = digits_max
        self._timeout_s = timeout_s
        self._handoff_id = handoff_id or uuid.uuid4().hex[:16]
        self._on_done = on_done
        self._emit(PciPause(self._call_id, active=True, handoff_id=self._handoff_id))
        self._arm_timer()
        return self._handoff_id

    def _arm_timer(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().create_task(self._timeout(self._timeout_s))

    async def _timeout(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self._active:
            await self._finish()

    async def _next_entry(self) -> None:
        """The current entry is complete: ask for the next one, or hand the card off."""
        if len(self._entries) == 3:
            await self._finish()
            return
        self._entries.append([])
        self._arm_timer()
        text = self._prompts.expiry if len(self._entries) == 2 else self._prompts.cvv
        await self.push_frame(TTSSpeakFrame(text), FrameDirection.DOWNSTREAM)

    async def _finish(self) -> None:
        self._active = False
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None
        entries = ["".join(e) for e in self._entries] + ["", "", ""]
        card = CardEntry(pan=entries[0], expiry=entries[1], cvv=entries[2])
        self._entries = []
        count = len(card.pan)
        # This pause's id and callback: a new pause may start while the handler is awaited.
        handoff_id, on_done = self._handoff_id, self._on_done
        try:
            result = await self._handler.handle(card, handoff_id) if count else None
        except Exception as exc:  # noqa: BLE001 - a failing processor falls back to staff
            # The exception's type only: its message or traceback could quote the digits.
            _LOGGER.error("call %s: payment handler failed (%s)", self._call_id, type(exc).__name__)
            result = PaymentResult(False, "handler_error")
        del card
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
        self._entries = []

    async def _key(self, digit: str) -> None:
        """One key of the pause: into the current entry; ``#`` ends it, ``*`` clears it."""
        current = self._entries[-1]
        skip_hash, self._skip_hash = self._skip_hash, False
        if digit == "#":
            if current:
                await self._next_entry()
            elif len(self._entries) == 1:
                await self._finish()  # no card number at all
            elif not skip_hash:
                await self._next_entry()  # an empty expiry or code: the handler decides
        elif digit == "*":
            current.clear()
        elif digit.isdigit():
            current.append(digit)
            limit = (self._max, _EXPIRY_DIGITS, _CVV_DIGITS)[len(self._entries) - 1]
            if len(current) >= limit:
                self._skip_hash = True
                await self._next_entry()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass frames on, except caller audio (silenced) and digits (kept) during a pause."""
        await super().process_frame(frame, direction)
        if self._active and direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, InputDTMFFrame):
                await self._key(str(frame.button.value))
                return
            if isinstance(frame, InputAudioRawFrame):
                frame = InputAudioRawFrame(
                    audio=bytes(len(frame.audio)),
                    sample_rate=frame.sample_rate,
                    num_channels=frame.num_channels,
                )
        await self.push_frame(frame, direction)
