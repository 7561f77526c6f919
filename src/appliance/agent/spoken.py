"""Spoken numbers, dates and spellings as Whisper writes them from a phone line (pure).

Callers say numbers in groups ("oh three, fifteen, eighty-eight"), digit by digit ("zero three
one five one nine eight eight"), with "oh" for zero and "double five"; Whisper tiny.en writes
some of it as digits and punctuates oddly ("March 4th. 19.82."). :func:`number_tokens` turns a
turn into number tokens that keep those groups; :func:`spoken_digits`, :func:`parse_birth_date`
and :func:`parse_spelled` build on them. Word-number conversion follows the English number
grammar that ``text2num`` implements (units, teens, tens, "hundred", "thousand"), extended with
what that library leaves alone on purpose: "oh" for zero, "double"/"triple", ordinals as days
and spoken years ("nineteen eighty", "twenty oh one").

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

UNITS = {
    "zero": 0, "oh": 0, "o": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
MONTHS = {
    "jan": 1, "january": 1, "feb": 2, "february": 2, "mar": 3, "march": 3, "apr": 4,
    "april": 4, "may": 5, "jun": 6, "june": 6, "jul": 7, "july": 7, "aug": 8, "august": 8,
    "sep": 9, "sept": 9, "september": 9, "oct": 10, "october": 10, "nov": 11,
    "november": 11, "dec": 12, "december": 12,
}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3}
_NUMBER_WORDS = set(UNITS) | set(TEENS) | set(TENS) | set(ORDINALS) | {"hundred", "thousand"}
_TOKEN = re.compile(r"\d+(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)?|[,;:!?]|\.")


@dataclass(frozen=True)
class NumberToken:
    """One number as said: ``digits`` (leading zeros kept: "oh three" is ``"03"``), ``kind``.

    ``kind`` is ``"digits"`` (digit words said one by one, merged: "five five five" is
    ``"555"``), ``"number"`` (a number word group such as "eighty-eight", or digits Whisper
    wrote), or ``"ordinal"`` ("fourth", "15th"). ``joined`` is ``False`` when a comma or a word
    other than a number separated it from the previous token.
    """

    digits: str
    kind: str
    joined: bool

    @property
    def value(self) -> int:
        """The integer value."""
        return int(self.digits)


def _words(text: str) -> list[str]:
    said = text.lower().replace("\u2019", "'").replace("-", " ")
    return _TOKEN.findall(said)


def number_tokens(text: str) -> list[NumberToken]:
    """The numbers in ``text`` in order, keeping the groups they were said in.

    "oh three, fifteen, eighty-eight" gives ``03``, ``15``, ``88``; "zero three one five" gives
    one ``0315``; "double five" gives ``55``; "nineteen eighty" gives ``1980`` (a spoken year);
    "two thousand and one" gives ``2001``; "March 4th. 19.82." gives ``4`` (ordinal), ``1982``.
    """
    words = _words(text)
    raw: list[tuple[str, str, bool]] = []  # (digits, kind, joined)
    joined = False
    i = 0

    def is_number_word(k: int) -> bool:
        return 0 <= k < len(words) and (
            words[k] in _NUMBER_WORDS or words[k] in _REPEAT or words[k][0].isdigit()
        )

    while i < len(words):
        w = words[i]
        if w[0].isdigit():
            kind = "ordinal" if w[-1].isalpha() else "number"
            raw.append((re.sub(r"\D", "", w), kind, joined))
            joined = True
        elif w in _REPEAT and i + 1 < len(words) and words[i + 1] in UNITS:
            raw.append((str(UNITS[words[i + 1]]) * _REPEAT[w], "digits", joined))
            joined = True
            i += 1
        elif w in ("oh", "o"):
            if is_number_word(i + 1) or (raw and joined and is_number_word(i - 1)):
                raw.append(("0", "digits", joined))
                joined = True
            else:
                joined = False
        elif w in UNITS:
            raw.append((str(UNITS[w]), "digits", joined))
            joined = True
        elif w in TEENS:
            raw.append((str(TEENS[w]), "number", joined))
            joined = True
        elif w in TENS:
            value = TENS[w]
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt in UNITS and UNITS[nxt] > 0 and nxt not in ("oh", "o"):
                raw.append((str(value + UNITS[nxt]), "number", joined))
                i += 1
            elif nxt in ORDINALS and ORDINALS[nxt] < 10:
                raw.append((str(value + ORDINALS[nxt]), "ordinal", joined))
                i += 1
            else:
                raw.append((str(value), "number", joined))
            joined = True
        elif w in ORDINALS:
            raw.append((str(ORDINALS[w]), "ordinal", joined))
            joined = True
        elif w in ("hundred", "thousand") and raw and raw[-1][1] != "ordinal" and joined:
            scale = 100 if w == "hundred" else 1000
            digits, _kind, was_joined = raw.pop()
            total = int(digits) * scale
            # "two thousand (and) one", "one hundred twenty": add what follows below the scale
            k = i + 1
            if k < len(words) and words[k] == "and":
                k += 1
            rest = number_tokens(" ".join(words[k : k + 2])) if k < len(words) else []
            if rest and rest[0].kind != "digits" and rest[0].value < scale:
                consumed = 2 if (k + 1 < len(words) and _is_pair(words[k], words[k + 1])) else 1
                total += rest[0].value
                i = k + consumed - 1
            elif rest and rest[0].kind == "digits" and len(rest[0].digits) == 1:
                total += rest[0].value
                i = k
            raw.append((str(total), "number", was_joined))
            joined = True
        elif w == "." or w == "and":
            pass  # "19.82." and "two thousand and one" keep the group together
        else:
            joined = False
        i += 1
    return _join_years(_merge_digits(raw))


def _is_pair(first: str, second: str) -> bool:
    return first in TENS and (second in UNITS or second in ORDINALS) and second not in ("oh", "o")


def _merge_digits(raw: list[tuple[str, str, bool]]) -> list[NumberToken]:
    out: list[NumberToken] = []
    for digits, kind, joined in raw:
        if kind == "digits" and out and out[-1].kind == "digits" and joined:
            out[-1] = NumberToken(out[-1].digits + digits, "digits", out[-1].joined)
        else:
            out.append(NumberToken(digits, kind, joined))
    return out


def _join_years(tokens: list[NumberToken]) -> list[NumberToken]:
    """Join spoken years: "nineteen eighty" -> 1980, "twenty oh one" -> 2001, "19.82" -> 1982."""
    out: list[NumberToken] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        century = tok.kind == "number" and tok.digits in ("18", "19", "20")
        # "twenty nineteen eighty" is "20" then "1980": let the later 19 take its pair.
        later = i + 2 < len(tokens) and nxt is not None and nxt.digits in ("18", "19")
        if (
            century
            and nxt is not None
            and nxt.joined
            and nxt.kind != "ordinal"
            and len(nxt.digits) == 2
            and not later
        ):
            out.append(NumberToken(tok.digits + nxt.digits, "number", tok.joined))
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def spoken_digits(text: str) -> str:
    """Every digit said in ``text``, in order.

    "five five five, one two three four" -> ``"5551234"``; "oh double seven" -> ``"077"``;
    keypad "0315" -> ``"0315"``.
    """
    return "".join(tok.digits for tok in number_tokens(text))


# --- dates of birth ------------------------------------------------------------------------------

_NUMERIC_DATE = re.compile(r"\b(\d{1,2})\s*([/.\-])\s*(\d{1,2})\s*\2\s*(\d{4}|\d{2})\b")


def resolve_year(year: int, digits: int, month: int, day: int, today: date) -> int:
    """A birth year from a two-digit year: the most recent past year.

    "88" -> 1988, "01" -> 2001, "30" said in 2026 -> 1930; four-digit years are returned as said.
    """
    if digits != 2:
        return year
    century = today.year // 100 * 100
    candidate = century + year
    try:
        if date(candidate, month, day) > today:
            candidate -= 100
    except ValueError:
        if candidate > today.year:
            candidate -= 100
    return candidate


def _make(year: int, ydigits: int, month: int, day: int, today: date) -> date | None:
    try:
        return date(resolve_year(year, ydigits, month, day, today), month, day)
    except ValueError:
        return None  # February 30, month 13


@dataclass(frozen=True)
class ParsedDate:
    """A date parsed from speech and how sure the parse is (0..1, before STT confidence)."""

    value: date
    certainty: float


def parse_birth_date(text: str, today: date) -> ParsedDate | None:
    """A calendar date from how callers say a date of birth (US month-day-year order).

    Accepted: "March 4th, 1982", "the fourth of July 1975", "March the 15th 88",
    "7/4/01", "03-15-1988", "oh three, fifteen, eighty-eight", "zero three one five one nine
    eight eight", keypad ``03151988``. Two-digit years resolve to the most recent past year.
    The range check (1900..today) is the caller's; impossible dates (February 30) give
    ``None``, as does a turn without a year.
    """
    said = text.lower()
    numeric = _NUMERIC_DATE.search(said)
    if numeric:
        first, second, year = int(numeric[1]), int(numeric[3]), numeric[4]
        month, day = (first, second) if first <= 12 else (second, first)
        value = _make(int(year), len(year), month, day, today)
        return ParsedDate(value, 0.7) if value else None
    months = [MONTHS[w] for w in _words(said) if w in MONTHS]
    tokens = number_tokens(said)
    if months:
        return _with_month_name(months[0], tokens, today)
    return _numbers_only(tokens, today)


def _with_month_name(month: int, tokens: list[NumberToken], today: date) -> ParsedDate | None:
    years = [t for t in tokens if t.kind != "ordinal" and len(t.digits) == 4]
    rest = [t for t in tokens if t not in years]
    if len(years) == 1 and rest:
        ordinals = [t for t in rest if t.kind == "ordinal"]
        day = (ordinals or rest)[0].value
        value = _make(years[0].value, 4, month, day, today)
    elif not years and len(rest) == 2:
        day_tok, year_tok = rest
        if year_tok.kind == "ordinal" and day_tok.kind != "ordinal":
            day_tok, year_tok = year_tok, day_tok
        if year_tok.kind == "ordinal" or len(year_tok.digits) > 2:
            return None
        value = _make(year_tok.value, 2, month, day_tok.value, today)
    else:
        return None
    return ParsedDate(value, 0.95) if value else None


def _numbers_only(tokens: list[NumberToken], today: date) -> ParsedDate | None:
    if len(tokens) == 3 and len(tokens[2].digits) in (2, 4) and len(tokens[0].digits) <= 2:
        month, day, year = tokens
        value = _make(year.value, len(year.digits), month.value, day.value, today)
        return ParsedDate(value, 0.85) if value else None
    digits = "".join(t.digits for t in tokens)
    if len(digits) == 8 and len(tokens) == 1:
        value = _make(int(digits[4:]), 4, int(digits[:2]), int(digits[2:4]), today)
        return ParsedDate(value, 1.0) if value else None
    # Unsegmented: every month-day-year split of the digits; accept only an unambiguous one.
    found: set[date] = set()
    for mlen in (1, 2):
        for dlen in (1, 2):
            ylen = len(digits) - mlen - dlen
            if ylen not in (2, 4):
                continue
            m, d, y = digits[:mlen], digits[mlen : mlen + dlen], digits[mlen + dlen :]
            if (mlen == 2 and m[0] not in "01") or (dlen == 2 and d[0] not in "0123"):
                continue
            value = _make(int(y), ylen, int(m), int(d), today)
            if value and value <= today:
                found.add(value)
    if len(found) == 1:
        return ParsedDate(found.pop(), 0.8 if len(digits) == 8 else 0.7)
    return None


# --- spelled names -------------------------------------------------------------------------------

NATO = {
    "alpha": "a", "alfa": "a", "bravo": "b", "charlie": "c", "delta": "d", "echo": "e",
    "foxtrot": "f", "golf": "g", "hotel": "h", "india": "i", "juliet": "j", "juliett": "j",
    "kilo": "k", "lima": "l", "mike": "m", "november": "n", "oscar": "o", "papa": "p",
    "quebec": "q", "romeo": "r", "sierra": "s", "tango": "t", "uniform": "u", "victor": "v",
    "whiskey": "w", "xray": "x", "yankee": "y", "zulu": "z",
}  # fmt: skip
#: Letter names as Whisper writes them when a caller spells ("el", "oh", "see").
LETTER_NAMES = {
    "ay": "a", "bee": "b", "be": "b", "see": "c", "sea": "c", "cee": "c", "dee": "d",
    "ee": "e", "ef": "f", "eff": "f", "gee": "g", "aitch": "h", "eye": "i", "jay": "j",
    "kay": "k", "el": "l", "ell": "l", "em": "m", "en": "n", "oh": "o", "pee": "p",
    "cue": "q", "queue": "q", "are": "r", "ar": "r", "ess": "s", "tee": "t", "tea": "t",
    "you": "u", "vee": "v", "ex": "x", "why": "y", "zee": "z", "zed": "z",
}  # fmt: skip
_SPELL_FILLER = {
    "um", "uh", "er", "ah", "it's", "its", "it", "is", "spelled", "spelt", "that's", "thats",
    "my", "last", "family", "surname", "name", "the", "and", "then", "capital", "okay", "ok",
    "so", "letter", "yes", "yeah", "sure", "that", "spell", "i", "will", "i'll", "small",
}  # fmt: skip
_APOSTROPHE = {"apostrophe", "apostrophes", "'"}
_HYPHEN = {"hyphen", "dash"}


def parse_spelled(text: str) -> str | None:
    """A family name spelled letter by letter, in title case, or ``None``.

    "O apostrophe C O N N O R" -> ``"O'Connor"``; "L-O-P-E-Z" -> ``"Lopez"``; "L as in Lima,
    O as in Oscar, ..." -> the letters before "as in"; "double N" repeats; "hyphen" joins
    ("Smith hyphen Jones" spelled out). Fewer than two letters, or a word that is neither a
    letter nor spelling talk, gives ``None``.
    """
    said = text.replace("\u2019", "'")
    # "L.O.P.E.Z", "L-O-P-E-Z" and "L, O, P" separate letters; keep "'" between letters.
    said = re.sub(r"(?<=\b[A-Za-z])[.\-,](?=\s*[A-Za-z]\b)", " ", said)
    said = re.sub(r"\b([A-Za-z])'([A-Za-z])\b", r"\1 ' \2", said)
    said = re.sub(r"\bx[- ]ray\b", "xray", said, flags=re.IGNORECASE)
    words = re.findall(r"[A-Za-z]+|'", said)
    out: list[str] = []
    i = 0
    repeat = 1
    unknown = 0
    while i < len(words):
        raw = words[i]
        w = raw.lower()
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        if w == "as" and nxt in ("in", "for"):
            i += 3  # "L as in Lima": the letter was already taken
            continue
        if w in ("double", "triple"):
            repeat = _REPEAT[w]
        elif w in _APOSTROPHE:
            out.append("'")
        elif w in _HYPHEN:
            out.append("-")
        elif len(w) == 1:
            out.append(w * repeat)
            repeat = 1
        elif w in NATO:
            out.append(NATO[w] * repeat)
            repeat = 1
        elif w in LETTER_NAMES and not (w in ("you", "are", "see", "why") and len(out) == 0):
            out.append(LETTER_NAMES[w] * repeat)
            repeat = 1
        elif w in _SPELL_FILLER:
            pass
        else:
            unknown += 1
        i += 1
    letters = "".join(out).strip("'-")
    if unknown or sum(c.isalpha() for c in letters) < 2:
        return None
    return title_name(letters)


def title_name(name: str) -> str:
    """Title case for a family name.

    "o'connor" -> "O'Connor", "mcdonald" -> "McDonald", "smith-jones" -> "Smith-Jones".
    """
    parts = re.split(r"(['\-])", name.lower())
    titled = "".join(p[:1].upper() + p[1:] if p not in ("'", "-") else p for p in parts)
    if re.match(r"Mc[a-z]{2}", titled):
        titled = "Mc" + titled[2:].capitalize()
    return titled
