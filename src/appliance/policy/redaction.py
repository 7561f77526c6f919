"""PHI and card-data redaction for transcripts (pure functions).

Used for views without PHI access and for anything that leaves the encrypted store. Rules:

* ``[PAN]``: 13-19 digit sequences (spaces or dashes allowed between digits) that pass the Luhn
  check (ISO/IEC 7812-1), i.e. primary account numbers (PCI DSS).
* ``[SAD]``: 3-4 digit codes after "security code", "CVV", "CVC" or "card verification"
  (sensitive authentication data, PCI DSS 3.2).
* ``[DOB]``: dates (``03/04/1982``, ``1982-03-04``, ``March 4, 1982``, ``4 March 1982``).
* ``[PHONE]``: North American numbers (10 digits, optional +1, common separators).
* ``[MRN]``: the token after "MRN", "medical record number" or "member ID".
* ``[ADDRESS]``: a house number followed by up to four words and a street suffix.
* ``[NAME]``: capitalised words after "my name is", "this is", "I'm" or "patient".

Presidio (an NER-based recogniser) was considered; its English models download from outside
PyPI, so the offline appliance uses these rules. Numbers and dates are ours in any case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december|"
    "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_STREET = (
    "street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|"
    "terrace|circle|highway|hwy|parkway"
)

_RULES: list[tuple[str, re.Pattern[str]]] = [
    (
        "SAD",
        re.compile(
            r"(?i)(?:security code|cvv2?|cvc|card verification(?: code| value)?)\D{0,20}?"
            r"(?P<x>\d{3,4})\b"
        ),
    ),
    (
        "MRN",
        re.compile(
            r"(?i)(?:\bmrn\b|medical record(?: number)?|member id|member number)\W{0,5}"
            r"(?:is\s+)?(?P<x>[A-Z0-9][A-Z0-9-]{3,})"
        ),
    ),
    (
        "DOB",
        re.compile(
            rf"(?i)\b(?P<x>\d{{1,2}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}|\d{{4}}-\d{{2}}-\d{{2}}|"
            rf"(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}|"
            rf"\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS}),?\s+\d{{4}})\b"
        ),
    ),
    (
        "PHONE",
        re.compile(r"(?<!\d)(?P<x>(?:\+?1[\s.-]?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4})(?!\d)"),
    ),
    (
        "ADDRESS",
        re.compile(rf"(?i)\b(?P<x>\d{{1,6}}\s+(?:[a-z]+\s+){{0,3}}?[a-z]+\s+(?:{_STREET}))\b\.?"),
    ),
    (
        "NAME",
        re.compile(
            r"(?:[Mm]y name is|[Tt]his is|I'm|I am|[Pp]atient(?: name)?(?: is)?)\s+"
            r"(?P<x>[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+){0,2})"
        ),
    ),
]

_DIGIT_RUN = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check of a string of digits (ISO/IEC 7812-1 Annex B)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class Span:
    """One redacted span of the original text: [start, end) and its label."""

    start: int
    end: int
    label: str


def find_phi(text: str) -> list[Span]:
    """Return non-overlapping PHI/PCI spans, earliest and longest first."""
    spans: list[Span] = []
    for match in _DIGIT_RUN.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            spans.append(Span(match.start(), match.end(), "PAN"))
    for label, pattern in _RULES:
        for match in pattern.finditer(text):
            spans.append(Span(match.start("x"), match.end("x"), label))
    spans.sort(key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for span in spans:
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept


def redact(text: str) -> str:
    """Replace every PHI/PCI span with its ``[LABEL]``."""
    out = []
    pos = 0
    for span in find_phi(text):
        out.append(text[pos : span.start])
        out.append(f"[{span.label}]")
        pos = span.end
    out.append(text[pos:])
    return "".join(out)


def redact_content(value: object) -> object:
    """Redact every string inside a JSON-like structure (dicts, lists), leaving keys alone.

    Used for exports and views without PHI access: the record structure, times and
    identifiers stay, every text value passes through :func:`redact`.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_content(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_content(v) for k, v in value.items()}
    return value
