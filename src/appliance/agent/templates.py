"""Former home of the text helpers, now in :mod:`appliance.text`.

Kept only as a re-export for :mod:`appliance.pipeline.services`, which still imports
:func:`split_sentences` from here; new code imports :mod:`appliance.text`.
"""

from __future__ import annotations

from appliance.text import normalise, split_sentences

__all__ = ["normalise", "split_sentences"]
