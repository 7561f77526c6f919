"""Text understanding on transcripts as Whisper tiny.en writes them from an 8 kHz phone line.

Inputs are the forms callers were heard using (issue 11): numbers as digits or words, grouped
dates of birth, "oh" for zero, yes/no variants, requests for a person in other wordings and
recognition errors of "operator", spelled family names.
"""

from __future__ import annotations

from datetime import date, datetime

import pytest

from appliance.agent.spoken import number_tokens
from appliance.agent.understanding import (
    extract_birth_date,
    extract_digits,
    extract_name,
    extract_spelled,
    extract_when,
    global_intent,
    heard_digits,
    itn,
    split_correction,
    yes_no,
)

TODAY = date(2026, 11, 22)
NOW = datetime(2026, 11, 22, 10, 0)  # a Sunday morning


def test_itn_numbers_and_years() -> None:
    assert itn("March fourth, nineteen eighty two") == "March 4th, 1982"
    assert itn("March 4th. 19.82.") == "March 4th 1982"


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("March 4th. 19.82.", date(1982, 3, 4)),
        ("January first, nineteen ninety.", date(1990, 1, 1)),
        ("oh three, fifteen, eighty-eight", date(1988, 3, 15)),
        ("zero three one five one nine eight eight", date(1988, 3, 15)),
        ("three fifteen nineteen eighty eight", date(1988, 3, 15)),
        ("March fourth nineteen eighty", date(1980, 3, 4)),
        ("the fourth of July 1975", date(1975, 7, 4)),
        ("7/4/01", date(2001, 7, 4)),
        ("03-15-1988", date(1988, 3, 15)),
        ("March the 15th 88", date(1988, 3, 15)),
        ("March twenty first nineteen sixty", date(1960, 3, 21)),
        ("June fifth two thousand one", date(2001, 6, 5)),
        ("December twenty nineteen ninety", date(1990, 12, 20)),
        ("I was born on the 2nd of February, 1980.", date(1980, 2, 2)),
        ("seven four oh one", date(2001, 7, 4)),
        ("03151988", date(1988, 3, 15)),
        ("May 5 30", date(1930, 5, 5)),  # two-digit year: the most recent past year
        ("May 5 26", date(2026, 5, 5)),
        ("December 1 26", date(1926, 12, 1)),  # 2026-12-01 is still ahead: a century back
    ],
)
def test_birth_dates_in_every_form(said: str, expected: date) -> None:
    got = extract_birth_date(said, 0.9, TODAY)
    assert got is not None, said
    assert got.value == expected
    assert got.display == f"{expected:%B} {expected.day}, {expected.year}"
    assert 0 < got.confidence <= 0.9


@pytest.mark.parametrize(
    "said",
    [
        "March 4 2030",  # future
        "March 4 1850",  # before 1900
        "3/15/1899",
        "February 30th 1990",  # impossible
        "02301990",
        "13/13/1990",
        "March fourth",  # no year
        "I don't know",
    ],
)
def test_wrong_birth_dates_are_rejected(said: str) -> None:
    assert extract_birth_date(said, 0.9, TODAY) is None


def test_birth_date_certainty_by_form() -> None:
    keyed = extract_birth_date("03151988", 1.0, TODAY)  # keypad: the dialogue passes 1.0
    named = extract_birth_date("March 15th, 1988", 1.0, TODAY)
    slashed = extract_birth_date("3/15/1988", 1.0, TODAY)
    assert keyed is not None and keyed.confidence == 1.0
    assert named is not None and slashed is not None and named.confidence > slashed.confidence


@pytest.mark.parametrize(
    ("said", "display"),
    [
        ("next Wednesday at eleven in the morning", "Wednesday, November 25 at 11 AM"),
        ("Tuesday at ten thirty", "Tuesday, November 24 at 10:30 AM"),
        ("Tuesday at half past two", "Tuesday, November 24 at 2:30 PM"),
        ("Thursday at quarter past ten", "Thursday, November 26 at 10:15 AM"),
        ("Wednesday at quarter to eleven", "Wednesday, November 25 at 10:45 AM"),
        ("Monday at ten oh five", "Monday, November 23 at 10:05 AM"),
        ("at two on Friday", "Friday, November 27 at 2 PM"),
        ("tomorrow at 2", "Monday, November 23 at 2 PM"),
        ("Friday at 3:30 PM", "Friday, November 27 at 3:30 PM"),
        ("December 1st at noon", "Tuesday, December 1 at 12 PM"),
        ("Tuesday", "Tuesday, November 24 at 9 AM"),
    ],
)
def test_appointment_times(said: str, display: str) -> None:
    got = extract_when(said, 1.0, NOW)
    assert got is not None and got.display == display
    assert isinstance(got.value, datetime) and got.value > NOW


@pytest.mark.parametrize(
    ("said", "digits"),
    [
        ("five five five, one two three four", "5551234"),
        ("oh double seven", "077"),
        ("double five oh", "550"),
        ("triple nine", "999"),
        ("eight hundred five five five one two one two", "8005551212"),
        ("my member id is 4 5 6 7 8 9", "456789"),
        ("oh, my number is five five five", "555"),  # the interjection is no zero
        ("twenty twenty", "2020"),
        ("no numbers here", ""),
    ],
)
def test_heard_digits(said: str, digits: str) -> None:
    assert heard_digits(said) == digits


