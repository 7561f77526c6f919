"""Name matching for the identity check: spelling, sound and lost prefixes, strictly."""

from __future__ import annotations

from datetime import date

import pytest

from appliance.agent.calendar.adapter import Patient
from appliance.agent.calendar.matching import (
    NAME_MATCH_THRESHOLD,
    PHONETIC_SCORE,
    PREFIX_SCORE,
    match_patient,
    name_score,
)

DOB = date(1982, 3, 4)


def _p(pid: str, given: str, family: str) -> Patient:
    return Patient(pid, given, family, DOB)


@pytest.mark.parametrize(
    ("heard", "record", "score"),
    [
        ("O Connor", "O'Connor", 100.0),  # split prefix: the same letters
        ("Oconnor", "O'Connor", 100.0),
        ("Sample Conner", "O'Connor", PREFIX_SCORE),  # "O'" misheard, "Conner" sounds right
        ("Conner", "O'Connor", PREFIX_SCORE),  # the prefix lost
        ("Conner", "Connor", PHONETIC_SCORE),  # KNR/KNR, spelled 83.3
        ("Catherine", "Kathryn", PHONETIC_SCORE),  # K0RN/K0RN, spelled 62.5
    ],
)
def test_scores_of_sound_alike_names(heard: str, record: str, score: float) -> None:
    assert name_score(heard, record) == pytest.approx(score)


def test_mac_and_mc_are_close_by_spelling() -> None:
    assert name_score("Mac Donald", "McDonald") >= 94
    assert name_score("MacDonald", "McDonald") >= 94


@pytest.mark.parametrize(
    ("heard", "record"),
    [
        ("Lohan", "Lopez"),  # LHN/LPS: different sounds, 40 by spelling
        ("Knight", "Nat"),  # same code NT, but spelled 44.4 apart: a coincidence
        ("Wright", "Root"),
        ("Marcus", "Maria"),
        ("Connelly", "O'Connor"),
    ],
)
def test_clearly_different_names_stay_below_threshold(heard: str, record: str) -> None:
    assert name_score(heard, record) < NAME_MATCH_THRESHOLD


def test_apostrophe_names_match_the_record() -> None:
    oconnor = _p("p1", "Maria", "O'Connor")
    others = [oconnor, _p("p2", "James", "Walsh")]
    for family in ("O'Connor", "O Connor", "Oconnor", "Conner", "Sample Conner"):
        assert match_patient("Maria", family, others) == oconnor, family


def test_mcdonald_matches_mac_donald() -> None:
    mcdonald = _p("p1", "Ian", "McDonald")
    assert match_patient("Ian", "Mac Donald", [mcdonald]) == mcdonald


def test_lohan_is_not_lopez() -> None:
    assert match_patient("Maria", "Lohan", [_p("p1", "Maria", "Lopez")]) is None


def test_spelling_beats_sound_and_ambiguity_gives_none() -> None:
    jon, joan = _p("p1", "Jon", "Reyes"), _p("p2", "Joan", "Reyes")
    # "Jonn" sounds like both (JN) but is spelled close to Jon only.
    assert match_patient("Jonn", "Reyes", [jon, joan]) == jon
    # A Connor and an O'Connor born the same day: "Conor" is spelled close to both (90.9,
    # 83.3): ambiguous; "Conner" is spelled close to Connor only (83.3 vs 76.9).
    connor, oconnor = _p("p3", "Maria", "Connor"), _p("p4", "Maria", "O'Connor")
    assert match_patient("Maria", "Conor", [connor, oconnor]) is None
    assert match_patient("Maria", "Conner", [connor, oconnor]) == connor
