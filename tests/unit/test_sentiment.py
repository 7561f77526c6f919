"""Caller sentiment (VADER compound) and the live frustration trigger."""

from __future__ import annotations

import time

import pytest

from appliance.text.sentiment import STRONG_NEGATIVE, is_frustrated, sentiment


@pytest.mark.parametrize(
    "text",
    [
        "This is ridiculous, I already told you my date of birth!",
        "You're not listening to me",
        "youre not listening",  # transcripts often drop apostrophes
        "I already told you that",
        "How many times do I have to say it",
        "this is useless",
        "stupid machine",
        "I\u2019m so frustrated with this",
        "I hate this, it is terrible",  # no cue: strongly negative score alone
    ],
)
def test_frustrated_caller(text: str) -> None:
    assert is_frustrated(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "What time do you open on Saturday?",
        "I'd like to reschedule my appointment please",
        "Let me talk to a person",  # an explicit request, handled by its own trigger
        "Let me talk to someone at the front desk",
        "no",  # mildly negative (-0.30): not an escalation
        "not good, I have a sore throat",  # symptoms are not frustration
        "I have terrible pain in my chest",
        "I hurt my back and my son is sick",
        "How many times a week is the clinic open?",
        "you are listening, good",
    ],
)
def test_not_frustrated(text: str) -> None:
    assert not is_frustrated(text)


def test_sentiment_range_and_sign() -> None:
    angry = sentiment("This is ridiculous. This stupid machine is useless, I hate it")
    calm = sentiment("What are your opening hours?")
    happy = sentiment("Thank you so much, that is great")
    assert -1.0 <= angry < STRONG_NEGATIVE
    assert calm == pytest.approx(0.0, abs=0.05)
    assert 0.5 < happy <= 1.0
    assert sentiment("   ") == 0.0


def test_deterministic_and_fast() -> None:
    text = "I already told you, this is ridiculous and you are not listening"
    assert len({sentiment(text) for _ in range(5)}) == 1
    sentiment("warm up")
    start = time.perf_counter()
    for _ in range(200):
        is_frustrated(text)
    # Live escalation trigger: well under a millisecond a turn (generous for a shared CI box).
    assert (time.perf_counter() - start) / 200 < 0.005
