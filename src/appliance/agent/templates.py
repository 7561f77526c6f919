"""Text helpers shared by the agent plane and the pipeline (pure functions).

The keyword templates that answered the first calls were replaced by workflows
(:mod:`appliance.agent.workflow`), embeddings (:mod:`appliance.agent.understanding`) and the
knowledge base (:mod:`appliance.agent.kb`); what remains is sentence splitting and
normalisation.
"""

from __future__ import annotations

import re


def split_sentences(text: str) -> list[str]:
    """Split text at sentence ends (``.``, ``!``, ``?`` followed by white space)."""
    return [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace and straighten apostrophes."""
    return " ".join(text.lower().replace("\u2019", "'").split())
