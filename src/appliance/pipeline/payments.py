"""Payment hand-off: where the card number typed during a PCI pause goes.

The PCI gate (:mod:`appliance.pipeline.pci`) collects the digits and calls a
:class:`PaymentHandler` once per pause; this module holds that interface and the default
handler, :class:`LuhnHandoff`, an HTTP client for a local payment terminal. Nothing here logs
or stores the card number; results carry only a fixed outcome name.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from appliance.policy.redaction import luhn_valid


@dataclass(frozen=True)
class PaymentResult:
    """``ok`` when the processor accepted the card; ``outcome`` is a fixed name, no digits."""

    ok: bool
    outcome: str


class PaymentHandler(Protocol):
    """Receives the card number typed during a PCI pause."""

    async def handle(self, pan: str, handoff_id: str) -> PaymentResult:
        """Process ``pan`` (digits only) for the hand-off ``handoff_id``; never log or store it."""
        ...


class LuhnHandoff:
    """The default handler: validate the Luhn check digit (ISO/IEC 7812-1), then hand off.

    The hand-off is an HTTP POST of the JSON object ``{"handoff_id": str, "pan": str}``
    (``Content-Type: application/json``) to a local payment terminal (``[payments]
    handoff_url``, loopback or the clinic LAN). Outcomes, in the order they are checked:

    * ``bad_length``: not 13-19 digits; ``luhn_failed``: the check digit is wrong (no POST);
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

    async def handle(self, pan: str, handoff_id: str) -> PaymentResult:
        """Validate and hand off ``pan``; see the class docstring for outcomes (never raises)."""
        if not 13 <= len(pan) <= 19 or not pan.isdigit():
            return PaymentResult(False, "bad_length")
        if not luhn_valid(pan):
            return PaymentResult(False, "luhn_failed")
        if not self._url:
            return PaymentResult(False, "no_processor")
        body = json.dumps({"handoff_id": handoff_id, "pan": pan}).encode()
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
