"""Word error rate of the STT stage, after text normalisation (test and benchmark tooling).

Needs ``jiwer`` and ``num2words`` from the ``test`` extra; not part of the runtime package.

Whisper writes numbers as digits ("7", "1030"); references spell them out. Both sides are
normalised the same way before jiwer computes WER (Levenshtein alignment over words):
lower case, digits spelled out with num2words, punctuation removed, whitespace collapsed.
"""

from __future__ import annotations

import re

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


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (total edits / total reference words) over normalised texts.

    Raises:
        ValueError: The lists differ in length or all references are empty.
    """
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    refs = [normalise_for_wer(r) for r in references]
    hyps = [normalise_for_wer(h) for h in hypotheses]
    if not any(refs):
        raise ValueError("all references are empty")
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    return float(jiwer.wer([r for r, _ in pairs], [h or "<empty>" for _, h in pairs]))
