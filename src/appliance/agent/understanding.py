"""Understanding that stays correct with a tiny model: embeddings, rules and text normalisation.

* Intents come from cosine similarity between the caller's turn and each intent's example
  phrases, embedded with all-MiniLM-L6-v2 (nearest example per intent; Reimers & Gurevych 2019,
  Sentence-BERT). The score is the confidence.
* Safety cues (a medical emergency, a request for a person, goodbye) are rules and always win.
* Slots (names, dates of birth, appointment times, digit strings, yes/no) pass through inverse
  text normalisation (``text2num``'s ``alpha2digit``, plus our rule joining spoken years such as
  "19 82") and then ``dateparser`` or regular expressions. Every extraction carries a
  confidence: the STT confidence (``exp(mean avg_logprob)`` of the Whisper segments) times how
  certain the parse itself is.

Everything here is a pure function of its inputs except :class:`IntentClassifier`, which holds
the example embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from appliance.agent.spoken import parse_birth_date, parse_spelled, spoken_digits, title_name
from appliance.agent.workflow import SlotSpec, WorkflowSet

#: Intents at or above this cosine similarity start their workflow (measured on the default
#: workflows' examples against paraphrases; see tests/unit/test_understanding.py).
INTENT_ACCEPT = 0.5

#: Below INTENT_ACCEPT but at or above this, a turn is "unsure": the knowledge base is tried,
#: then a confirmation or, with a capable LLM configured, a constrained LLM classification.
INTENT_UNSURE = 0.35

Embed = Callable[[list[str]], np.ndarray]

#: ``(messages, schema) -> dict``: a reply constrained to a JSON schema, parsed
#: (``LlamaEngine.complete_json``).
CompleteJson = Callable[[list[dict[str, str]], dict[str, Any]], dict[str, Any]]


def normalise(text: str) -> str:
    """Lower-case, straighten apostrophes, collapse white space."""
    return " ".join(text.lower().replace("\u2019", "'").split())


# --- rules that always win ---------------------------------------------------------------------

_EMERGENCY = re.compile(
    r"\b(emergenc\w*|chest pains?|can'?t breathe|cannot breathe|not breathing|"
    r"bleeding (badly|a lot)|overdose\w*|suicid\w*|kill myself|stroke|unconscious)\b"
)
_HUMAN = re.compile(
    r"\b(operator|representative|receptionist|reception|front desk|front office|human|"
    r"real person|a person|live person|someone (real|there)|"
    r"(speak|talk)\w* (to|with) (\w+ )?(person|human|someone|somebody|staff|nurse|doctor|agent|"
    r"receptionist|representative|operator|office|desk|reception)|transfer me|agent|"
    r"put me (through|thru)|connect me|get me (someone|somebody|a person|a human|the office)|"
    r"(someone|somebody) (in|at|from) the (office|clinic|desk)|"
    r"(talk|speak)\w* to (someone|somebody|anyone|anybody))\b"
)
#: Whisper tiny.en's renderings of a caller saying "operator" on an 8 kHz line (heard in calls).
_HUMAN_MISHEARD = ("ah we're ready", "upper rator", "operate her", "opera tor", "up a rater")
#: Words a request for a person is made of, compared whole-turn by spelling and by sound.
_HUMAN_TARGETS = ("operator", "representative", "receptionist", "reception", "front desk")
#: Minimum rapidfuzz ratio (0-100) of a short turn to a target, in spelling and in metaphone
#: code both: "upper rator" scores 78/80 for "operator", "operation" 82/60 and "cooperate"
#: 71/67 do not pass (tests/unit/test_understanding.py).
HUMAN_FUZZY = 75.0
_HUMAN_FILLER = {
    "um", "uh", "er", "ah", "the", "a", "an", "please", "i", "want", "need", "can", "get",
    "give", "me", "just", "yes", "hi", "hello", "you", "could", "is", "to", "your",
}  # fmt: skip
_GOODBYE = re.compile(r"\b(good ?bye|bye|that'?s all|that is all|nothing else|hang up)\b")
_YES = re.compile(
    r"^\W*(yes|yeah|yea|yep|yup|ya|yah|sure|correct|right|exactly|affirmative|indeed|"
    r"that'?s (right|correct|it|the one|me)|that is (right|correct|it)|you got it|"
    r"uh[ -]?huh|mm[ -]?hmm|mhm|ok(ay)?|please do|please|go ahead|do it|sounds good|"
    r"absolutely|of course|definitely|certainly|perfect|great|yes please)\b"
)
_NO = re.compile(
    r"^\W*(no|nope|nah|negative|not really|not quite|not exactly|not right|not correct|"
    r"that'?s (wrong|not (right|it|correct|quite))|that is (wrong|not)|wrong|incorrect|"
    r"don'?t|do not|no thanks?|uh[ -]uh|nuh[ -]uh|actually no|wait no|not that)\b"
)
_LEAD_FILLER = re.compile(r"^\W*((um+|uh+|er+|ah+|oh|well|so|hmm+)\b\W*)+", re.IGNORECASE)
#: Words between a "no" and the corrected value: "no wait, Tuesday", "no, I said the 15th".
_CORRECTION_LEAD = re.compile(
    r"^\W*((wait|sorry|actually|i said|i meant|i mean|make (that|it)|rather|it'?s|it is|"
    r"it should be|should be|instead|but|not that|that'?s not (it|right)|um+|uh+)\b\W*)+",
    re.IGNORECASE,
)


def _sounds_like_human_request(said: str) -> bool:
    """A short turn that is a garbled "operator"/"receptionist" (spelling and sound both close)."""
    import jellyfish
    from rapidfuzz import fuzz

    if any(garble in said for garble in _HUMAN_MISHEARD):
        return True
    words = [w for w in re.findall(r"[a-z']+", said) if w not in _HUMAN_FILLER]
    if not 1 <= len(words) <= 3:
        return False
    heard = "".join(words).replace("'", "")
    sound = jellyfish.metaphone(heard)
    for target in _HUMAN_TARGETS:
        key = target.replace(" ", "")
        if (
            fuzz.ratio(heard, key) >= HUMAN_FUZZY
            and fuzz.ratio(sound, jellyfish.metaphone(key)) >= HUMAN_FUZZY
        ):
            return True
    return False


def global_intent(text: str) -> str | None:
    """Safety-level intents by rule: ``emergency``, ``human``, ``goodbye`` or ``None``.

    Order matters: an emergency cue beats everything, then a request for a person (in any of
    the wordings of :data:`_HUMAN`, or on a turn of at most three content words a known or
    fuzzy-matched mishearing of "operator"/"receptionist"/"representative"), then goodbye.
    """
    said = normalise(text)
    if _EMERGENCY.search(said):
        return "emergency"
    if _HUMAN.search(said) or _sounds_like_human_request(said):
        return "human"
    if _GOODBYE.search(said) and len(said.split()) <= 6:
        return "goodbye"
    return None


def _strip_lead(said: str) -> str:
    if re.match(r"^\W*(uh[ -]?huh|uh[ -]uh)\b", said, re.IGNORECASE):
        return said
    return _LEAD_FILLER.sub("", said)


def yes_no(text: str) -> bool | None:
    """``True`` for yes, ``False`` for no, ``None`` when the turn is neither.

    Leading fillers are skipped ("um, yeah"); "uh huh"/"mm hmm" are yes, "uh uh"/"not quite"/
    "that's not right" are no, and a "no" wins over a later "yes" ("no wait, yes" is no).
    """
    said = _strip_lead(normalise(text))
    if _NO.search(said):
        return False
    if _YES.search(said):
        return True
    return None


def split_correction(text: str) -> tuple[bool | None, str]:
    """The yes/no answer of a turn and what follows it, which may hold a corrected value.

    "no wait, Tuesday" -> ``(False, "Tuesday")``; "yes" -> ``(True, "")``; "Tuesday" ->
    ``(None, "Tuesday")``; "no, it's March 4th" -> ``(False, "March 4th")``. The remainder
    keeps the caller's casing, without the correction words ("wait", "I said", "it's").
    """
    answer = yes_no(text)
    said = text.replace("\u2019", "'").strip()
    if answer is None:
        return None, said
    rest = said
    pattern = _NO if answer is False else _YES
    for _ in range(3):  # "yeah, that's right", "no no, not quite"
        rest = _strip_lead(rest).lstrip(" \t,.;:!?-")
        match = pattern.match(normalise(rest))
        if not match:
            break
        # normalise() lower-cases and collapses spaces: map the length back onto ``rest``
        rest = rest[_original_span(rest, len(match.group(0).strip())) :]
    rest = _CORRECTION_LEAD.sub("", rest)
    return answer, rest.strip(" \t,.;:!?-")


def _original_span(text: str, normalised_len: int) -> int:
    """How many characters of ``text`` produce the first ``normalised_len`` of normalise()."""
    seen = 0
    prev_space = False
    for i, ch in enumerate(text):
        if seen >= normalised_len:
            return i
        if ch.isspace():
            if not prev_space:
                seen += 1
            prev_space = True
        else:
            seen += 1
            prev_space = False
    return len(text)


# --- intents -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntentResult:
    """The best intent for a turn.

    ``intent`` (or ``None``), cosine ``confidence`` 0..1, ``method`` (``"embedding"``,
    ``"llm"``), and the top three ``(intent, score)`` pairs.
    """

    intent: str | None
    confidence: float
    method: str
    candidates: tuple[tuple[str, float], ...]


class IntentClassifier:
    """Nearest-example intent matching over the workflows' example phrases.

    Args:
        embed: ``texts -> (n, d)`` L2-normalised embeddings.
        workflows: Supplies intents and their examples.
    """

    def __init__(self, embed: Embed, workflows: WorkflowSet) -> None:
        self._embed = embed
        self._labels: list[str] = []
        texts: list[str] = []
        for name, (_wf, spec) in workflows.intents().items():
            for example in spec.examples:
                self._labels.append(name)
                texts.append(example)
        self._matrix = embed(texts)
        self._intents = sorted(set(self._labels))

    @property
    def intents(self) -> list[str]:
        """All intent names (the enum a constrained LLM may choose from)."""
        return list(self._intents)

    def classify(self, text: str) -> IntentResult:
        """Score ``text`` against every intent; accept at :data:`INTENT_ACCEPT`."""
        if not text.strip():
            return IntentResult(None, 0.0, "embedding", ())
        query = self._embed([text])[0]
        sims = self._matrix @ query
        best: dict[str, float] = {}
        for label, score in zip(self._labels, sims, strict=True):
            best[label] = max(best.get(label, -1.0), float(score))
        ranked = sorted(best.items(), key=lambda kv: kv[1], reverse=True)[:3]
        top, score = ranked[0]
        intent = top if score >= INTENT_ACCEPT else None
        return IntentResult(intent, round(max(0.0, score), 3), "embedding", tuple(ranked))


# --- inverse text normalisation ----------------------------------------------------------------

_YEAR_PAIR = re.compile(r"\b(1[89]|20)[ .]?(\d{2})\b")
_ORDINAL_WORDS = {
    "first": "1st", "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th",
    "sixth": "6th", "seventh": "7th", "eighth": "8th", "ninth": "9th", "tenth": "10th",
    "eleventh": "11th", "twelfth": "12th", "thirteenth": "13th", "fourteenth": "14th",
    "fifteenth": "15th", "sixteenth": "16th", "seventeenth": "17th", "eighteenth": "18th",
    "nineteenth": "19th", "twentieth": "20th", "thirtieth": "30th",
}  # fmt: skip


def itn(text: str) -> str:
    """Inverse text normalisation for slot parsing: number words to digits, spoken years joined.

    "March fourth, nineteen eighty two" -> "March 4th, 1982"; "twenty first" -> "21st".
    """
    from text_to_num import alpha2digit

    words = text.replace("-", " ")
    words = re.sub(
        r"\btwenty (first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)\b",
        lambda m: str(20 + int(_ORDINAL_WORDS[m.group(1)][:-2])) + _ORDINAL_WORDS[m.group(1)][-2:],
        words,
        flags=re.IGNORECASE,
    )
    words = re.sub(r"\bthirty first\b", "31st", words, flags=re.IGNORECASE)
    words = re.sub(
        r"\b(" + "|".join(_ORDINAL_WORDS) + r")\b",
        lambda m: _ORDINAL_WORDS[m.group(1).lower()],
        words,
        flags=re.IGNORECASE,
    )
    out = alpha2digit(words, "en")
    # Whisper punctuates spoken dates oddly ("March 4th. 19.82."): drop sentence stops.
    out = re.sub(r"(?<=\w)\.(?=\s|$)", "", out)
    # "19 82" (alpha2digit reads "nineteen eighty two" as two numbers) -> "1982"
    return _YEAR_PAIR.sub(lambda m: m.group(1) + m.group(2), out)


# --- slots -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extraction:
    """A slot value.

    ``value`` (typed), ``display`` (how the agent reads it back), and ``confidence`` 0..1
    (STT confidence times parse certainty).
    """

    value: object
    display: str
    confidence: float


_NAME_LEAD = re.compile(
    r"\b(?:my name is|my name's|name is|this is|it's|it is|i am|i'm|the name is)\s+(.+)$",
    re.IGNORECASE,
)
_FILLERS = {
    "um", "uh", "er", "ah", "yes", "yeah", "hi", "hello", "so", "well", "okay", "ok", "please",
    "thanks", "sure",
}  # fmt: skip


def extract_name(text: str, stt_confidence: float) -> Extraction | None:
    """A caller's first and last name, e.g. "My name is Maria Lopez." -> ``"Maria Lopez"``.

    Apostrophes and hyphens stay ("Maria O'Connor", "Ann Smith-Jones"); a lone "O" or "D"
    before a capitalised word is the apostrophe prefix Whisper split off ("O Connor" ->
    "O'Connor"); lower-case words are title-cased ("o'connor" -> "O'Connor").

    Certainty: 0.95 after a lead-in ("my name is"), 0.9 for a turn that is only a capitalised
    name, 0.8 for a name picked out of other words; times ``stt_confidence``.
    """
    said = text.replace("\u2019", "'").replace("\u2018", "'")
    match = _NAME_LEAD.search(said)
    body = match.group(1) if match else said
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z'\-]*", body) if w.lower() not in _FILLERS]
    words = [w.strip("'-") for w in words]
    joined: list[str] = []
    for w in words:
        if joined and joined[-1] in ("O", "D") and len(joined) >= 2 and w[:1].isupper():
            joined[-1] = f"{joined[-1]}'{w}"
        else:
            joined.append(w)
    if not 2 <= len(joined) <= 4:
        return None
    name = " ".join(title_name(w) if w.islower() else w[0].upper() + w[1:] for w in joined[:3])
    # A turn that is only a capitalised name (the answer to "What is your name?", often with
    # "my name is" dropped by the STT when the name prompt primed it) is nearly as sure as one
    # with a lead-in; a name picked out of other words is less so.
    bare = (
        not match
        and len(joined) <= 3
        and all(w[:1].isupper() for w in joined)
        and len(re.findall(r"[A-Za-z][A-Za-z'\-]*", said)) == len(words)
    )
    certainty = 0.95 if match else 0.9 if bare else 0.8
    return Extraction(name, name, round(stt_confidence * certainty, 3))


def extract_spelled(text: str) -> str | None:
    """A family name spelled letter by letter, in title case, or ``None``.

    "O apostrophe C O N N O R" -> ``"O'Connor"``; "L-O-P-E-Z" -> ``"Lopez"``; "L as in Lima,
    O as in Oscar, P as in Papa, E as in Echo, Z as in Zulu" -> ``"Lopez"``; "C O double N O R"
    -> ``"Connor"`` (rules in :func:`appliance.agent.spoken.parse_spelled`).
    """
    return parse_spelled(text)


def _search_date(text: str, *, prefer: str, base: datetime) -> datetime | None:
    from dateparser.search import search_dates

    found = search_dates(
        text,
        languages=["en"],
        settings={
            "PREFER_DATES_FROM": prefer,
            "RELATIVE_BASE": base,
            "PREFER_DAY_OF_MONTH": "first",
            "DATE_ORDER": "MDY",
            "RETURN_AS_TIMEZONE_AWARE": False,
        },
    )
    if not found:
        return None
    # The longest matched span is the most specific one.
    return max(found, key=lambda pair: len(pair[0]))[1]


_MONTH = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b", re.IGNORECASE
)


def extract_birth_date(text: str, stt_confidence: float, today: date) -> Extraction | None:
    """A date of birth as callers say it, or keypad ``MMDDYYYY``.

    Forms (US month-day-year): "March 4th, 1982", "the fourth of July 1975", "March the 15th
    88", "7/4/01", "03-15-1988", "oh three, fifteen, eighty-eight", "zero three one five one
    nine eight eight", "nineteen eighty" years (:func:`appliance.agent.spoken.parse_birth_date`);
    two-digit years are the most recent past year. The date must be between 1900-01-01 and
    ``today``; impossible dates (February 30) and dates without a year give ``None``.

    Certainty: 1.0 keyed, 0.95 with a month name, 0.85 for three spoken groups, 0.7-0.8 for
    slashes or an unsegmented digit run.
    """
    keyed = re.fullmatch(r"\d{8}", text.strip()) is not None
    parsed = parse_birth_date(text, today)
    if parsed is None:
        return None  # no year, an impossible date, or no date at all
    value, certainty = parsed.value, 1.0 if keyed else parsed.certainty
    if not date(1900, 1, 1) <= value <= today:
        return None
    display = f"{value:%B} {value.day}, {value.year}"
    return Extraction(value, display, round(stt_confidence * certainty, 3))


_DAYPART = [
    (re.compile(r"\bin the morning\b", re.I), " am"),
    (re.compile(r"\bin the (afternoon|evening)\b", re.I), " pm"),
    (re.compile(r"\bnoon\b", re.I), "12 pm"),
    (re.compile(r"\b(\d{1,2})\s*o'?clock\b", re.I), r"\1:00"),
    (re.compile(r"\b(a\.m\.|a m)\b", re.I), "am"),
    (re.compile(r"\b(p\.m\.|p m)\b", re.I), "pm"),
]
_HAS_TIME = re.compile(r"\b\d{1,2}(:\d{2})?\s*(am|pm)\b|\b\d{1,2}:\d{2}\b|\bat \d{1,2}\b", re.I)


def speak_when(when: datetime) -> str:
    """How the agent says a time: "Wednesday, November 25 at 11 AM"."""
    hour = when.strftime("%I").lstrip("0")
    minutes = "" if when.minute == 0 else f":{when.minute:02d}"
    return f"{when:%A}, {when:%B} {when.day} at {hour}{minutes} {when:%p}"


_UNIT_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CLOCK: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\bhalf past (\d{1,2})\b", re.I), lambda m: f"{m[1]}:30"),
    (re.compile(r"\bquarter past (\d{1,2})\b", re.I), lambda m: f"{m[1]}:15"),
    (
        re.compile(r"\bquarter (?:to|till|of) (\d{1,2})\b", re.I),
        lambda m: f"{(int(m[1]) - 2) % 12 + 1}:45",
    ),
    (re.compile(r"\b(\d{1,2}) (?:oh|o) (\d)\b", re.I), lambda m: f"{m[1]}:0{m[2]}"),
    (
        re.compile(r"\b(at|@|by|around) (\d{1,2}) ([0-5]\d)\b", re.I),
        lambda m: f"{m[1]} {m[2]}:{m[3]}",
    ),
    (re.compile(r"\b(\d{1,2}) ([0-5]\d) ?(am|pm)\b", re.I), lambda m: f"{m[1]}:{m[2]} {m[3]}"),
    # a bare hour before more words ("at 2 on Friday") reads as a day number to dateparser
    (re.compile(r"\b(at|@) (\d{1,2})(?= [a-z])(?! ?(am|pm|o'?clock)\b)", re.I), r"\1 \2:00"),
]


def extract_when(text: str, stt_confidence: float, now: datetime) -> Extraction | None:
    """A future appointment day and time, e.g. "next Wednesday at eleven in the morning".

    Clock words become ``h:mm`` first ("ten thirty", "half past two", "quarter to ten", "ten oh
    five"). Without a time of day, 9 AM that day is used (the first opening of the day is
    offered).
    """
    spoken = itn(text)
    # alpha2digit leaves isolated small numbers as words ("at two"): convert them after clock
    # words, where they can only be hours.
    spoken = re.sub(
        r"\b(at|past|to|till|of|by|around) (one|two|three|four|five|six|seven|eight|nine)\b",
        lambda m: f"{m[1]} {_UNIT_WORDS.index(m[2].lower()) + 1}",
        spoken,
        flags=re.IGNORECASE,
    )
    for clock, to_clock in _CLOCK:
        spoken = clock.sub(to_clock, spoken)
    for pattern, repl in _DAYPART:
        spoken = pattern.sub(repl, spoken)
    found = _search_date(spoken, prefer="future", base=now)
    if found is None:
        return None
    certainty = 0.9
    if not _HAS_TIME.search(spoken):
        found = found.replace(hour=9, minute=0)
        certainty = 0.8
    at_hour = re.search(r"\bat (\d{1,2})(?::(\d{2}))?\b", spoken)
    if at_hour and found.time() == now.time() and int(at_hour.group(1)) <= 12:
        # dateparser matched only the day ("tomorrow"): take the hour said after "at".
        found = found.replace(
            hour=int(at_hour.group(1)) % 12 or 12, minute=int(at_hour.group(2) or 0)
        )
        if re.search(r"\bpm\b", spoken, re.I) and found.hour < 12:
            found += timedelta(hours=12)
    explicit_meridiem = re.search(r"\b(am|pm)\b", spoken, re.I) is not None
    if _HAS_TIME.search(spoken) and not explicit_meridiem and 1 <= found.hour <= 6:
        found += timedelta(hours=12)  # "at 2" on a clinic line means 2 PM
    if found < now:
        found += timedelta(days=7)  # "Tuesday" said on a Wednesday means next Tuesday
    return Extraction(
        found.replace(second=0, microsecond=0),
        speak_when(found),
        round(stt_confidence * certainty, 3),
    )


def heard_digits(text: str) -> str:
    """Every digit in a caller's turn, in order (``len()`` of it is how many were heard).

    "oh" is zero, "double five" is ``55``, groups join ("five five five, one two three four" ->
    ``"5551234"``), number words count by their digits ("eighty-eight" -> ``88``).
    """
    return spoken_digits(text)


def extract_digits(
    text: str, stt_confidence: float, minimum: int, maximum: int
) -> Extraction | None:
    """A digit string (member id, phone number) from speech or keypad input.

    Speech goes through :func:`heard_digits`. ``None`` when the count is outside
    ``minimum..maximum``; :func:`heard_digits` tells the dialogue how many it got. Spoken digits
    are hard for small STT models (MODELS.md: 27% WER on isolated digits at 8 kHz), so speech
    gets a certainty of 0.7 and keypad input 1.0. ``display`` is the digits spaced ("5 5 5").
    """
    keyed = re.fullmatch(r"[0-9]+", text.strip()) is not None
    digits = text.strip() if keyed else heard_digits(text)
    if not minimum <= len(digits) <= maximum:
        return None
    display = " ".join(digits)
    return Extraction(digits, display, round(1.0 if keyed else stt_confidence * 0.7, 3))


def extract_slot(
    spec: SlotSpec, text: str, stt_confidence: float, now: datetime, *, keyed: bool = False
) -> Extraction | None:
    """Fill ``spec`` from one caller turn (``keyed`` when ``text`` came from the keypad)."""
    conf = 1.0 if keyed else stt_confidence
    if spec.type == "person_name":
        return extract_name(text, conf)
    if spec.type == "date_of_birth":
        return extract_birth_date(text, conf, now.date())
    if spec.type == "date_time":
        return extract_when(text, conf, now)
    if spec.type == "digits":
        return extract_digits(text, conf, spec.digits_min, spec.digits_max)
    if spec.type == "yes_no":
        answer = yes_no(text)
        return None if answer is None else Extraction(answer, "yes" if answer else "no", conf)
    said = text.strip()
    return Extraction(said, said, conf) if said else None


class LlmIntentClassifier:
    """A second opinion for unsure turns from the LLM, constrained to the intent enum.

    Used only where ``[agent] llm_intents`` is on (a model capable of it is configured). The
    reply is grammar-constrained by a JSON schema: ``{"intent": <one of the intents or
    "none">}``, so the model cannot invent an intent; a constrained answer still only counts
    if it is among the embedding matcher's top candidates.

    Args:
        complete_json: ``(messages, schema) -> dict`` (``LlamaEngine.complete_json``).
        intents: The allowed intent names.
    """

    def __init__(self, complete_json: CompleteJson, intents: list[str]) -> None:
        self._complete = complete_json
        self._intents = sorted(intents)
        self.schema = {
            "type": "object",
            "properties": {"intent": {"type": "string", "enum": [*self._intents, "none"]}},
            "required": ["intent"],
        }

    def classify(self, text: str, candidates: tuple[tuple[str, float], ...]) -> str | None:
        """The constrained choice among ``candidates`` for ``text``, or ``None``.

        Raises:
            LLMError: The runtime failed (the caller treats the turn as not understood).
        """
        messages = [
            {
                "role": "system",
                "content": "Classify the caller's request at a medical clinic. Answer with one "
                "intent from: " + ", ".join(self._intents) + ", or none.",
            },
            {"role": "user", "content": text},
        ]
        choice = str(self._complete(messages, self.schema).get("intent", "none"))
        allowed = {name for name, _ in candidates}
        return choice if choice in allowed else None
