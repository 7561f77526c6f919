"""Caller sentiment and frustration cues (pure, offline, deterministic).

:func:`sentiment` is VADER's *compound* score (``vaderSentiment``, Hutto & Gilbert, "VADER: A
Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM 2014): a
lexicon-and-rules model whose lexicon ships inside the wheel, so it needs no download and no
model, runs in tens of microseconds per turn and gives the same number for the same text.

:func:`is_frustrated` is used live by the dialogue as an escalation trigger (``frustration``), so
it must be fast and predictable. It is true when either

* the compound score is at most :data:`STRONG_NEGATIVE` (-0.5). VADER's authors classify
  ``compound <= -0.05`` as negative (the project README); that cut is far too eager for an
  escalation trigger (a bare "no" scores -0.30, "not good" -0.34), so we use -0.5, the usual
  "strongly negative" cut: half-way down the negative range, reached by "stupid machine" (-0.53)
  or "I hate this, it is terrible" (-0.78); or
* the turn contains an explicit frustration cue common on phone lines, which VADER scores as
  neutral or mildly negative ("you're not listening" is 0.0, "this is ridiculous" -0.36):
  see :data:`FRUSTRATION_CUES` (apostrophes optional: transcripts often drop them).

Asking for a person ("let me talk to someone") is *not* frustration: it is an explicit request,
handled by its own trigger (``explicit_request``).

Clinic callers describe symptoms, and VADER's lexicon scores symptom words strongly negative
("I hurt my back" -0.53, "I have terrible pain in my chest" -0.75): every sick caller would be
"frustrated". The analyzer here zeroes :data:`CLINICAL_WORDS`, so the score reflects the caller's
attitude to the call, not their health (emergencies have their own trigger).
"""

from __future__ import annotations

import functools
import re

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

STRONG_NEGATIVE = -0.5
"""Compound score at or below which a turn counts as strongly negative (see module doc)."""

FRUSTRATION_CUES: tuple[str, ...] = (
    r"\bridiculous\b",
    r"\b(this|that|it) is (so |just |absolutely |completely )?(absurd|a joke)\b",
    r"\b(you'?re|you are) (still )?not (even )?(listening|understanding)\b",
    r"\byou aren'?t (even )?(listening|understanding)\b",
    r"\bare you (even )?listening\b",
    r"\bnot listening to me\b",
    r"\byou (don'?t|do not) (understand|get it)\b",
    r"\bi('?ve| have)? (already|just) (told|said|gave|given) (you|that|it|this)\b",
    r"\bi (already|just) said\b",
    r"\bhow many times (do|have|must|should|did) i\b",
    r"\bi('?ve| have)? (said|told you|asked)( this| that| it)? (twice|three times|already)\b",
    r"\bthat'?s not what i (said|asked|meant)\b",
    r"\buseless\b",
    r"\bpointless\b",
    r"\bwaste of (my )?time\b",
    r"\b(stupid|dumb|idiotic|bloody|damn|damned) (machine|robot|computer|bot|system|thing)\b",
    r"\b(i'?m|i am|i'?m getting|this is|so) (so |really |very )?(frustrat|annoy)\w*",
    r"\bfed up\b",
    r"\bwhat('?s| is) wrong with (you|this)\b",
)
"""Lower-case regular expressions matched against the normalised turn (curly quotes folded)."""

_CUES = re.compile("|".join(f"(?:{cue})" for cue in FRUSTRATION_CUES))

CLINICAL_WORDS = frozenset(
    {
        "accident", "ache", "aches", "aching", "allergic", "attack", "broken", "cancer", "dead",
        "death", "depressed", "depression", "died", "emergency", "flu", "hurt", "hurting",
        "hurts", "ill", "illness", "infected", "injured", "injury", "pain", "painful", "pains",
        "rash", "sick", "sore", "tumor",
    }
)  # fmt: skip
"""Symptom and condition words of VADER's lexicon, neutral here (see module doc)."""


@functools.cache
def _analyzer() -> SentimentIntensityAnalyzer:
    # Loads the bundled lexicon once (~15 ms); polarity_scores keeps no state between calls.
    analyzer = SentimentIntensityAnalyzer()
    for word in CLINICAL_WORDS:
        analyzer.lexicon.pop(word, None)
    return analyzer


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").replace("\u2018", "'").split())


#: Redaction labels (``[PAN]``, ``[SAD]`` ...: :mod:`appliance.policy.redaction`) stand for
#: removed card data, not for the caller's mood ("sad" is a negative word to VADER).
_REDACTION_LABEL = re.compile(r"\[[A-Z]{2,}\]")


def sentiment(text: str) -> float:
    """Return the sentiment of ``text`` in [-1, 1] (VADER compound; 0.0 for empty text)."""
    text = _REDACTION_LABEL.sub(" ", text)
    if not text or not text.strip():
        return 0.0
    compound = float(_analyzer().polarity_scores(text)["compound"])
    return max(-1.0, min(1.0, compound))


def is_frustrated(text: str) -> bool:
    """Return True if the caller's turn is strongly negative or has a frustration cue.

    Args:
        text: One caller turn (final transcript).

    Returns:
        ``sentiment(text) <= STRONG_NEGATIVE`` or a :data:`FRUSTRATION_CUES` match.
    """
    said = _normalise(text)
    if not said:
        return False
    if _CUES.search(said):
        return True
    return sentiment(text) <= STRONG_NEGATIVE
