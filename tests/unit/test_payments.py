"""The default payment handler: card checks, then a POST to the local payment terminal."""

from __future__ import annotations

import datetime as dt
import socket

import pytest

from appliance.pipeline.payments import CardEntry, LuhnHandoff, PaymentResult, expiry_valid
from tests.unit.terminal import PaymentTerminal

#: Visa's published test number (Luhn-valid, never a real card).
TEST_PAN = "4111111111111111"
#: December 2099: far enough ahead for any test run.
EXPIRY = "1299"
CVV = "737"
CARD = CardEntry(TEST_PAN, EXPIRY, CVV)


async def test_valid_card_is_posted_with_its_handoff_id() -> None:
    with PaymentTerminal(200) as terminal:
        result = await LuhnHandoff(terminal.url).handle(CARD, "a1b2c3d4e5f60718")
    assert result == PaymentResult(True, "accepted")
    assert terminal.bodies == [
        {"handoff_id": "a1b2c3d4e5f60718", "pan": TEST_PAN, "expiry": EXPIRY, "cvv": CVV}
    ]
    assert terminal.content_types == ["application/json"]


async def test_terminal_refusal_is_declined() -> None:
    with PaymentTerminal(402) as terminal:
        result = await LuhnHandoff(terminal.url).handle(CARD, "h")
    assert result == PaymentResult(False, "declined") and len(terminal.bodies) == 1


@pytest.mark.parametrize(
    ("card", "outcome"),
    [
        (CardEntry("4111111111111112", EXPIRY, CVV), "luhn_failed"),
        (CardEntry("411111111111", EXPIRY, CVV), "bad_length"),
        (CardEntry("4" * 20, EXPIRY, CVV), "bad_length"),
        (CardEntry("4111-1111-1111-1111", EXPIRY, CVV), "bad_length"),
        (CardEntry(TEST_PAN, "", CVV), "bad_expiry"),
        (CardEntry(TEST_PAN, "1399", CVV), "bad_expiry"),
        (CardEntry(TEST_PAN, "0099", CVV), "bad_expiry"),
        (CardEntry(TEST_PAN, "129", CVV), "bad_expiry"),
        (CardEntry(TEST_PAN, "0120", CVV), "expired"),
        (CardEntry(TEST_PAN, EXPIRY, ""), "bad_cvv"),
        (CardEntry(TEST_PAN, EXPIRY, "12"), "bad_cvv"),
        (CardEntry(TEST_PAN, EXPIRY, "12345"), "bad_cvv"),
    ],
)
async def test_bad_card_data_never_leaves_the_appliance(card: CardEntry, outcome: str) -> None:
    with PaymentTerminal(200) as terminal:
        assert await LuhnHandoff(terminal.url).handle(card, "h") == PaymentResult(False, outcome)
    assert terminal.bodies == []


def test_a_card_is_valid_through_its_expiry_month() -> None:
    today = dt.date(2026, 11, 30)
    assert expiry_valid("1126", today) and expiry_valid("0127", today)
    assert not expiry_valid("1026", today) and not expiry_valid("1325", today)
    assert not expiry_valid("11/26", today)


def test_the_card_entry_never_shows_its_digits() -> None:
    shown = repr(CARD) + str(CARD) + f"{CARD}"
    assert TEST_PAN not in shown and CVV not in shown and EXPIRY not in shown
    assert "16 digits" in shown


async def test_no_url_means_no_processor() -> None:
    assert await LuhnHandoff("").handle(CARD, "h") == PaymentResult(False, "no_processor")


async def test_unreachable_terminal() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await LuhnHandoff(f"http://127.0.0.1:{port}/", timeout_s=2).handle(CARD, "h")
    assert result == PaymentResult(False, "processor_unreachable")
