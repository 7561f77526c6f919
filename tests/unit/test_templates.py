"""Templated answers: the common clinic questions never reach the tiny LLM."""

from __future__ import annotations

import pytest

from appliance.agent.templates import Action, all_answers, match
from appliance.config.settings import ClinicSettings

CLINIC = ClinicSettings(
    name="Oak Clinic", hours="nine to five", address="1 Oak Road", parking="Park in the rear."
)


@pytest.mark.parametrize(
    ("said", "intent"),
    [
        ("What are your hours?", "hours"),
        ("when are you open on saturday", "hours"),
        ("Where are you located?", "address"),
        ("what's the address", "address"),
        ("Is there parking?", "parking"),
        ("I want to talk to a person.", "human"),
        ("Can I speak to the receptionist please", "human"),
        ("operator", "human"),
        ("I need to reschedule my appointment", "appointment"),
        ("I have chest pain", "emergency"),
        ("It's an emergency, where are you located", "emergency"),
        ("Okay, goodbye.", "goodbye"),
        ("Thank you.", "thanks"),
    ],
)
def test_intents(said: str, intent: str) -> None:
    answer = match(said, CLINIC)
    assert answer is not None and answer.intent == intent


def test_answers_are_filled_from_clinic_facts() -> None:
    hours = match("what time do you close", CLINIC)
    assert hours is not None and hours.text == "We're open nine to five."
    addr = match("where are you", CLINIC)
    assert addr is not None and "1 Oak Road" in addr.text
    bye = match("bye", CLINIC)
    assert bye is not None and bye.action is Action.HANGUP and "Oak Clinic" in bye.text
    human = match("a real person please", CLINIC)
    assert human is not None and human.action is Action.TRANSFER


@pytest.mark.parametrize("said", ["", "   ", "A gold ring will please most any girl.", "blue"])
def test_other_utterances_go_to_the_llm(said: str) -> None:
    assert match(said, CLINIC) is None


def test_all_answers_lists_every_template() -> None:
    texts = all_answers(CLINIC)
    assert "We're open nine to five." in texts and "Park in the rear." in texts
    assert len(texts) == len(set(texts))


def test_first_clause_split() -> None:
    from appliance.pipeline.services import first_clause_split

    assert first_clause_split("I'm sorry, but I can't help with that.") == [
        "I'm sorry,",
        "but I can't help with that.",
    ]
    assert first_clause_split("Yes, ok.") == ["Yes, ok."]
    assert first_clause_split("No commas here at all.") == ["No commas here at all."]
