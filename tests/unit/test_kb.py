"""The knowledge base on the real embedder (all-MiniLM-L6-v2 from the store).

The paraphrases below were measured against the shipped ``agent/knowledge/clinic.yaml``: each
scores at least 0.05 above :data:`KB_ACCEPT` for its entry, and the out-of-scope questions
score at most 0.36, so the assertions are not balanced on the threshold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.agent.kb import KB_ACCEPT, KnowledgeBase, default_file
from appliance.config.settings import ClinicSettings
from appliance.errors import ConfigError

#: Facts unlike the defaults, so an answer can only contain them if it was filled from them.
CLINIC = ClinicSettings(
    name="Harbour View Clinic",
    hours="Tuesday to Saturday, 7 AM to 3 PM",
    address="9 Quay Road, Portside",
    parking="Park in the multi-storey on Quay Road; we validate tickets.",
)


@pytest.fixture(scope="module")
def kb(embedder) -> KnowledgeBase:  # noqa: ANN001
    return KnowledgeBase(default_file(), CLINIC, embedder.encode)


@pytest.mark.parametrize(
    ("question", "entry", "fact"),
    [
        ("What are your hours?", "hours", CLINIC.hours),  # an example question, verbatim
        ("Where can I park?", "parking", CLINIC.parking),
        ("What is your address?", "address", CLINIC.address),
    ],
)
def test_example_questions_are_answered_with_the_clinics_facts(
    kb: KnowledgeBase, question: str, entry: str, fact: str
) -> None:
    hit = kb.answer(question)
    assert hit is not None and hit.entry_id == entry
    assert hit.score == pytest.approx(1.0, abs=1e-3)
    assert fact in hit.text


@pytest.mark.parametrize(
    ("question", "entry"),
    [
        ("When do you open tomorrow?", "hours"),
        ("what time do you shut", "hours"),
        ("hey, uh, what are your hours", "hours"),
        ("what is the clinic's address", "address"),
        ("is there somewhere to park", "parking"),
        ("is Medicare accepted", "insurance"),
        ("what insurance do you take", "insurance"),
        ("do I have to make an appointment first", "walk_ins"),
        ("is there a charge for cancelling late", "cancellation_policy"),
        ("what do new patients need to bring", "first_visit"),
    ],
)
def test_paraphrases_reach_the_right_entry(kb: KnowledgeBase, question: str, entry: str) -> None:
    hit = kb.answer(question)
    assert hit is not None, f"{question!r}: {kb.search(question)}"
    assert hit.entry_id == entry and hit.score >= KB_ACCEPT


def test_answers_are_the_filled_templates(kb: KnowledgeBase) -> None:
    hours = kb.answer("When are you open?")
    assert hours is not None and hours.text == f"We're open {CLINIC.hours}."
    insurance = kb.answer("Do you take Aetna?")
    assert insurance is not None and "Aetna" in insurance.text
    # Every answer is pre-renderable text: no template field is left unfilled.
    assert all("{" not in a and "}" not in a for a in kb.answers)


@pytest.mark.parametrize(
    "question",
    [
        "What's the capital of France?",
        "Can you recommend a good pizza place?",
        "Do you do X-rays?",
        "Is Dr. Patel a good surgeon?",
        "My tooth hurts really bad",
        "What's the weather like today?",
        "Tell me a joke",
        "How do I reset my password",
    ],
)
def test_out_of_scope_questions_are_not_answered(kb: KnowledgeBase, question: str) -> None:
    assert kb.answer(question) is None
    hit = kb.search(question)  # the nearest entry exists but is too far to speak
    assert hit is not None and hit.score < KB_ACCEPT


def test_empty_question_has_no_hit(kb: KnowledgeBase) -> None:
    assert kb.search("  ") is None and kb.answer("") is None


def test_cancelling_question_reaches_the_cancellation_policy(kb: KnowledgeBase) -> None:
    hit = kb.answer("what if I need to cancel my appointment")
    assert hit is None or hit.entry_id == "cancellation_policy"


@pytest.mark.parametrize(
    ("content", "code", "needle"),
    [
        ("schema: 1\nentries: [\n", "kb_invalid", "not valid YAML"),
        ("schema: 1\nentries: []\n", "kb_invalid", "entries"),
        (
            "schema: 1\nentries:\n  - id: x\n    questions: [Hello there]\n    answer: '{nope}'\n",
            "kb_invalid",
            "bad template field",
        ),
    ],
)
def test_invalid_files_are_refused_naming_the_file(
    tmp_path: Path, embedder, content: str, code: str, needle: str
) -> None:  # noqa: ANN001
    path = tmp_path / "kb.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        KnowledgeBase(path, CLINIC, embedder.encode)
    assert err.value.code == code and str(path) in str(err.value) and needle in str(err.value)


def test_missing_file_is_refused(tmp_path: Path, embedder) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        KnowledgeBase(tmp_path / "absent.yaml", CLINIC, embedder.encode)
    assert err.value.code == "kb_unreadable"


#: Held-out paraphrases (never copied into the entries), 43 questions over the 7 entries.
PARAPHRASES = Path(__file__).parent / "data" / "kb_paraphrases.yaml"


def test_held_out_paraphrase_retrieval_rate(kb: KnowledgeBase) -> None:
    """Top-1 retrieval over the held-out set (floors below the measured figures).

    Measured 42/43 (97.7%) with the shipped entries (74.4% before they gained paraphrase-style
    examples); 32/43 (74.4%) also reach KB_ACCEPT (23.3% before).
    """
    data = yaml.safe_load(PARAPHRASES.read_text(encoding="utf-8"))["paraphrases"]
    pairs = [(question, entry) for entry, questions in data.items() for question in questions]
    assert len(pairs) >= 40
    hits = [kb.search(question) for question, _ in pairs]
    top1 = sum(
        h is not None and h.entry_id == entry for h, (_, entry) in zip(hits, pairs, strict=True)
    )
    answered = sum(
        h is not None and h.entry_id == entry and h.score >= KB_ACCEPT
        for h, (_, entry) in zip(hits, pairs, strict=True)
    )
    assert top1 / len(pairs) >= 0.93
    assert answered / len(pairs) >= 0.65
