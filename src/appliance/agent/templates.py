"""Former home of the text helpers, now in :mod:`appliance.text`.

A re-export kept while ``tests/unit/test_phrase_cache.py`` still imports
:func:`split_sentences` from here; new code imports :mod:`appliance.text`. Delete this module
once nothing imports it.
"""

from __future__ import annotations

from appliance.text import normalise, split_sentences

__all__ = ["normalise", "split_sentences"]
