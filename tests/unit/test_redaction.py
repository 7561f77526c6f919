"""PHI and card-data redaction rules."""

from __future__ import annotations

import re

import pytest

from appliance.policy.redaction import (
    captured_names,
    luhn_valid,
    redact,
    redact_card,
    redact_content,
)


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("my card is 4111 1111 1111 1111 thanks", "my card is [PAN] thanks"),
        ("card 4111-1111-1111-1111", "card [PAN]"),
        ("number 4111111111111112 is wrong", "number 4111111111111112 is wrong"),  # not Luhn
        ("the security code is 123", "the security code is [SAD]"),
        ("CVV 4321.", "CVV [SAD]."),
        ("I was born on March 4, 1982", "I was born on [DOB]"),
        ("date of birth 03/04/1982", "date of birth [DOB]"),
        ("born 4th of March 1982.", "born [DOB]."),
        ("call me at (555) 123-4567", "call me at [PHONE]"),
        ("my number is 555 123 4567", "my number is [PHONE]"),
        ("My MRN is AB12345", "My MRN is [MRN]"),
        ("medical record number 00123-77", "medical record number [MRN]"),
        ("I live at 42 Oak Tree Road", "I live at [ADDRESS]"),
        ("Hi, my name is Margaret Hamilton.", "Hi, my name is [NAME]."),
        ("What are your hours?", "What are your hours?"),
        ("I have 3 kids and 2 cats", "I have 3 kids and 2 cats"),
    ],
)
def test_redact(said: str, expected: str) -> None:
    assert redact(said) == expected


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("12ab")


@pytest.mark.parametrize(
    "said",
    [
        "my card is 4111, 1111, 1111, 1111.",
        "my card is 4111.1111.1111.1111",
        "it's 4111 1111 1111 1111",
        "4-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1",
        "four one one one one one one one one one one one one one one one",
        "Four, one, one, one. One, one, one, one. One, one, one, one. One, one, one, one.",
        "four double one one, one one one one, one one one one, triple one one",
        "oh four one one one one one one one one one one one one one one one",  # a leading "oh"
        "the number is 3782 822463 10005",  # Amex grouping, 15 digits
    ],
)
def test_a_spoken_card_number_in_any_grouping_is_redacted(said: str) -> None:
    out = redact_card(said)
    assert "PAN" in out.kinds and "[PAN]" in out.text
    assert sum(c.isdigit() for c in out.text) == 0
    assert not re.search(r"(?i)\b(?:one|four|oh)\b", out.text.replace("[PAN]", ""))
    assert redact(said).count("[PAN]") == 1


def test_a_number_that_broke_the_luhn_check_is_redacted_in_a_card_context() -> None:
    broken = "4111 1111 1111 1112"  # one digit misrecognised
    assert redact_card(f"my credit card is {broken}").text == "my credit card is [PAN]"
    # In a later turn of a call that talked about a card, the context carries over.
    assert redact_card(broken, card_context=True).text == "[PAN]"
    assert redact_card(broken).text == broken  # no card anywhere: a reference number
    # 13-19 digits only (or more, said in one breath in a card context).
    assert redact_card("my card is 4111 1111 1111 1112 737").text == "my card is [PAN]"
    assert redact_card("card 4111 1111 1112").text == "card 4111 1111 1112"  # 12 digits


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("the security code is 123", "the security code is [SAD]"),
        ("CVV 4321.", "CVV [SAD]."),
        ("The CVC is seven three seven.", "The CVC is [SAD]."),
        ("cvv2: 7 3 7", "cvv2: [SAD]"),
        ("the three digit code on the back is 737", "the three digit code on the back is [SAD]"),
        ("card verification value 0 4 2", "card verification value [SAD]"),
    ],
)
def test_security_codes_are_redacted(said: str, expected: str) -> None:
    out = redact_card(said)
    assert out.text == expected and out.kinds == {"SAD"} and out.card_context


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("It expires 12/28.", "It expires [EXPIRY]."),
        ("expiry 1228", "expiry [EXPIRY]"),
        ("expiration date is oh nine slash two seven", "expiration date is [EXPIRY]"),
        ("it expires twelve twenty-eight", "it expires [EXPIRY]"),
        ("valid thru December 2028, thanks", "valid thru [EXPIRY], thanks"),
        ("my prescription expires on Friday", "my prescription expires on Friday"),
    ],
)
def test_expiry_dates_are_redacted(said: str, expected: str) -> None:
    assert redact_card(said).text == expected


