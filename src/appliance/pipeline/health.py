"""Stage health: a failing STT, LLM or TTS hands the caller to a person.

An observer (never a pipeline stage) watches for :class:`ErrorFrame`. The first model failure
of a call (our services' own error codes, or a fatal error) names the failing stage by the
processor that pushed it (``STT``, ``LLM``, ``TTS``) and calls ``on_failure(stage)`` once. The
server then escalates with ``stage_failure``; the hold prompt is pre-rendered, so it plays even
when the TTS is the stage that failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from pipecat.frames.frames import ErrorFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed

_LOGGER = logging.getLogger(__name__)

#: Error texts our services push when their model fails (see pipeline.services).
STAGE_ERRORS = ("stt failed", "tts failed", "llm generation failed")

#: Processor names of the stages whose failure escalates (see pipeline.builder).
STAGES = {"STT": "stt", "LLM": "llm", "TTS": "tts"}


class StageHealthObserver(BaseObserver):
    """Calls ``on_failure(stage)`` for the first error a model stage reports in a call.

    Args:
        call_id: Opaque call id for logs.
        on_failure: Awaited with ``"stt"``, ``"llm"`` or ``"tts"``.
    """

    def __init__(
        self, call_id: str, on_failure: Callable[[str], Coroutine[Any, Any, None]]
    ) -> None:
        super().__init__()
        self._call_id = call_id
        self._on_failure = on_failure
        self.failed: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        """Look for the first stage error."""
        if self.failed is not None or not isinstance(data.frame, ErrorFrame):
            return
        error = str(getattr(data.frame, "error", ""))
        if not (getattr(data.frame, "fatal", False) or error.startswith(STAGE_ERRORS)):
            # pipecat also reports soft conditions as errors (a TTS context that ended with no
            # audio after a barge-in): those do not mean a model is down.
            return
        name = getattr(data.source, "name", "")
        stage = next((v for k, v in STAGES.items() if name.startswith(k)), None)
        if stage is None:
            return
        self.failed = stage
        _LOGGER.error("call %s: %s stage failed, escalating to staff", self._call_id, stage)
        task = asyncio.get_running_loop().create_task(self._on_failure(stage))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
