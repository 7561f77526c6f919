"""PHI and card-data redaction rules."""

from __future__ import annotations

import pytest

from appliance.policy.redaction import luhn_valid, redact


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