def test_a_whole_card_read_out_leaves_no_digit() -> None:
    said = (
        "Sure, it's a Visa, 4111 1111 1111 1111, expires oh nine twenty-seven, "
        "and the security code is 7 3 7."
    )
    out = redact_card(said)
    assert out.text == (
        "Sure, it's a Visa, [PAN], expires [EXPIRY], and the security code is [SAD]."
    )
    assert out.kinds == {"PAN", "EXPIRY", "SAD"}


@pytest.mark.parametrize(
    "said",
    [
        "My date of birth is March 4, 1982.",
        "It's 03/04/1982.",
        "zero three zero four one nine eight two",  # a spoken date of birth, 8 digits
        "my number is 555 123 4567",
        "call me back on five five five, one two three, four five six seven",
        "member ID 8812 4471",
        "I have 3 kids and 2 cats",
        "Tuesday at 10 30 please",
    ],
)
def test_digit_slots_keep_their_digits(said: str) -> None:
    """Dates of birth, phone numbers and member IDs are not card data: the dialogue needs them."""
    out = redact_card(said, card_context=True)
    assert out.text == said and out.kinds == frozenset()


def test_names_are_redacted_in_the_redacted_view() -> None:
    assert redact("Maria Lopez.") == "[NAME]."
    assert redact("Yes, this is for Maria Lopez-Garcia please") == (
        "Yes, this is for [NAME] please"
    )
    assert redact("Hi, I need to move my appointment on Tuesday") == (
        "Hi, I need to move my appointment on Tuesday"
    )
    assert redact("Thank You. Good Morning") == "Thank You. Good Morning"
    assert redact("Dr Patel at Oak Clinic") == "Dr Patel at Oak Clinic"
    # Names the call captured, in any case and alone.
    assert redact("it's for maria lopez, Maria's mother", ["Maria Lopez"]) == (
        "it's for [NAME], [NAME]'s mother"
    )
    assert redact("Lopez, L O P E Z", ["Lopez"]) == "[NAME], L O P E Z"
    assert redact_card("Maria Lopez.").text == "Maria Lopez."  # the audit record keeps PHI


def test_redacted_export_uses_the_names_the_call_captured() -> None:
    records = [
        {"kind": "TurnEnded", "meta": {}, "content": {"user_text": "it's maria lopez"}},
        {
            "kind": "SlotFilled",
            "meta": {"slot": "patient_name", "workflow": "reschedule"},
            "content": {"value": "Maria Lopez"},
        },
        {"kind": "AgentSpoke", "meta": {}, "content": {"text": "Thanks, Maria."}},
    ]
    assert captured_names(records) == ["Maria Lopez"]
    out = redact_content(records)
    assert isinstance(out, list)
    assert "maria" not in str(out).lower() and "lopez" not in str(out).lower()
    assert out[0]["content"]["user_text"] == "it's [NAME]"
    assert out[1]["meta"] == {"slot": "patient_name", "workflow": "reschedule"}


def test_two_phone_numbers_in_one_breath_are_not_a_card() -> None:
    said = "call me on 555 123 4567, 555 765 4321"
    assert redact_card(said).text == said
    assert redact(said) == "call me on [PHONE], [PHONE]"


def test_redaction_labels_do_not_read_as_the_callers_mood() -> None:
    """``[SAD]`` stands for a security code: a turn holding one is no sad or frustrated caller."""
    from appliance.text.sentiment import is_frustrated, sentiment

    turn = redact_card("The card is 4111 1111 1111 1111 and the CVV is 737.").text
    assert "[SAD]" in turn and sentiment(turn) == 0.0 and not is_frustrated(turn)
    assert sentiment("I am so sad and angry") < 0  # the words themselves still count
