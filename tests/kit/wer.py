"""Word error rate of the STT stage, after text normalisation (test and benchmark tooling).

Needs ``jiwer`` and ``num2words`` from the ``test`` extra; not part of the runtime package.

Whisper writes numbers as digits ("7", "1030"); references spell them out. Both sides are
normalised the same way before jiwer computes WER (Levenshtein alignment over words), by
:func:`appliance.text.wer.normalise_for_wer` (shared with the admin page's quality review).
"""

from __future__ import annotations

from appliance.text.wer import normalise_for_wer

__all__ = ["normalise_for_wer", "word_error_rate"]


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
