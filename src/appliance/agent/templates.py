"""Templated answers for the common clinic questions (pure functions).

The default LLM is tiny (SmolLM2-135M), so questions a receptionist hears all day are answered
from templates filled with the clinic's configured facts, never generated. Rules are ordered by
safety: an emergency cue always wins, then a request for a person, then goodbye, then facts.
Later workflows (intent embeddings, slots) replace the keyword rules but keep this contract:
``match(text) -> Answer | None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from appliance.config.settings import ClinicSettings


class Action(Enum):
    """What the call does after the answer has been played."""

    CONTINUE = "continue"
    TRANSFER = "transfer"
    HANGUP = "hangup"


@dataclass(frozen=True)
class Answer:
    """A templated reply: ``intent`` name, spoken ``text``, and the follow-up ``action``."""

    intent: str
    text: str
    action: Action = Action.CONTINUE


_RULES: list[tuple[str, re.Pattern[str], str, Action]] = [
    (
        "emergency",
        re.compile(
            r"\b(emergenc\w*|chest pains?|can'?t breathe|cannot breathe|not breathing|"
            r"bleeding (badly|a lot)|overdose\w*|suicid\w*|kill myself|stroke|unconscious)\b"
        ),
        "If this is a medical emergency, please hang up and dial 911 now.",
        Action.CONTINUE,
    ),
    (
        "human",
        re.compile(
            r"\b(operator|representative|receptionist|human|real person|a person|someone|"
            r"somebody|staff|nurse|doctor's office|speak to|talk to|transfer me)\b"
        ),
        "Of course. I'll connect you with a member of our staff.",
        Action.TRANSFER,
    ),
    (
        "goodbye",
        re.compile(r"\b(good ?bye|bye|that'?s all|that is all|nothing else|hang up)\b"),
        "Thank you for calling {name}. Goodbye.",
        Action.HANGUP,
    ),
    (
        "hours",
        re.compile(
            r"\b(hours?|open|opening|close|closed|closing|what time|when are you|weekends?|"
            r"saturday|sunday)\b"
        ),
        "We're open {hours}.",
        Action.CONTINUE,
    ),
    (
        "parking",
        re.compile(r"\b(park|parking|car park|garage)\b"),
        "{parking}",
        Action.CONTINUE,
    ),
    (
        "address",
        re.compile(
            r"\b(address|where are you|where is|located|location|directions?|find you|get there)\b"
        ),
        "We're at {address}.",
        Action.CONTINUE,
    ),
    (
        "appointment",
        re.compile(r"\b(appointments?|book|booking|schedule|reschedule|cancel|see the doctor)\b"),
        "I can't change appointments on this line yet, so I'll pass you to our staff for that.",
        Action.TRANSFER,
    ),
    (
        "thanks",
        re.compile(r"^\W*(thanks|thank you|great|ok(ay)?|perfect|got it)\W*$"),
        "You're welcome. Is there anything else I can help with?",
        Action.CONTINUE,
    ),
]


def split_sentences(text: str) -> list[str]:
    """Split text at sentence ends (``.``, ``!``, ``?`` followed by white space)."""
    return [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace and straighten apostrophes."""
    return " ".join(text.lower().replace("\u2019", "'").split())


def match(text: str, clinic: ClinicSettings) -> Answer | None:
    """Return the templated answer for a caller's utterance, or ``None`` for the LLM.

    Args:
        text: The caller's final transcript for one turn.
        clinic: Facts used to fill the templates.
    """
    said = normalise(text)
    if not said:
        return None
    facts = {
        "name": clinic.name,
        "hours": clinic.hours,
        "address": clinic.address,
        "parking": clinic.parking,
    }
    for intent, pattern, template, action in _RULES:
        if pattern.search(said):
            return Answer(intent=intent, text=template.format(**facts), action=action)
    return None


def all_answers(clinic: ClinicSettings) -> list[str]:
    """Every templated answer text for ``clinic`` (to pre-render their audio)."""
    facts = {
        "name": clinic.name,
        "hours": clinic.hours,
        "address": clinic.address,
        "parking": clinic.parking,
    }
    return [template.format(**facts) for _, _, template, _ in _RULES]
