"""PHI and card-data redaction for transcripts (pure functions).

Two uses:

* :func:`redact_card` runs on every caller turn before it reaches the audit log
  (``TurnEnded.user_text``), the dialogue and the LLM context: card data must not be stored even
  encrypted (PCI DSS v4.0 req. 3.2.1 and 3.3.1: no sensitive authentication data after
  authorisation; req. 3.4/3.5: the PAN kept out of anything we do not need it for).
* :func:`redact` / :func:`redact_content` make the views without PHI access (``audit export
  --redact``, the transcript given to a judge): card data and PHI.

Card data (in :func:`redact_card` and :func:`redact`):

* ``[PAN]``: a run of 13-19 digits that passes the Luhn check (ISO/IEC 7812-1), in any grouping
  (``4111 1111 1111 1111``, ``4111-1111-...``, ``4111, 1111, ...``, ``4111.1111....``) and with
  spelled-out digits (``four one one one ...``, ``oh`` for zero, ``double four``). In a *card
  context* (the text, or an earlier turn of the call, talks about a card, a CVV or an expiry)
  any run of 13 or more digits is taken as a PAN, Luhn or not: speech recognition breaks the
  check digit easily, and a broken PAN is still a PAN (so is a PAN read on into its expiry and
  code). Without a card context a run must be 13-19 digits and pass the check.
* ``[SAD]``: a code of 3-8 digits (digits or words) after "security code", "CVV", "CVC",
  "card verification ...", "verification code", "three/four digit code" or "code on the back"
  (sensitive authentication data, PCI DSS v4.0 req. 3.3.1.2).
* ``[EXPIRY]``: the date after "expires", "expiry", "expiration (date)",
  "exp" or "valid thru" (``12/28``, ``1228``, ``December 2028``, ``twelve twenty-eight``).

PHI (in :func:`redact` only):

* ``[DOB]``: dates (``03/04/1982``, ``1982-03-04``, ``March 4, 1982``, ``4 March 1982``).
* ``[PHONE]``: North American numbers (10 digits, optional +1, common separators).
* ``[MRN]``: the token after "MRN", "medical record number" or "member ID".
* ``[ADDRESS]``: a house number followed by up to four words and a street suffix.
* ``[NAME]``: capitalised words after "my name is", "this is", "I'm" or "patient"; two or three
  capitalised words in a row that are not common words (``Maria Lopez``); and every name the
  call captured (``names``: the dialogue's filled name slots), in any case.

Presidio (an NER-based recogniser) was considered; its English models download from outside
PyPI, so the offline appliance uses these rules. Numbers and dates are ours in any case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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

#: Spoken digits as speech recognition writes them out.
_DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "niner": "9",
}
_REPEAT_WORDS = {"double": 2, "triple": 3}
#: Number words that are not single digits (spoken expiry dates: "twelve twenty-eight").
_NUMBER_WORDS = (
    "ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|"
    "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand"
)
_TOKEN = re.compile(r"\d+|[A-Za-z]+")
#: What may stand between the digits of one spoken number: spaces, commas, dots, dashes.
_RUN_GAP = re.compile(r"[\s,.\-]{0,4}")

#: Words that make a turn about a card (the "card context").
_CARD_WORDS = re.compile(
    r"(?i)\b(?:card|credit|debit|visa|master ?card|amex|american express|discover|"
    r"cvv2?|cvc2?|security code|card verification)\b"
)
_SAD_KEY = re.compile(
    r"(?i)\b(?:security (?:code|number)|cvv2?|cvc2?|card verification(?: code| value| number)?|"
    r"verification (?:code|number)|(?:three|four|3|4)[- ]digit (?:code|number)|"
    r"code on the back)\b"
)
_EXPIRY_KEY = re.compile(
    r"(?i)\b(?:expir(?:es|ed|y|ation)(?: date)?|exp(?:\.|iry)?(?: date)?|"
    r"valid (?:thru|through|until))\b"
)
_EXPIRY_VALUE = re.compile(
    rf"(?i)(?:\s|[,/.\-]|\b(?:is|on|of|in|the|slash|\d+|{_MONTHS}|{_NUMBER_WORDS}|"
    rf"{'|'.join(_DIGIT_WORDS)})\b)+"
)
_EXPIRY_HAS_VALUE = re.compile(
    rf"(?i)\d|\b(?:{_MONTHS}|{_NUMBER_WORDS}|{'|'.join(_DIGIT_WORDS)})\b"
)

#: Capitalised words that start sentences or name things, not people.
_NOT_NAMES = frozenset(
    """
    i i'm i'll i've i'd a an the and or but so yes yeah no not okay ok hi hello hey thanks thank
    you please sorry good morning afternoon evening night well oh um uh hmm sure great fine
    what when where which who why how can could would should will may might do does did is
    are was were be have has had my your our their his her its it this that these those there
    here we they he she me us them monday tuesday wednesday thursday friday saturday sunday
    today tomorrow yesterday january february march april june july august september october
    november december jan feb mar apr jun jul aug sep sept oct nov dec dr doctor mr mrs ms
    miss nurse clinic hospital center centre medical health insurance pharmacy street st road
    avenue lane drive court boulevard way visa mastercard amex american express discover card
    ai english spanish god christmas easter new year
    """.split()
)
_CAP_WORD = r"[A-Z][a-z]+(?:['-][A-Za-z]+)?"
_CAP_RUN = re.compile(rf"\b{_CAP_WORD}(?:[ \t]+{_CAP_WORD})+\b")
#: Slot names whose values are people's names (``patient_name``, ``family_name`` ...).
_NAME_SLOT = re.compile(r"(?i)name")


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


@dataclass(frozen=True)
class _Run:
    """Adjacent digit tokens (``4111``, ``four``, ``double four``): [start, end), the digits."""

    start: int
    end: int
    digits: str
    #: Per token: (start, end, digits).
    parts: tuple[tuple[int, int, str], ...]


def _digit_tokens(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, digits)`` of every numeral or spoken digit, ``double four`` as one."""
    out: list[tuple[int, int, str]] = []
    tokens = list(_TOKEN.finditer(text))
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        word = tok.group().lower()
        if tok.group().isdigit():
            out.append((tok.start(), tok.end(), tok.group()))
        elif word in _DIGIT_WORDS:
            out.append((tok.start(), tok.end(), _DIGIT_WORDS[word]))
        elif word in _REPEAT_WORDS and i + 1 < len(tokens):
            nxt = tokens[i + 1]
            digit = nxt.group() if nxt.group().isdigit() else _DIGIT_WORDS.get(nxt.group().lower())
            gap = text[tok.end() : nxt.start()]
            if digit is not None and len(digit) == 1 and gap.isspace():
                out.append((tok.start(), nxt.end(), digit * _REPEAT_WORDS[word]))
                i += 1
        i += 1
    return out


