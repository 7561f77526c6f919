"""The clinic's knowledge base: entries retrieved by embeddings and spoken as written.

Each entry has example questions and one answer (a template over the ``[clinic]`` settings).
A caller's question is embedded with the same model as the intents (all-MiniLM-L6-v2) and
compared by cosine similarity with every example question; the best entry answers if its score
reaches :data:`KB_ACCEPT`. Otherwise :meth:`KnowledgeBase.answer` returns ``None`` and the
workflow says it does not know and offers a person: the agent never invents an answer.

Retrieval is an exact scan over an in-memory matrix (tens to hundreds of entries; a scan of
1,000 384-d rows is a few microseconds of numpy), so no vector index is needed; see
docs/decisions/0009-workflow-agent.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.config.settings import ClinicSettings
from appliance.errors import ConfigError

#: Minimum cosine similarity for an entry to answer (measured: paraphrases of the default
#: entries score 0.55-0.9, unrelated clinic questions below 0.45; tests/unit/test_kb.py).
KB_ACCEPT = 0.55

Embed = Callable[[list[str]], np.ndarray]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    questions: list[str] = Field(min_length=1)
    answer: str = Field(min_length=1)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: int = Field(alias="schema")
    entries: list[_Entry] = Field(min_length=1)


@dataclass(frozen=True)
class KbHit:
    """A retrieved entry: its ``entry_id``, the ``text`` to speak and the cosine ``score``."""

    entry_id: str
    text: str
    score: float


def default_file() -> Path:
    """The knowledge base shipped with the appliance."""
    return Path(__file__).resolve().parent / "knowledge" / "clinic.yaml"


def facts(clinic: ClinicSettings) -> dict[str, str]:
    """Template values from the clinic settings."""
    return {
        "clinic_name": clinic.name,
        "clinic_hours": clinic.hours,
        "clinic_address": clinic.address,
        "clinic_parking": clinic.parking,
    }


class KnowledgeBase:
    """Embedding retrieval over the clinic's entries.

    Args:
        path: A knowledge YAML file (see ``agent/knowledge/clinic.yaml``).
        clinic: Facts the answers are filled with.
        embed: ``texts -> (n, d)`` L2-normalised embeddings.

    Raises:
        ConfigError: The file is unreadable or invalid (names the file and the field).
    """

    def __init__(self, path: Path, clinic: ClinicSettings, embed: Embed) -> None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            parsed = _File.model_validate(data)
        except OSError as exc:
            raise ConfigError("kb_unreadable", f"{path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError("kb_invalid", f"{path}: not valid YAML") from exc
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError("kb_invalid", f"{path}: field {loc!r}: {err['msg']}") from exc
        values = facts(clinic)
        self._answers: dict[str, str] = {}
        labels: list[str] = []
        questions: list[str] = []
        for entry in parsed.entries:
            try:
                self._answers[entry.id] = entry.answer.format(**values)
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    "kb_invalid", f"{path}: entry {entry.id!r}: bad template field {exc}"
                ) from exc
            for question in entry.questions:
                labels.append(entry.id)
                questions.append(question)
        self._labels = labels
        self._matrix = embed(questions)
        self._embed = embed

    @property
    def answers(self) -> list[str]:
        """Every answer text (to pre-render their audio)."""
        return list(self._answers.values())

    def search(self, question: str) -> KbHit | None:
        """The best entry for ``question``, whatever its score (``None`` for empty input)."""
        if not question.strip():
            return None
        sims = self._matrix @ self._embed([question])[0]
        best = int(np.argmax(sims))
        entry_id = self._labels[best]
        return KbHit(entry_id, self._answers[entry_id], round(float(sims[best]), 3))

    def top(self, question: str, k: int = 3) -> list[KbHit]:
        """The ``k`` best entries for ``question`` (each by its best example), best first."""
        if not question.strip():
            return []
        sims = self._matrix @ self._embed([question])[0]
        best: dict[str, float] = {}
        for i in np.argsort(-sims):
            best.setdefault(self._labels[int(i)], float(sims[int(i)]))
            if len(best) == k:
                break
        return [KbHit(e, self._answers[e], round(s, 3)) for e, s in best.items()]

    def answer(self, question: str) -> KbHit | None:
        """The entry that answers ``question``, or ``None`` below :data:`KB_ACCEPT`."""
        hit = self.search(question)
        return hit if hit is not None and hit.score >= KB_ACCEPT else None
