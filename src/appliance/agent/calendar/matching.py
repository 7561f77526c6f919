"""The identity check's name comparison (pure).

Given and family names as heard on a phone line are compared with a patient record's names
case-, accent-, apostrophe- and whitespace-insensitively ("O Connor", "Oconnor" and "O'Connor"
are the same name), with a strict fuzzy threshold for small speech-recognition spelling
differences ("Jon"/"John", "Lopes"/"Lopez") and a phonetic one for spellings that sound alike
(metaphone codes, Lawrence Philips 1990, via ``jellyfish``: "Conner"/"Connor",
"Catherine"/"Kathryn"). A family name with a prefix (O', D', Mc, Mac) also matches when the
prefix was lost or misheard and the rest sounds the same ("Sample Conner" or "Conner" for
"O'Connor"). The date of birth is matched exactly by the store before these functions see the
candidates.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from appliance.agent.calendar.adapter import Patient

try:  # rapidfuzz is the well-kept fuzzy matcher; difflib gives the same Indel ratio.
    from rapidfuzz import fuzz as _fuzz

    def _similarity(a: str, b: str) -> float:
        return float(_fuzz.ratio(a, b))

except ImportError:  # pragma: no cover - exercised only where rapidfuzz is absent
    import difflib

    def _similarity(a: str, b: str) -> float:
        return 100.0 * difflib.SequenceMatcher(None, a, b).ratio()


NAME_EXACT_PART = 95.0
"""Similarity at which one name of the pair counts as heard correctly."""

NAME_OTHER_PART = 60.0
"""Similarity the other name then needs ("Asia"/"Aisha" 66.7; "Lohan"/"Lopez" 40 fails)."""

PHONETIC_SCORE = 85.0
"""Score given to names whose metaphone codes are equal and whose spellings are at least
:data:`PHONETIC_FLOOR` similar ("Conner"/"Connor" 83.3 -> 85; "Lohan"/"Lopez", codes LHN/LPS,
stays 40)."""

PHONETIC_FLOOR = 50.0
"""Minimum spelling similarity for a phonetic match to count.

Equal metaphone codes of very different spellings are coincidences: "Knight"/"Nat" (NT/NT)
score 44.4, "Wright"/"Root" (RT/RT) 40.
"""

PREFIX_SCORE = 82.0
"""Score of a family name whose prefix (O', D', Mc, Mac) was lost or misheard and whose rest
matches the heard last word by spelling (>= 80) and by sound ("Sample Conner" for "O'Connor");
just above :data:`NAME_MATCH_THRESHOLD`, so it passes alone and loses to any closer match."""

NAME_MATCH_THRESHOLD = 80.0
"""Minimum similarity (0-100, normalised Indel ratio) for each of given and family name.

"Jon"/"John" scores 85.7 and "Lopes"/"Lopez" 80.0; "Maria"/"Marcus" scores 54.5.
"""


def normalise_name(name: str) -> str:
    """Casefold, strip accents and drop everything but letters and digits.

    ``"  María -López"`` becomes ``"marialopez"``; a name of punctuation only becomes ``""``.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c for c in stripped.casefold() if c.isalnum())


def similarity(a: str, b: str) -> float:
    """Normalised Indel similarity of two strings, 0 (nothing shared) to 100 (equal)."""
    return _similarity(a, b)


def _metaphone(name: str) -> str:
    import jellyfish

    return str(jellyfish.metaphone(name))


_PREFIX = ("o", "d", "mc", "mac")


def _stem(raw: str) -> str | None:
    """A record's family name without its prefix, or ``None`` when it has none.

    "O'Connor" -> "connor", "McDonald" -> "donald".
    """
    words = raw.replace("\u2019", "'").replace("'", " ").split()
    if len(words) >= 2 and normalise_name(words[0]) in _PREFIX:
        return normalise_name("".join(words[1:]))
    flat = normalise_name(raw)
    for prefix in ("mac", "mc"):
        if flat.startswith(prefix) and len(flat) - len(prefix) >= 4:
            return flat[len(prefix) :]
    return None


def name_score(heard: str, record: str) -> float:
    """How well a heard name matches a record's name, 0..100.

    The best of: the Indel similarity of the normalised names (:func:`normalise_name`, so
    "Oconnor"/"O'Connor" is 100 and "Mac Donald"/"McDonald" 94.1); :data:`PHONETIC_SCORE` when
    both sound alike (equal metaphone codes) and are spelled at least :data:`PHONETIC_FLOOR`
    alike; :data:`PREFIX_SCORE` when the record has a prefix that the heard name lost or
    garbled and the heard last word matches the rest in spelling (>= 80) and sound.
    """
    a, b = normalise_name(heard), normalise_name(record)
    if not a or not b:
        return 0.0
    score = _similarity(a, b)
    if score < PHONETIC_SCORE and score >= PHONETIC_FLOOR and _metaphone(a) == _metaphone(b):
        score = PHONETIC_SCORE
    stem = _stem(record)
    last = normalise_name(heard.replace("'", " ").split()[-1]) if heard.split() else ""
    if (
        score < PREFIX_SCORE
        and stem
        and last
        and _similarity(last, stem) >= NAME_MATCH_THRESHOLD
        and _metaphone(last) == _metaphone(stem)
    ):
        score = PREFIX_SCORE
    return score


def match_patient(
    given_name: str, family_name: str, candidates: Iterable[Patient]
) -> Patient | None:
    """Pick the patient whose names match the heard names, among same-birth-date candidates.

    An exact match (after :func:`normalise_name`) wins; otherwise both given and family name
    must reach :data:`NAME_MATCH_THRESHOLD`, by spelling first and, only when no candidate is
    that close, by :func:`name_score` (sound, lost prefix), or one must match
    (:data:`NAME_EXACT_PART`) and the other reach :data:`NAME_OTHER_PART` (speech recognition
    on a phone line garbles one name of a pair far more often than both: "Asia Khan" for
    "Aisha Khan"). Ambiguity gives ``None``: two exact matches (duplicate registrations), two
    close ones, or a one-name-right match next to any other candidate.

    Args:
        given_name: Given name as heard.
        family_name: Family name as heard.
        candidates: The patients with the heard date of birth.

    Returns:
        The patient, or ``None`` when there is no unambiguous match (or a heard name is blank).
    """
    given, family = normalise_name(given_name), normalise_name(family_name)
    if not given or not family:
        return None
    exact: list[Patient] = []
    close: list[Patient] = []
    sounds: list[Patient] = []
    partial: list[Patient] = []
    for patient in candidates:
        row_given = normalise_name(patient.given_name)
        row_family = normalise_name(patient.family_name)
        if (row_given, row_family) == (given, family):
            exact.append(patient)
            continue
        spelled = sorted((_similarity(given, row_given), _similarity(family, row_family)))
        heard = sorted(
            (
                name_score(given_name, patient.given_name),
                name_score(family_name, patient.family_name),
            )
        )
        if spelled[0] >= NAME_MATCH_THRESHOLD:
            close.append(patient)
        elif heard[0] >= NAME_MATCH_THRESHOLD:
            sounds.append(patient)
        elif heard[1] >= NAME_EXACT_PART and heard[0] >= NAME_OTHER_PART:
            partial.append(patient)
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None  # duplicate registrations: let a human sort it out
    # Spelling beats sound: "Jonn" is Jon, not Joan, though all three sound alike.
    for tier in (close, sounds):
        if len(tier) == 1:
            return tier[0]
        if tier:
            return None
    if len(partial) == 1:
        return partial[0]  # only when no closer candidate exists at all
    return None
