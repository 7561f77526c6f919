"""The identity check's name comparison (pure).

Given and family names as heard on a phone line are compared with a patient record's names
case-, accent- and whitespace-insensitively, with a strict fuzzy threshold for small
speech-recognition spelling differences ("Jon"/"John", "Lopes"/"Lopez"). The date of birth is
matched exactly by the store before these functions see the candidates.
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


def match_patient(
    given_name: str, family_name: str, candidates: Iterable[Patient]
) -> Patient | None:
    """Pick the patient whose names match the heard names, among same-birth-date candidates.

    An exact match (after :func:`normalise_name`) wins; otherwise both given and family name
    must reach :data:`NAME_MATCH_THRESHOLD`, or one must match (:data:`NAME_EXACT_PART`) and the
    other reach :data:`NAME_OTHER_PART` (speech recognition on a phone line garbles one name of
    a pair far more often than both: "Asia Khan" for "Aisha Khan"). Ambiguity gives ``None``:
    two exact matches (duplicate registrations), two close ones, or a one-name-right match
    next to any other candidate.

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
    close: list[tuple[float, Patient]] = []
    partial: list[Patient] = []
    for patient in candidates:
        row_given = normalise_name(patient.given_name)
        row_family = normalise_name(patient.family_name)
        if (row_given, row_family) == (given, family):
            exact.append(patient)
            continue
        given_score = _similarity(given, row_given)
        family_score = _similarity(family, row_family)
        low, high = sorted((given_score, family_score))
        if low >= NAME_MATCH_THRESHOLD:
            close.append((given_score + family_score, patient))
        elif high >= NAME_EXACT_PART and low >= NAME_OTHER_PART:
            partial.append(patient)
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None  # duplicate registrations: let a human sort it out
    if len(close) == 1:
        return close[0][1]
    if not close and len(partial) == 1:
        return partial[0]  # only when no closer candidate exists at all
    return None
