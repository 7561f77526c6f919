"""The knowledge-base file as the admin page edits it: read, check, write atomically.

The agent reads ``[agent] knowledge_file`` (or the packaged ``agent/knowledge/clinic.yaml``
when unset) with :class:`appliance.agent.kb.KnowledgeBase`. The admin page never writes the
packaged file: the first edit copies it to ``<data dir>/knowledge.yaml`` (the directory of
``[store] metadata_db``) and points ``agent.knowledge_file`` at the copy through the admin
drop-in (:func:`appliance.admin.config_writer.apply_change`).

Entries are checked here the way the agent checks them (id pattern, non-empty questions and
answer, template fields limited to the clinic facts of :func:`appliance.agent.kb.facts`) and
with length limits of our own, so a refused edit never reaches the agent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from appliance.admin.config_writer import write_atomic
from appliance.agent.kb import default_file, facts
from appliance.config.settings import ApplianceSettings, ClinicSettings

#: Entry ids: what the agent accepts (``^[a-z][a-z0-9_]*$``), at most 40 characters.
ENTRY_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: Limits (characters, counts) on what the page accepts.
MAX_ANSWER = 600
MAX_QUESTION = 200
MAX_QUESTIONS = 40
MAX_ENTRIES = 500
#: Template fields an answer may use (``{clinic_hours}`` ...).
TEMPLATE_FIELDS = frozenset(facts(ClinicSettings()))
#: Name of the editable copy in the data directory.
COPY_NAME = "knowledge.yaml"

HEADER = (
    "# The clinic's knowledge base, edited on the admin page (appliance admin). Each entry is\n"
    "# spoken exactly as written; {clinic_name}, {clinic_hours}, {clinic_address} and\n"
    "# {clinic_parking} are filled from [clinic]. Questions are example phrasings.\n"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class KbError(ValueError):
    """A refused entry or an unreadable file; the message says which and why."""


@dataclass(frozen=True)
class KbEntry:
    """One knowledge-base entry: its ``id``, example ``questions`` and ``answer`` template."""

    id: str
    questions: tuple[str, ...]
    answer: str


def _line(what: str, value: object, max_chars: int) -> str:
    if not isinstance(value, str):
        raise KbError(f"{what}: expected text")
    text = " ".join(value.split())
    if not text:
        raise KbError(f"{what}: must not be empty")
    if len(text) > max_chars:
        raise KbError(f"{what}: at most {max_chars} characters, got {len(text)}")
    if _CONTROL.search(text):
        raise KbError(f"{what}: must not contain control characters")
    return text


def check_entry(entry_id: object, questions: object, answer: object) -> KbEntry:
    """Check and normalise one entry (whitespace runs become one space).

    Args:
        entry_id: ``^[a-z][a-z0-9_]*$``, at most 40 characters.
        questions: A list of example questions, or text with one per line (1-40, each at most
            200 characters; blank lines and duplicates dropped).
        answer: The answer template (at most 600 characters), using only
            :data:`TEMPLATE_FIELDS`.

    Raises:
        KbError: What is wrong, naming the entry.
    """
    if not isinstance(entry_id, str) or not ENTRY_ID.fullmatch(entry_id):
        raise KbError(
            "entry id: lowercase letters, digits and _ only, starting with a letter "
            "(at most 40 characters)"
        )
    if isinstance(questions, str):
        items: list[object] = list(questions.splitlines())
    elif isinstance(questions, (list, tuple)):
        items = list(questions)
    else:
        raise KbError(f"{entry_id}: questions: expected one question per line")
    cleaned: list[str] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        question = _line(f"{entry_id}: question", item, MAX_QUESTION)
        if question not in cleaned:
            cleaned.append(question)
    if not cleaned:
        raise KbError(f"{entry_id}: at least one example question is needed")
    if len(cleaned) > MAX_QUESTIONS:
        raise KbError(f"{entry_id}: at most {MAX_QUESTIONS} questions, got {len(cleaned)}")
    text = _line(f"{entry_id}: answer", answer, MAX_ANSWER)
    try:
        fields = [
            name for _, name, spec, conv in string.Formatter().parse(text) if name is not None
        ]
    except ValueError as exc:
        raise KbError(f"{entry_id}: answer: unbalanced braces ({exc})") from None
    unknown = sorted({f for f in fields if f not in TEMPLATE_FIELDS})
    if unknown:
        allowed = ", ".join("{" + f + "}" for f in sorted(TEMPLATE_FIELDS))
        raise KbError(f"{entry_id}: answer: unknown field {{{unknown[0]}}}; use {allowed}")
    try:
        text.format(**facts(ClinicSettings()))
    except (ValueError, IndexError, KeyError) as exc:
        raise KbError(f"{entry_id}: answer: bad template ({exc})") from None
    return KbEntry(entry_id, tuple(cleaned), text)


def knowledge_path(settings: ApplianceSettings) -> Path:
    """The file the agent reads: ``[agent] knowledge_file`` or the packaged default."""
    return settings.agent.knowledge_file or default_file()


def is_packaged(path: Path) -> bool:
    """Whether ``path`` is the packaged default (never written by the admin page)."""
    try:
        return path.resolve() == default_file().resolve()
    except OSError:
        return False


def copy_path(settings: ApplianceSettings) -> Path:
    """Where the first edit puts the editable copy: ``<data dir>/knowledge.yaml``."""
    return Path(settings.store.metadata_db).parent / COPY_NAME


def load_entries(path: Path) -> list[KbEntry]:
    """The entries of a knowledge file, in file order.

    Raises:
        KbError: The file is unreadable, not YAML, or an entry is malformed.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KbError(f"{path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise KbError(f"{path}: not valid YAML") from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise KbError(f"{path}: expected 'schema: 1' and a list of entries")
    out = []
    for i, raw in enumerate(data["entries"]):
        if not isinstance(raw, dict):
            raise KbError(f"{path}: entry {i} is not a mapping")
        out.append(
            KbEntry(
                str(raw.get("id", "")),
                tuple(str(q) for q in raw.get("questions") or []),
                str(raw.get("answer", "")),
            )
        )
    return out


def dump_entries(entries: list[KbEntry]) -> str:
    """YAML text of a knowledge file (``schema: 1``) with :data:`HEADER`."""
    doc = {
        "schema": 1,
        "entries": [
            {"id": e.id, "questions": list(e.questions), "answer": e.answer} for e in entries
        ],
    }
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    return HEADER + body


def upsert(entries: list[KbEntry], entry: KbEntry, *, new: bool) -> list[KbEntry]:
    """``entries`` with ``entry`` added (``new``) or replacing the entry of the same id.

    Raises:
        KbError: Adding an id that exists, editing one that does not, or too many entries.
    """
    ids = [e.id for e in entries]
    if new:
        if entry.id in ids:
            raise KbError(f"{entry.id}: an entry with this id exists already")
        if len(entries) >= MAX_ENTRIES:
            raise KbError(f"at most {MAX_ENTRIES} entries")
        return [*entries, entry]
    if entry.id not in ids:
        raise KbError(f"{entry.id}: no such entry")
    return [entry if e.id == entry.id else e for e in entries]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise writers of ``path`` (an ``flock`` on ``.<name>.lock`` beside it)."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (temporary file, ``fsync``, rename; mode 0640).

    Raises:
        OSError: It cannot be written; the old file is untouched then.
    """
    write_atomic(path, text)
