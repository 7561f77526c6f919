"""The receptionist processor: the dialogue manager's voice in the pipeline.

Sits between the user context aggregator and the LLM service. For each completed caller turn
(an :class:`LLMContextFrame`) it emits :class:`~appliance.events.TurnEnded`, asks the
:class:`~appliance.agent.dialog.DialogManager` for a reply and pushes the reply as one LLM
response (so the TTS and the assistant aggregator treat it like generated text). Only when the
dialogue hands an off-script turn to the LLM (``llm_off_script``) does the context go on to it.

Follow-up actions (transfer, hang up) run once the reply has been played in full; a PCI pause
starts at once, so digits typed during the prompt are already kept from the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputDTMFFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.agent.dialog import DialogManager, Next, Reply
from appliance.events import DtmfReceived, Event, TurnEnded

_LOGGER = logging.getLogger(__name__)

#: Seconds after the last keyed digit before the entry is taken as complete (the usual IVR
#: inter-digit timeout); ``#`` or the expected count end it sooner.
INTERDIGIT_TIMEOUT_S = 4.0


def last_user_text(messages: list[Any]) -> str:
    """Return the text of the last ``user`` message of an OpenAI-style message list."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class Receptionist(FrameProcessor):
    """Routes each caller turn through the dialogue manager.

    Args:
        call_id: Opaque call id for events.
        dialog: The call's dialogue manager.
        emit: Event sink (the call's event bus).
        on_after: Awaited with a :class:`Reply` whose ``next`` is not ``CONTINUE``: after it was
            played (transfer, hang up), or at once (PCI pause).
        stt_confidence: Returns the last transcript's confidence 0..1 (or ``None``).
    """

    def __init__(
        self,
        call_id: str,
        dialog: DialogManager,
        emit: Callable[[Event], None],
        on_after: Callable[[Reply], Awaitable[None]],
        stt_confidence: Callable[[], float | None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._call_id = call_id
        self._dialog = dialog
        self._emit = emit
        self._on_after = on_after
        self._stt_confidence = stt_confidence
        self._pending: Reply | None = None
        self._pending_started = False
        self.last_source = "opening"
        self.last_intent: str | None = None
        self._digit_timer: asyncio.Task[None] | None = None

    @property
    def dialog(self) -> DialogManager:
        """The call's dialogue manager."""
        return self._dialog

    async def speak(self, reply: Reply) -> None:
        """Say ``reply`` now and arm its follow-up action (also used by the server).

        A reply that ends in a transfer or a hang-up is spoken uninterruptibly (the hold prompt,
        the goodbye): talking over it must not cancel the action it announces.
        """
        self.last_source = reply.source
        if reply.next is Next.PCI:
            await self._on_after(reply)
        elif reply.next is not Next.CONTINUE:
            if not reply.text:
                await self._on_after(reply)
                return
            self._pending = reply
            self._pending_started = False
            # One frame, so the whole text is one bot-speaking span and the action waits for
            # its end (per-sentence frames would end the span after the first sentence).
            speak = TTSSpeakFrame(reply.text)
            speak.interruptible = False
            await self.push_frame(speak)
            return
        if not reply.text:
            return
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(reply.text))
        await self.push_frame(LLMFullResponseEndFrame())

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Handle caller turns, keypad digits and the bot-speaking edges of follow-ups."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._handle_turn(frame)
            return
        if isinstance(frame, InputDTMFFrame):
            method = str(getattr(frame, "method", "unknown"))
            digit = str(frame.button.value)
            self._emit(DtmfReceived(self._call_id, digit=digit, method=method))
            reply = self._dialog.handle_dtmf(digit)
            await self.push_frame(frame, direction)
            self._arm_interdigit()
            if reply is not None:
                await self.speak(reply)
            return
        if isinstance(frame, InterruptionFrame) and self._pending is None:
            self._pending_started = False
        elif isinstance(frame, BotStartedSpeakingFrame) and self._pending is not None:
            self._pending_started = True
        elif isinstance(frame, BotStoppedSpeakingFrame) and self._pending_started:
            reply, self._pending, self._pending_started = self._pending, None, False
            await self.push_frame(frame, direction)
            if reply is not None:
                await self._on_after(reply)
            return
        await self.push_frame(frame, direction)

    def _arm_interdigit(self) -> None:
        """(Re)start the inter-digit timeout while keyed digits wait for ``#`` or the count."""
        if self._digit_timer is not None:
            self._digit_timer.cancel()
            self._digit_timer = None
        if self._dialog.digits_pending:
            self._digit_timer = self.create_task(self._interdigit())

    async def _interdigit(self) -> None:
        await asyncio.sleep(INTERDIGIT_TIMEOUT_S)
        self._digit_timer = None
        reply = self._dialog.flush_dtmf()
        if reply is not None:
            await self.speak(reply)

    async def _handle_turn(self, frame: LLMContextFrame) -> None:
        text = last_user_text(list(frame.context.get_messages()))
        self._emit(TurnEnded(self._call_id, user_text=text))
        confidence = self._stt_confidence()
        reply = self._dialog.handle_turn(text, 1.0 if confidence is None else confidence)
        if reply.use_llm:
            self.last_source, self.last_intent = "llm", None
            await self.push_frame(frame, FrameDirection.DOWNSTREAM)
            return
        self.last_intent = self._dialog.main_intent or None
        await self.speak(reply)
