"""The default payment handler: Luhn check, then a POST to the local payment terminal."""

from __future__ import annotations

import socket

from appliance.pipeline.payments import LuhnHandoff, PaymentResult
from tests.unit.terminal import PaymentTerminal

#: Visa's published test number (Luhn-valid, never a real card).
TEST_PAN = "4111111111111111"


async def test_valid_card_is_posted_with_its_handoff_id() -> None:
    with PaymentTerminal(200) as terminal:
        result = await LuhnHandoff(terminal.url).handle(TEST_PAN, "a1b2c3d4e5f60718")
    assert result == PaymentResult(True, "accepted")
    assert terminal.bodies == [{"handoff_id": "a1b2c3d4e5f60718", "pan": TEST_PAN}]
    assert terminal.content_types == ["application/json"]


async def test_terminal_refusal_is_declined() -> None:
    with PaymentTerminal(402) as terminal:
        result = await LuhnHandoff(terminal.url).handle(TEST_PAN, "h")
    assert result == PaymentResult(False, "declined") and len(terminal.bodies) == 1


async def test_bad_numbers_never_leave_the_appliance() -> None:
    with PaymentTerminal(200) as terminal:
        handler = LuhnHandoff(terminal.url)
        assert await handler.handle("4111111111111112", "h") == PaymentResult(False, "luhn_failed")
        assert await handler.handle("411111111111", "h") == PaymentResult(False, "bad_length")
        assert await handler.handle("4" * 20, "h") == PaymentResult(False, "bad_length")
        assert await handler.handle("4111-1111-1111-1111", "h") == PaymentResult(
            False, "bad_length"
        )
    assert terminal.bodies == []


async def test_no_url_means_no_processor() -> None:
    assert await LuhnHandoff("").handle(TEST_PAN, "h") == PaymentResult(False, "no_processor")


async def test_unreachable_terminal() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await LuhnHandoff(f"http://127.0.0.1:{port}/", timeout_s=2).handle(TEST_PAN, "h")
    assert result == PaymentResult(False, "processor_unreachable")