def _digit_runs(text: str) -> list[_Run]:
    """Maximal runs of digit tokens joined by spaces, commas, dots or dashes."""
    runs: list[_Run] = []
    current: list[tuple[int, int, str]] = []
    for token in _digit_tokens(text):
        if current and not _RUN_GAP.fullmatch(text[current[-1][1] : token[0]]):
            runs.append(_make_run(current))
            current = []
        current.append(token)
    if current:
        runs.append(_make_run(current))
    return runs


def _make_run(parts: list[tuple[int, int, str]]) -> _Run:
    return _Run(parts[0][0], parts[-1][1], "".join(p[2] for p in parts), tuple(parts))


def is_card_context(text: str) -> bool:
    """Whether ``text`` talks about a payment card (card, credit, Visa, CVV, ...)."""
    return bool(_CARD_WORDS.search(text))


def find_card_data(text: str, *, card_context: bool = False) -> list[Span]:
    """Card data in ``text``: ``PAN``, ``SAD`` and ``EXPIRY`` spans (see the module docstring).

    Args:
        text: A caller turn or any transcript text.
        card_context: The call already talks about a card (an earlier turn did); the text's own
            card words count too.

    Returns:
        Spans in text order; they may overlap (:func:`find_phi` resolves overlaps).
    """
    context = card_context or is_card_context(text)
    runs = _digit_runs(text)
    spans: list[Span] = []
    for run in runs:
        n = len(run.digits)
        # Longer runs without a card word stay: two phone numbers read in one breath would
        # hold a Luhn-valid 13-19 digit stretch one time in ten.
        if (13 <= n <= 19 and luhn_valid(run.digits)) or (n >= 13 and context):
            spans.append(Span(run.start, run.end, "PAN"))
    for key in _SAD_KEY.finditer(text):
        after = [r for r in runs if key.end() <= r.start <= key.end() + 25]
        if after and 3 <= len(after[0].digits) <= 8:
            gap = text[key.end() : after[0].start]
            if not re.search(r"[.;!?]", gap):
                spans.append(Span(after[0].start, after[0].end, "SAD"))
    for key in _EXPIRY_KEY.finditer(text):
        value = _EXPIRY_VALUE.match(text, key.end())
        if value is None:
            continue
        parts = list(_EXPIRY_HAS_VALUE.finditer(value.group()))
        if parts:
            start = value.start() + parts[0].start()
            spans.append(Span(start, value.start() + parts[-1].end(), "EXPIRY"))
    spans.sort(key=lambda s: (s.start, -(s.end - s.start)))
    return spans


@dataclass(frozen=True)
class CardRedaction:
    """The result of :func:`redact_card`.

    ``text`` is the caller's words with card data replaced (``[PAN]``, ``[SAD]``,
    ``[EXPIRY]``); ``kinds`` the labels found (empty: nothing changed), so the dialogue can
    still learn that the caller tried to say a card number; ``card_context`` whether the call
    talks about a card from now on (pass it to the next turn's :func:`redact_card`).
    """

    text: str
    kinds: frozenset[str]
    card_context: bool