def test_extract_digits_counts_and_bounds() -> None:
    got = extract_digits("five five five, one two three four", 0.9, 7, 7)
    assert got is not None and got.value == "5551234" and got.display == "5 5 5 1 2 3 4"
    assert got.confidence == pytest.approx(0.63)
    assert extract_digits("five five five", 0.9, 7, 10) is None
    keyed = extract_digits("0123456", 0.2, 7, 7)
    assert keyed is not None and keyed.value == "0123456" and keyed.confidence == 1.0


def test_number_tokens_keep_groups() -> None:
    tokens = number_tokens("oh three, fifteen, eighty-eight")
    assert [t.digits for t in tokens] == ["03", "15", "88"]
    assert [t.digits for t in number_tokens("twenty oh one")] == ["2001"]


@pytest.mark.parametrize(
    ("said", "answer"),
    [
        ("yes", True), ("Yeah.", True), ("yep", True), ("that's right", True),
        ("uh huh", True), ("Uh-huh.", True), ("um, yeah", True), ("mm hmm", True),
        ("correct", True), ("sounds good", True),
        ("no", False), ("Nope.", False), ("no wait, Tuesday", False), ("not quite", False),
        ("that's not right", False), ("uh uh", False), ("nah", False),
        ("Tuesday", None), ("Maria Lopez", None), ("", None),
    ],
)  # fmt: skip
def test_yes_no_variants(said: str, answer: bool | None) -> None:
    assert yes_no(said) is answer


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("no wait, Tuesday", (False, "Tuesday")),
        ("no, it's March 4th", (False, "March 4th")),
        ("Nope. I said the fifteenth.", (False, "the fifteenth")),
        ("not quite, it is Lopes", (False, "Lopes")),
        ("No, no. It's Maria Lopes.", (False, "Maria Lopes")),
        ("yeah that's right", (True, "")),
        ("Yes, 10 AM works", (True, "10 AM works")),
        ("uh huh", (True, "")),
        ("Tuesday", (None, "Tuesday")),
    ],
)
def test_split_correction(said: str, expected: tuple[bool | None, str]) -> None:
    assert split_correction(said) == expected


@pytest.mark.parametrize(
    "said",
    [
        "Operator.",
        "representative please",
        "the receptionist",
        "can you put me through to reception",
        "I need to speak with the front desk",
        "get me someone",
        "connect me to the office",
        "can I talk to somebody",
        "I want a real person",
        "ah we're ready",  # Whisper's "operator" on an 8 kHz line
        "upper rator",
        "Operate her.",
        "receptionist please",
    ],
)
def test_requests_for_a_person(said: str) -> None:
    assert global_intent(said) == "human"


@pytest.mark.parametrize(
    "said",
    [
        "I'd like to book an appointment",
        "can I leave a message",
        "my doctor said I need a blood test",
        "operation",  # spelled close to "operator" (82) but sounds apart (metaphone 60)
        "cooperate",
        "are you ready",
        "a pirate",
        "Maria Lopez",
        "Tuesday at 10",
        "I need a refill",
        "can I reschedule my appointment",
        "is the office open Saturday",
        "what are your hours",
        "report",
    ],
)
def test_ordinary_requests_are_not_requests_for_a_person(said: str) -> None:
    assert global_intent(said) is None


def test_emergency_and_goodbye_rules_still_win() -> None:
    assert global_intent("I have chest pain, get me someone") == "emergency"
    assert global_intent("that's all, bye") == "goodbye"


@pytest.mark.parametrize(
    ("said", "name"),
    [
        ("O apostrophe C O N N O R", "O'Connor"),
        ("L-O-P-E-Z", "Lopez"),
        ("L. O. P. E. Z.", "Lopez"),
        ("L as in Lima, O as in Oscar, P as in Papa, E as in echo, Z as in zulu", "Lopez"),
        ("it is spelled M C D O N A L D", "McDonald"),
        ("O'C-O-N-N-O-R", "O'Connor"),
        ("C O double N O R", "Connor"),
        ("S M I T H hyphen J O N E S", "Smith-Jones"),
    ],
)
def test_spelled_family_names(said: str, name: str) -> None:
    assert extract_spelled(said) == name


@pytest.mark.parametrize("said", ["hello there", "L", "my name is Maria", ""])
def test_not_a_spelling(said: str) -> None:
    assert extract_spelled(said) is None


@pytest.mark.parametrize(
    ("said", "name"),
    [
        ("My name is Maria O'Connor.", "Maria O'Connor"),
        ("Maria O\u2019Connor", "Maria O'Connor"),
        ("my name is Maria O Connor", "Maria O'Connor"),
        ("it's maria o'connor", "Maria O'Connor"),
        ("Ann Smith-Jones", "Ann Smith-Jones"),
        ("My name is Maria Lopez.", "Maria Lopez"),
    ],
)
def test_names_keep_apostrophes(said: str, name: str) -> None:
    got = extract_name(said, 1.0)
    assert got is not None and got.value == name
