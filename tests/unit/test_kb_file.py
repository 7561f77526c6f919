"""The admin page's knowledge-file checks and writer; the agent loads what it writes."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from appliance.admin.kb_file import (
    KbError,
    check_entry,
    dump_entries,
    is_packaged,
    load_entries,
    upsert,
    write_text,
)
from appliance.agent.kb import KnowledgeBase, default_file
from appliance.config.settings import ClinicSettings


def embed(texts: list[str]) -> np.ndarray:
    """Bag of words in 64 buckets; crc32, not hash(), so every run buckets alike."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 64] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_check_entry_normalises() -> None:
    entry = check_entry(
        "flu_shots", "Do you have flu shots?\n\n  Can I  get a flu jab? \n", " Yes. "
    )
    assert entry.questions == ("Do you have flu shots?", "Can I get a flu jab?")
    assert entry.answer == "Yes."
    assert check_entry("x1", ["a", "a", ""], "At {clinic_address}.").questions == ("a",)


@pytest.mark.parametrize(
    ("entry_id", "questions", "answer", "needle"),
    [
        ("Bad-Id", "q", "a", "entry id"),
        ("1abc", "q", "a", "entry id"),
        ("x" * 41, "q", "a", "entry id"),
        ("ok", "", "a", "at least one example question"),
        ("ok", "q", "", "answer: must not be empty"),
        ("ok", "q", "x" * 601, "at most 600"),
        ("ok", "q" * 201, "a", "at most 200"),
        ("ok", "q", "Call {doctor_phone}.", "unknown field {doctor_phone}"),
        ("ok", "q", "Open {clinic_hours", "braces"),
        ("ok", "q", "Open {0}", "unknown field {0}"),
        ("ok", ["q", 5], "a", "expected text"),
        ("ok", 5, "a", "one question per line"),
    ],
)
def test_bad_entries_are_refused(
    entry_id: str, questions: object, answer: str, needle: str
) -> None:
    with pytest.raises(KbError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        check_entry(entry_id, questions, answer)


def test_round_trip_is_loaded_by_the_agent(tmp_path: Path) -> None:
    entries = load_entries(default_file())
    assert is_packaged(default_file()) and not is_packaged(tmp_path / "x.yaml")
    new = check_entry("flu_shots", "Do you have flu shots?\nCan I get a flu vaccine?", "Yes, ask.")
    edited = check_entry("hours", "When are you open?", "Hours: {clinic_hours}.")
    entries = upsert(upsert(entries, new, new=True), edited, new=False)
    with pytest.raises(KbError, match="exists already"):
        upsert(entries, new, new=True)
    with pytest.raises(KbError, match="no such entry"):
        upsert(entries, check_entry("nope", "q", "a"), new=False)

    path = tmp_path / "knowledge.yaml"
    write_text(path, dump_entries(entries))
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert load_entries(path) == entries
    kb = KnowledgeBase(path, ClinicSettings(), embed)
    hit = kb.search("do you have flu shots")
    assert hit is not None and hit.entry_id == "flu_shots"
    assert f"Hours: {ClinicSettings().hours}." in kb.answers


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(KbError):
        load_entries(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("entries: [", encoding="utf-8")
    with pytest.raises(KbError, match="not valid YAML"):
        load_entries(bad)
