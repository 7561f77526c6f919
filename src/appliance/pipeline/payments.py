"""Payment hand-off: where the card data typed during a PCI pause goes.

The PCI gate (:mod:`appliance.pipeline.pci`) collects the card number, expiry date and
security code and calls a :class:`PaymentHandler` once per pause with a :class:`CardEntry`;
this module holds that interface and the default handler, :class:`LuhnHandoff`, an HTTP client
for a local payment terminal. Nothing here logs or stores the card data; results carry only a
fixed outcome name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Protocol

from appliance.policy.redaction import luhn_valid


@dataclass(frozen=True)
class PaymentResult:
    """``ok`` when the processor accepted the card; ``outcome`` is a fixed name, no digits."""

    ok: bool
    outcome: str


@dataclass(frozen=True)
class CardEntry:
    """What the caller keyed during one PCI pause (digits only; an entry may be empty).

    ``pan``: the primary account number; ``expiry``: ``MMYY``; ``cvv``: the card security code
    (CVV2/CVC2/CID, sensitive authentication data: PCI DSS v4.0 req. 3.3.1.2, never stored).
    Its ``repr`` shows digit counts only, so a log line or traceback that prints it leaks
    nothing.
    """

    pan: str
    expiry: str = field(default="")
    cvv: str = field(default="")

    def __repr__(self) -> str:
        return (
            f"CardEntry(pan=<{len(self.pan)} digits>, expiry=<{len(self.expiry)} digits>, "
            f"cvv=<{len(self.cvv)} digits>)"
        )

    __str__ = __repr__


class PaymentHandler(Protocol):
    """Receives the card data typed during a PCI pause."""

    async def handle(self, card: CardEntry, handoff_id: str) -> PaymentResult:
        """Process ``card`` for the hand-off ``handoff_id``; never log or store it."""
        ...


def expiry_valid(expiry: str, today: dt.date | None = None) -> bool:
    """Whether ``expiry`` (``MMYY``) is a real month that has not ended yet.

    A card is valid through the last day of its expiry month (ISO/IEC 7813). ``today``
    defaults to the current UTC date.
    """
    if len(expiry) != 4 or not expiry.isdigit():
        return False
    month, year = int(expiry[:2]), 2000 + int(expiry[2:])
    if not 1 <= month <= 12:
        return False
    now = today or dt.datetime.now(dt.UTC).date()
    return (year, month) >= (now.year, now.month)


class LuhnHandoff:
    """The default handler: check the card's digits (Luhn, ISO/IEC 7812-1), then hand off.

    The hand-off is an HTTP POST of the JSON object ``{"handoff_id": str, "pan": str,
    "expiry": "MMYY", "cvv": str}`` (``Content-Type: application/json``) to a local payment
    terminal (``[payments] handoff_url``, loopback or the clinic LAN). Outcomes, in the order
    they are checked (none but the last two POST anything):

    * ``bad_length``: not 13-19 digits; ``luhn_failed``: the check digit is wrong;
    * ``bad_expiry``: not ``MMYY`` with a month 01-12; ``expired``: the month has passed;
    * ``bad_cvv``: the security code is not 3 or 4 digits;
    * ``no_processor``: no URL is configured (the workflow then transfers to staff);
    * ``processor_unreachable``: connection refused, DNS or timeout;
    * ``accepted`` (``ok``) for a 2xx answer, ``declined`` for any other status.

    Args:
        url: The payment terminal's URL, or ``""``.
        timeout_s: HTTP timeout in seconds.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self._url = url
        self._timeout = timeout_s

    async def handle(self, card: CardEntry, handoff_id: str) -> PaymentResult:
        """Validate and hand off ``card``; see the class docstring for outcomes (never raises)."""
        pan = card.pan
        if not 13 <= len(pan) <= 19 or not pan.isdigit():
            return PaymentResult(False, "bad_length")
        if not luhn_valid(pan):
            return PaymentResult(False, "luhn_failed")
        expiry = card.expiry
        if len(expiry) != 4 or not expiry.isdigit() or not 1 <= int(expiry[:2]) <= 12:
            return PaymentResult(False, "bad_expiry")
        if not expiry_valid(expiry):
            return PaymentResult(False, "expired")
        if not 3 <= len(card.cvv) <= 4 or not card.cvv.isdigit():
            return PaymentResult(False, "bad_cvv")
        if not self._url:
            return PaymentResult(False, "no_processor")
        body = json.dumps(
            {"handoff_id": handoff_id, "pan": pan, "expiry": card.expiry, "cvv": card.cvv}
        ).encode()
        try:
            status = await asyncio.to_thread(self._post, body)
        except (OSError, urllib.error.URLError):
            return PaymentResult(False, "processor_unreachable")
        ok = 200 <= status < 300
        return PaymentResult(ok, "accepted" if ok else "declined")

    def _post(self, body: bytes) -> int:
        request = urllib.request.Request(
            self._url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
