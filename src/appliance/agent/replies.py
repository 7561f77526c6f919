"""What the dialogue answers: :class:`Reply`, the dialogue settings and the fixed phrases.

A reply is texts to say, then what the call does (:class:`Next`). Pure data;
:mod:`appliance.agent.dialog` decides which reply to give.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from appliance.text.languages import HOLD_TEXTS


class Next(Enum):
    """What the call does once the reply has been played."""

    CONTINUE = "continue"
    TRANSFER = "transfer"
    HANGUP = "hangup"
    PCI = "pci"


@dataclass(frozen=True)
class TransferRequest:
    """A transfer to a person.

    ``handoff_id`` is non-PHI (it goes in a SIP header); ``reason`` is the escalation trigger;
    ``context`` is for the CTI webhook (intent, stage, slots, actions, summary; may hold PHI).
    """

    handoff_id: str
    reason: str
    context: dict[str, Any]


@dataclass(frozen=True)
class PciRequest:
    """Start the PCI DTMF pause.

    Collect ``digits_min``..``digits_max`` digits, ended by ``#``, within ``timeout_s`` seconds.
    ``handoff_id`` is the opaque, non-PHI id the payment handler gets with the card number and
    the audit log gets with the pause (16 hex digits, like a transfer's).
    """

    digits_min: int
    digits_max: int
    timeout_s: float
    handoff_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


@dataclass
class Reply:
    """What to say (``texts``, spoken in order) and what to do after (``next``).

    ``use_llm`` hands the turn to the LLM instead (only with ``llm_off_script``); ``source``
    labels the spoken text for the played-text events (``"workflow"``, ``"template"``,
    ``"kb"``, ``"llm"``).
    """

    texts: list[str] = field(default_factory=list)
    next: Next = Next.CONTINUE
    transfer: TransferRequest | None = None
    pci: PciRequest | None = None
    use_llm: bool = False
    source: str = "workflow"

    @property
    def text(self) -> str:
        """All texts joined with spaces (``""`` when there is nothing to say)."""
        return " ".join(t for t in self.texts if t)


@dataclass(frozen=True)
class DialogSettings:
    """Dialogue policy: enabled risk tiers, fixed phrases, LLM use, clinic facts."""

    enabled_tiers: tuple[str, ...] = ("low", "medium", "high")
    clinic_name: str = "the clinic"
    anything_else: str = "Is there anything else I can help you with?"
    llm_off_script: bool = False
    facts: dict[str, str] = field(default_factory=dict)


#: An unrecognised turn this short is kept and read together with the next one.
FRAGMENT_WORDS = 3

EMERGENCY_TEXT = "If this is a medical emergency, please hang up and dial 911 now."
REPROMPT_TEXT = (
    "Sorry, I didn't catch that. I can help with appointments, prescriptions, billing, or "
    "questions about the clinic. What would you like to do?"
)
HOLD_TEXT = "Please hold while I connect you with a member of our staff."
TRANSFER_FAILED_TEXT = "I'm sorry, I couldn't reach our staff just now."
MESSAGE_PROMPT_TEXT = (
    "Please leave a short message with the best number to reach you, and our staff will call "
    "you back."
)
MESSAGE_DONE_TEXT = "Thank you. I've passed your message to our staff. Goodbye."
FOLLOW_UP_TEXT = "What can I help you with?"
NOT_SURE_TEXT = "Just to be sure, do you want help with {what}?"
STILL_THERE_TEXT = "Are you still there?"
"""Said, with the pending question, after the caller stayed silent for the idle timeout."""
SILENT_GOODBYE_TEXT = "I haven't heard anything, so I'll end the call now."
"""Said before the goodbye when the caller stayed silent after :data:`STILL_THERE_TEXT`."""

#: The STT's language probability from which a caller is taken to speak another language.
LANGUAGE_SURE = 0.8

#: "One moment, please. I'll connect you with a member of our staff.", by ISO 639-1 code: said
#: to a caller who speaks another language before the transfer (others hear :data:`HOLD_TEXT`).
LANGUAGE_HOLD_TEXTS = HOLD_TEXTS

#: A free-speech turn ending in a word that cannot end a sentence was cut by a pause.
_DANGLING = re.compile(
    r"\b(and|or|but|so|because|cause|about|for|to|with|of|in|on|at|from|into|by|the|a|an|my|"
    r"your|our|if|that|um+|uh+|er|like|have|has|is|are|was|get|any|some)\W*$"
)
#: A turn made only of lead-in words ("I wanted to ask", "um so", "do you have").
_LEAD_IN = re.compile(
    r"^\W*(?:(?:um+|uh+|er|erm|so|well|okay|ok|and|also|i|i'm|i am|i was|i wanted|i want|"
    r"i need|i needed|i'd|i would|like|i have|i've|i got|i've got|can|could|do|does|is|are|"
    r"there|you|wanted|want|to|ask|asking|know|wondering|calling|call|question|a|quick|just|"
    r"about|have|got|see|if|yeah|hmm+)\b[\s,.!?-]*)+$"
)
#: The most words a held fragment may grow to (then it is read as it is).
_FRAGMENT_MAX_WORDS = 16


def is_fragment(text: str) -> bool:
    """Whether a free-speech turn is obviously cut short and should wait for its rest.

    Ends in a conjunction, preposition, article or filler ("Do you have..." -> "have",
    "I need to talk to you about"; not when the STT put a question mark after it), or is only
    a lead-in ("I wanted to ask", "um so"). A turn of :data:`_FRAGMENT_MAX_WORDS` words or
    more is never held.
    """
    said = " ".join(text.lower().replace("\u2019", "'").split())
    words = said.split()
    if not words or len(words) >= _FRAGMENT_MAX_WORDS:
        return False
    if said.endswith(("...", "\u2026")) or _LEAD_IN.match(said):
        return True
    # A question mark: the STT heard a whole question ("Where is the clinic at?").
    return not said.endswith("?") and _DANGLING.search(said) is not None


#: The outcome recorded when the agent hangs up on a silent caller.
CALLER_SILENT = "caller_silent"


def goodbye_text(settings: DialogSettings) -> str:
    """The goodbye said before the agent hangs up."""
    return f"Thank you for calling {settings.clinic_name}. Goodbye."


def fixed_texts(settings: DialogSettings) -> list[str]:
    """Phrases the dialogue says verbatim (to pre-render their audio)."""
    return [
        EMERGENCY_TEXT,
        REPROMPT_TEXT,
        HOLD_TEXT,
        TRANSFER_FAILED_TEXT + " " + MESSAGE_PROMPT_TEXT,
        MESSAGE_DONE_TEXT,
        FOLLOW_UP_TEXT,
        STILL_THERE_TEXT,
        SILENT_GOODBYE_TEXT + " " + goodbye_text(settings),
        settings.anything_else,
        goodbye_text(settings),
        *HOLD_TEXTS.values(),
    ]
