"""AI disclosure: the first utterance of every call, played in full before anything else.

Enforced by code, not by prompt, in three places:

1. :class:`DisclosureOpener` queues the disclosure as a :class:`TTSSpeakFrame` with
   ``interruptible=False``: pipecat keeps its synthesis, audio and text through interruptions.
2. The user aggregator runs :class:`MuteUntilFirstBotCompleteUserMuteStrategy`, so caller
   speech during the disclosure neither interrupts it nor becomes a turn.
3. The output bridge keeps uninterruptible chunks when a barge-in clears its queue.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import Frame, StartFrame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from appliance.text import split_sentences


def disclosure_text(template: str, clinic_name: str) -> str:
    """Fill the configured disclosure template with the clinic's name."""
    return template.replace("{clinic}", clinic_name)


class DisclosureOpener(FrameProcessor):
    """On pipeline start, queue the disclosure (uninterruptible) and then the greeting.

    Args:
        disclosure: Full disclosure text naming the clinic.
        greeting: Text said after the disclosure (interruptible); empty for none.
    """

    def __init__(self, disclosure: str, greeting: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.disclosure = disclosure
        self.greeting = greeting

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass frames on; after the :class:`StartFrame`, speak the opening."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            speak = TTSSpeakFrame(self.disclosure)
            speak.interruptible = False
            await self.push_frame(speak)
            # One frame per sentence: a barge-in then keeps the sentences already played.
            for sentence in split_sentences(self.greeting):
                await self.push_frame(TTSSpeakFrame(sentence))
