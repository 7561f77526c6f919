"""WER normalisation and computation (pure functions)."""

from __future__ import annotations

import pytest

from tests.kit.wer import normalise_for_wer, word_error_rate


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Seven.", "seven"),
        ("7", "seven"),
        ("A gold ring will please most any girl.", "a gold ring will please most any girl"),
        ("The neighbor's house!", "the neighbors house"),
        ("Call 911, now", "call nine hundred and eleven now"),
    ],
)
def test_normalise(raw: str, norm: str) -> None:
    assert normalise_for_wer(raw) == norm


def test_wer_counts_edits_over_reference_words() -> None:
    assert word_error_rate(["one two three four"], ["one 2 three"]) == 0.25
    assert word_error_rate(["zero"], [""]) == 1.0
    assert word_error_rate(["a b", "c d"], ["a b", "c d"]) == 0.0
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])
