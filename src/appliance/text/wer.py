"""Word error rate (WER) text normalisation and per-utterance edit counts.

Shared by the benchmarks (``tests/kit/wer.py``) and the admin page's quality review
(``appliance.admin.quality``), so a WER measured on the box and one measured in a benchmark
mean the same thing.

Whisper writes numbers as digits ("7", "1030"); references spell them out. Both sides are
normalised the same way before the words are aligned: lower case, digits spelled out with
num2words, punctuation removed, whitespace collapsed.

WER = (S + D + I) / N over a minimum-edit (Levenshtein) word alignment of the reference
(N words) and the hypothesis: S substitutions, D deletions, I insertions (the definition used
by NIST sclite and by ``jiwer``; the alignment is RapidFuzz's ``Levenshtein.opcodes``, the
same call ``jiwer.process_words`` makes, so the counts equal jiwer's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PUNCT = re.compile(r"[^a-z0-9' ]+")


def normalise_for_wer(text: str) -> str:
    """Normalise a transcript for WER: lower case, numbers as words, no punctuation."""
    from num2words import num2words

    text = text.lower().replace("-", " ")
    text = _NUMBER.sub(
        lambda m: " " + num2words(float(m.group()) if "." in m.group() else int(m.group())) + " ",
        text,
    )
    text = text.replace("-", " ").replace(",", " ")
    text = _PUNCT.sub(" ", text).replace("'", "")
    return " ".join(text.split())


@dataclass(frozen=True)
class WordEdits:
    """Edit counts of one hypothesis against its reference, in words (no text kept)."""

    substitutions: int
    deletions: int
    insertions: int
    hits: int

    @property
    def reference_words(self) -> int:
        """N: words in the normalised reference (hits + substitutions + deletions)."""
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        """S + D + I."""
        return self.substitutions + self.deletions + self.insertions


def word_edits(reference: str, hypothesis: str) -> WordEdits:
    """Align the normalised words of ``hypothesis`` to ``reference`` and count the edits.

    Args:
        reference: What was said (typed by a person).
        hypothesis: What the recogniser wrote.

    Returns:
        The substitution, deletion, insertion and hit counts (an empty reference makes every
        hypothesis word an insertion).
    """
    ref = normalise_for_wer(reference).split()
    hyp = normalise_for_wer(hypothesis).split()
    counts = {"replace": 0, "delete": 0, "insert": 0, "equal": 0}
    for op in Levenshtein.opcodes(ref, hyp):
        counts[op.tag] += (
            (op.dest_end - op.dest_start) if op.tag == "insert" else (op.src_end - op.src_start)
        )
    return WordEdits(counts["replace"], counts["delete"], counts["insert"], counts["equal"])