def redact_card(text: str, *, card_context: bool = False) -> CardRedaction:
    """Remove card data (PAN, CVV/SAD, expiry) from a caller's words; PHI stays.

    This is what the audit record, the dialogue and the LLM get (PCI DSS v4.0 req. 3.3.1:
    sensitive authentication data is not retained, not even encrypted).

    Args:
        text: The caller's turn as transcribed.
        card_context: An earlier turn of the call was about a card.
    """
    spans = _resolve(find_card_data(text, card_context=card_context))
    kinds = frozenset(s.label for s in spans)
    context = card_context or bool(kinds) or is_card_context(text)
    return CardRedaction(_apply(text, spans), kinds, context)


def _name_spans(text: str, names: Iterable[str]) -> list[Span]:
    spans: list[Span] = []
    for match in _CAP_RUN.finditer(text):
        # Runs of name-like words inside it: "Thank You" and "Dr Patel" give none.
        group: list[re.Match[str]] = []
        for word in [*re.finditer(r"\S+", match.group()), None]:
            if word is not None and word.group().lower() not in _NOT_NAMES:
                group.append(word)
                continue
            if len(group) >= 2:
                start, end = match.start() + group[0].start(), match.start() + group[-1].end()
                spans.append(Span(start, end, "NAME"))
            group = []
    for name in names:
        full = " ".join(name.split())
        if len(full) < 2:
            continue
        pattern = r"\s+".join(re.escape(w) for w in full.split())
        for match in re.finditer(rf"(?i)(?<!\w){pattern}(?!\w)", text):
            spans.append(Span(match.start(), match.end(), "NAME"))
        for part in full.split():
            if len(part) < 2 or part.lower() in _NOT_NAMES:
                continue
            cap = part[:1].upper() + part[1:].lower()
            for match in re.finditer(rf"(?<!\w)(?:{re.escape(cap)}|{re.escape(part)})(?!\w)", text):
                spans.append(Span(match.start(), match.end(), "NAME"))
    return spans


def _resolve(spans: list[Span]) -> list[Span]:
    """Non-overlapping spans, earliest and longest first."""
    spans = sorted(spans, key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for span in spans:
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept


def _apply(text: str, spans: list[Span]) -> str:
    out = []
    pos = 0
    for span in spans:
        out.append(text[pos : span.start])
        out.append(f"[{span.label}]")
        pos = span.end
    out.append(text[pos:])
    return "".join(out)


def find_phi(text: str, names: Iterable[str] = (), *, card_context: bool = False) -> list[Span]:
    """Return non-overlapping PHI/PCI spans, earliest and longest first.

    Args:
        text: Any transcript text.
        names: Names the call captured (filled name slots); redacted wherever they occur.
        card_context: See :func:`find_card_data`.
    """
    spans = find_card_data(text, card_context=card_context)
    for label, pattern in _RULES:
        for match in pattern.finditer(text):
            spans.append(Span(match.start("x"), match.end("x"), label))
    spans += _name_spans(text, names)
    return _resolve(spans)


def redact(text: str, names: Iterable[str] = (), *, card_context: bool = False) -> str:
    """Replace every PHI/PCI span with its ``[LABEL]`` (see :func:`find_phi`)."""
    return _apply(text, find_phi(text, tuple(names), card_context=card_context))


def captured_names(records: Iterable[Any]) -> list[str]:
    """The values of the name slots filled in a call's exported records.

    Args:
        records: ``audit export`` records (``{"kind", "meta", "content"}`` dicts); a
            ``SlotFilled`` record whose ``meta.slot`` contains ``name`` gives its
            ``content.value``. Anything else is ignored.
    """
    names: list[str] = []
    for record in records:
        if not isinstance(record, dict) or record.get("kind") != "SlotFilled":
            continue
        meta, content = record.get("meta"), record.get("content")
        if not isinstance(meta, dict) or not isinstance(content, dict):
            continue
        value = content.get("value")
        if _NAME_SLOT.search(str(meta.get("slot", ""))) and isinstance(value, str) and value:
            names.append(value)
    return names


def redact_content(value: object, names: Iterable[str] | None = None) -> object:
    """Redact every string inside a JSON-like structure (dicts, lists), leaving keys alone.

    Used for exports and views without PHI access: the record structure, times and
    identifiers stay, every text value passes through :func:`redact`.

    Args:
        value: A string, list or dict (e.g. a call's ``audit export``).
        names: Names to redact besides the rules; ``None``: the call's filled name slots
            found in ``value`` itself (:func:`captured_names`).
    """
    if names is None:
        names = captured_names(value if isinstance(value, list) else [value])
    found = tuple(names)
    return _redact_content(value, found)


def _redact_content(value: object, names: tuple[str, ...]) -> object:
    if isinstance(value, str):
        return redact(value, names)
    if isinstance(value, list):
        return [_redact_content(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _redact_content(v, names) for k, v in value.items()}
    return value
