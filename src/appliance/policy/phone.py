"""Phone numbers for the TCPA gates: parsing and normalisation to E.164 with ``phonenumbers``.

Every store and check of the outbound gates (consent, do-not-call, calling window) keys a
callee by the E.164 form (ITU-T E.164, ``+`` country code and national number, no spaces),
so ``(212) 555-0134``, ``+1 212 555 0134`` and ``12125550134`` are the same person.
Parsing and validity come from Google's libphonenumber metadata (the ``phonenumbers`` port).
"""

from __future__ import annotations

import phonenumbers

from appliance.errors import ApplianceError

DEFAULT_REGION = "US"
"""Region (ISO 3166-1 alpha-2) assumed for numbers written without a ``+`` country code."""


class PolicyError(ApplianceError):
    """An outbound-call policy (TCPA gate) refused its input; messages hold no number."""

    stage = "policy"


class InvalidNumber(PolicyError, ValueError):
    """The text is not a valid, dialable phone number (the message never repeats it)."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_number", message)


def parse_number(raw: str, region: str = DEFAULT_REGION) -> phonenumbers.PhoneNumber:
    """Parse and validate a phone number.

    Args:
        raw: The number as written (``"+1 212 555 0134"``, ``"(212) 555-0134"``).
        region: ISO 3166-1 alpha-2 region for numbers without a ``+`` country code.

    Returns:
        The parsed number, valid per libphonenumber's metadata for its region.

    Raises:
        InvalidNumber: Not a number, or not a valid number for any region (e.g. a 555-01xx
            fiction number's area code does not exist, too few digits, letters).
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidNumber("empty phone number")
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber("not a phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber("not a valid phone number for its country")
    return parsed


def normalize_number(raw: str, region: str = DEFAULT_REGION) -> str:
    """The E.164 form of ``raw`` (``"+12125550134"``); see :func:`parse_number` for errors.

    Raises:
        InvalidNumber: ``raw`` is not a valid phone number.
    """
    return phonenumbers.format_number(
        parse_number(raw, region), phonenumbers.PhoneNumberFormat.E164
    )
