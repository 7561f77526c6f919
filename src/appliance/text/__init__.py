"""Text helpers shared by the agent, policy and pipeline planes (pure functions).

Below all three planes in the layers contract (``pyproject.toml``), so the dialogue, the
post-call scoring and the disclosure opener can share them without importing each other.
:mod:`appliance.text.sentiment` holds the caller-sentiment score and the frustration cues.
"""

from __future__ import annotations

import re


def split_sentences(text: str) -> list[str]:
    """Split text at sentence ends (``.``, ``!``, ``?`` followed by white space).

    Returns:
        The sentences, stripped, without empty ones (``[]`` for blank text).
    """
    return [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace and straighten apostrophes (``\u2019`` to ``'``)."""
    return " ".join(text.lower().replace("\u2019", "'").split())


def message_text(content: object) -> str:
    """The text of an OpenAI-style chat message's ``content``.

    Args:
        content: A string, or a list of parts whose ``dict`` parts may carry ``"text"``.

    Returns:
        The string itself, the text parts joined by single spaces, or ``""`` for anything else.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
