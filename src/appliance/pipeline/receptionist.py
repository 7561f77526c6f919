"""The receptionist processor: the dialogue manager's voice in the pipeline.

Sits between the user context aggregator and the LLM service (pipecat glue, so it lives in
the pipeline plane; the dialogue itself is :mod:`appliance.agent.dialog`). For each completed
caller turn (an :class:`LLMContextFrame`) it emits :class:`~appliance.events.TurnEnded`, asks the
:class:`~appliance.agent.dialog.DialogManager` for a reply and pushes the reply as one LLM
response (so the TTS and the assistant aggregator treat it like generated text). Only when the
dialogue hands an off-script turn to the LLM (``llm_off_script``) does the context go on to it.

Card data never gets past this point (PCI DSS v4.0 req. 3.3): each caller turn passes through
:func:`~appliance.policy.redaction.redact_card` before anything keeps or reads it, so the
``TurnEnded`` record, the dialogue (and with it slots, messages and tool arguments) and the
LLM context (its last user message is replaced) hold ``[PAN]``, ``[SAD]`` and ``[EXPIRY]``
instead; once a turn talked about a card, later turns are read in that card context. A key
pressed while the dialogue asks for digits (a digit slot) is recorded with its digit; any
other key only as a count (``DtmfReceived(digit="", in_slot=False, count=n)``).

Follow-up actions (transfer, hang up) run once the reply has been played in full; a PCI pause
starts at once, so digits typed during the prompt are already kept from the pipeline.

The dialogue runs off the event loop, on one worker thread per call (:meth:`Receptionist.ask`):
intent embeddings, ``dateparser`` and calendar queries take tens of milliseconds, and on the
loop they would delay every other call's audio. One thread keeps the call's dialogue calls in
order; the server's calls (transfer and PCI results) go through the same worker.

Caller silence: with ``idle_timeout_s`` set, a timer starts whenever the agent stops speaking
(``BotStoppedSpeakingFrame``; so never during the disclosure or any other utterance) and the
dialogue waits for the caller (not during a transfer or a PCI pause). Caller speech
(``UserStartedSpeakingFrame``, a turn) or a key press stops it and clears the count. When it
runs out, :meth:`~appliance.agent.dialog.DialogManager.caller_silent` gives the reply: first
"Are you still there?" with the pending question, then, after another silent
``idle_timeout_s``, a goodbye that hangs up (and records the outcome ``caller_silent``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputDTMFFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.agent.dialog import DialogManager, Next, Reply
from appliance.events import DtmfReceived, Event, TurnEnded
from appliance.policy.redaction import redact_card
from appliance.text import message_text

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Seconds after the last keyed digit before the entry is taken as complete (the usual IVR
#: inter-digit timeout); ``#`` or the expected count end it sooner.
INTERDIGIT_TIMEOUT_S = 4.0


def replace_last_user_text(messages: list[Any], text: str) -> list[Any]:
    """A copy of ``messages`` whose last ``user`` message holds ``text`` (none: as is)."""
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        message = out[i]
        if isinstance(message, dict) and message.get("role") == "user":
            out[i] = {**message, "content": text}
            break
    return out


def last_user_text(messages: list[Any]) -> str:
    """Return the text of the last ``user`` message of an OpenAI-style message list."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str | list):
                return message_text(content)
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
        stt_language: Returns the last transcript's language guess and its probability 0..1
            (``(None, 0.0)`` when the STT does not identify languages).
        idle_timeout_s: Seconds of caller silence after the agent finished speaking before the
            dialogue re-prompts (and, after as long again, hangs up); ``None`` or ``0``: never.
        turn_text: Called once per caller turn; returns the STT's whole-turn transcript when
            the turn was cut into segments and decoded again as a whole
            (:meth:`~appliance.pipeline.services.LocalWhisperSTTService.take_turn_text`), which
            then replaces the joined segment transcripts in the context; ``None`` otherwise.
    """

    def __init__(
        self,
        call_id: str,
        dialog: DialogManager,
        emit: Callable[[Event], None],
        on_after: Callable[[Reply], Awaitable[None]],
        stt_confidence: Callable[[], float | None] = lambda: None,
        stt_language: Callable[[], tuple[str | None, float]] = lambda: (None, 0.0),
        idle_timeout_s: float | None = None,
        turn_text: Callable[[], str | None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._call_id = call_id
        self._dialog = dialog
        self._emit = emit
        self._on_after = on_after
        self._stt_confidence = stt_confidence
        self._stt_language = stt_language
        self._turn_text = turn_text
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dialog")
        self._worker_closed = False
        self._pending: Reply | None = None
        self._pending_started = False
        self.last_source = "opening"
        self.last_intent: str | None = None
        self._digit_timer: asyncio.Task[None] | None = None
        self._idle_timeout_s = idle_timeout_s if idle_timeout_s and idle_timeout_s > 0 else None
        self._idle_timer: asyncio.Task[None] | None = None
        self._silences = 0
        self._bot_speaking = False
        self._user_speaking = False
        self._ended = False
        #: An earlier turn talked about a card (see :func:`redact_card`).
        self._card_context = False
        #: Keys pressed outside a digit slot (recorded as a count only).
        self._keys_outside = 0

    @property
    def dialog(self) -> DialogManager:
        """The call's dialogue manager."""
        return self._dialog

    async def ask(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` (a dialogue call) on the call's dialogue worker.

        Calls run one at a time, in the order they were made, off the event loop. After the
        pipeline has ended (the worker is shut down) the call runs inline.
        """
        call = functools.partial(fn, *args, **kwargs)
        if self._worker_closed:
            return call()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, call)

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
                await self._after(reply)
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
        """Handle caller turns, keypad digits, speaking edges (follow-ups, the idle timer)."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._caller_active()
            await self._handle_turn(frame)
            return
        if isinstance(frame, InputDTMFFrame):
            await self._caller_active()
            method = str(getattr(frame, "method", "unknown"))
            digit = str(frame.button.value)
            if await self.ask(lambda: self._dialog.expects_dtmf):
                self._emit(DtmfReceived(self._call_id, digit=digit, method=method))
            else:  # not asked for: only a count goes on the record (it may be card digits)
                self._keys_outside += 1
                self._emit(
                    DtmfReceived(
                        self._call_id,
                        digit="",
                        method=method,
                        in_slot=False,
                        count=self._keys_outside,
                    )
                )
            reply = await self.ask(self._dialog.handle_dtmf, digit)
            await self.push_frame(frame, direction)
            self._arm_interdigit()
            if reply is not None:
                await self.speak(reply)
            else:
                self._arm_idle()  # still keying: the silence counts from the last key
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_speaking = True
            await self._caller_active()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_speaking = False
            self._arm_idle()  # a turn and its reply normally follow and stop it again
        elif isinstance(frame, StartFrame):
            self._ended = self._bot_speaking = self._user_speaking = False
        elif isinstance(frame, EndFrame | CancelFrame):
            self._ended = True
            await self._cancel_idle()
        if isinstance(frame, InterruptionFrame) and self._pending is None:
            self._pending_started = False
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            await self._cancel_idle()
            if self._pending is not None:
                self._pending_started = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            if self._pending_started:
                reply, self._pending, self._pending_started = self._pending, None, False
                await self.push_frame(frame, direction)
                if reply is not None:
                    await self._after(reply)
                return
            self._arm_idle()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        """Stop the inter-digit and idle timers with the pipeline."""
        await super().cleanup()  # type: ignore[no-untyped-call]
        self._ended = True
        self._worker_closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)
        await self._cancel_idle()
        if self._digit_timer is not None:
            await self.cancel_task(self._digit_timer)
            self._digit_timer = None

    async def _after(self, reply: Reply) -> None:
        if reply.next is Next.HANGUP:
            self._ended = True
            await self._cancel_idle()
        await self._on_after(reply)

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
        reply = await self.ask(self._dialog.flush_dtmf)
        if reply is not None:
            await self.speak(reply)

    # ------------------------------------------------------------------ caller silence

    def _may_idle(self) -> bool:
        """Whether silence now is the caller's: nobody speaks, nothing pending, dialogue waits."""
        return (
            self._idle_timeout_s is not None
            and not self._ended
            and self._pending is None
            and not self._bot_speaking
            and not self._user_speaking
            and self._dialog.waits_for_caller
            and not self._dialog.digits_pending
        )

    def _arm_idle(self) -> None:
        """(Re)start the idle timer if the caller is the one expected to speak."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._may_idle():
            self._idle_timer = self.create_task(self._idle())

    async def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            task, self._idle_timer = self._idle_timer, None
            await self.cancel_task(task)

    async def _caller_active(self) -> None:
        """The caller spoke or pressed a key: stop the idle timer and clear the silence count."""
        self._silences = 0
        await self._cancel_idle()

    async def _idle(self) -> None:
        assert self._idle_timeout_s is not None
        await asyncio.sleep(self._idle_timeout_s)
        self._idle_timer = None
        if not self._may_idle():
            return
        self._silences = n = self._silences + 1
        _LOGGER.info(
            "call %s: caller silent after the agent spoke (%d)", self._call_id, self._silences
        )
        reply = await self.ask(self._dialog.caller_silent, n)
        await self.speak(reply)

    async def _handle_turn(self, frame: LLMContextFrame) -> None:
        messages = list(frame.context.get_messages())
        heard = last_user_text(messages)
        text = self._turn_text() or heard
        # Card data out before anything keeps or reads the turn: the audit record, the
        # dialogue (slots, messages, tool arguments) and the LLM context.
        card = redact_card(text, card_context=self._card_context)
        self._card_context = card.card_context
        text = card.text
        if card.kinds:
            _LOGGER.info(
                "call %s: card data removed from a caller turn (%s)",
                self._call_id,
                ", ".join(sorted(card.kinds)),
            )
        if text != heard:
            frame.context.set_messages(replace_last_user_text(messages, text))
        self._emit(TurnEnded(self._call_id, user_text=text))
        confidence = self._stt_confidence()
        language, probability = self._stt_language()
        kwargs: dict[str, Any] = {}
        if language is not None:
            kwargs = {"language": language, "language_probability": probability}
        reply = await self.ask(
            self._dialog.handle_turn, text, 1.0 if confidence is None else confidence, **kwargs
        )
        if reply.use_llm:
            self.last_source, self.last_intent = "llm", None
            await self.push_frame(frame, FrameDirection.DOWNSTREAM)
            return
        self.last_intent = self._dialog.main_intent or None
        await self.speak(reply)
        if not reply.text:
            self._arm_idle()  # nothing to say: the caller's turn again
