"""The receptionist processor: templated answers first, the LLM for everything else.

Sits between the user context aggregator and the LLM service. For each completed caller turn
(an :class:`LLMContextFrame`) it emits :class:`~appliance.events.TurnEnded`, then either answers
from :mod:`appliance.agent.templates` (pushing the reply as one LLM response, so the TTS and
the assistant aggregator treat it exactly like generated text) or passes the context on to the
LLM. Follow-up actions (transfer, hang up) run once the reply has been played in full.
"""

from __future__ import annotations

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
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.agent.templates import Action, match
from appliance.config.settings import ClinicSettings
from appliance.events import DtmfReceived, Event, TurnEnded

_LOGGER = logging.getLogger(__name__)


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
    """Routes each caller turn to a template or to the LLM.

    Args:
        call_id: Opaque call id for events.
        clinic: Facts for the templates.
        emit: Event sink (the call's event bus).
        on_action: Awaited with the follow-up :class:`Action` after its reply was played.
        templates_enabled: Turn templates off to send every turn to the LLM.
    """

    def __init__(
        self,
        call_id: str,
        clinic: ClinicSettings,
        emit: Callable[[Event], None],
        on_action: Callable[[Action], Awaitable[None]],
        *,
        templates_enabled: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._call_id = call_id
        self._clinic = clinic
        self._emit = emit
        self._on_action = on_action
        self._templates = templates_enabled
        self._pending: Action | None = None
        self._pending_started = False
        self.last_source = "opening"
        self.last_intent: str | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Handle caller turns and the bot-speaking edges that trigger follow-up actions."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._handle_turn(frame)
            return
        if isinstance(frame, InputDTMFFrame):
            method = str(getattr(frame, "method", "unknown"))
            self._emit(DtmfReceived(self._call_id, digit=frame.button.value, method=method))
        elif isinstance(frame, InterruptionFrame):
            self._pending_started = False  # the reply was cut: re-arm for its next playout
        elif isinstance(frame, BotStartedSpeakingFrame) and self._pending is not None:
            self._pending_started = True
        elif isinstance(frame, BotStoppedSpeakingFrame) and self._pending_started:
            action, self._pending, self._pending_started = self._pending, None, False
            if action is not None and action is not Action.CONTINUE:
                await self.push_frame(frame, direction)
                await self._on_action(action)
                return
        await self.push_frame(frame, direction)

    async def _handle_turn(self, frame: LLMContextFrame) -> None:
        text = last_user_text(list(frame.context.get_messages()))
        self._emit(TurnEnded(self._call_id, user_text=text))
        answer = match(text, self._clinic) if self._templates else None
        if answer is None:
            self.last_source, self.last_intent = "llm", None
            await self.push_frame(frame, FrameDirection.DOWNSTREAM)
            return
        _LOGGER.info("call %s: templated answer (intent %s)", self._call_id, answer.intent)
        self.last_source, self.last_intent = "template", answer.intent
        self._pending = answer.action
        self._pending_started = False
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(answer.text))
        await self.push_frame(LLMFullResponseEndFrame())
