"""Opt-out phrases on a call the box placed: "stop calling me", "take me off your list".

47 CFR 64.1200(a)(10) (FCC 24-24) makes a revocation "by any reasonable means" binding, so on
an outbound call these are matched by rule, in every wait of the dialogue (a slot question
included), before any model sees the turn. The list errs toward opting out: a reminder call
that ends early costs a phone call; a call placed after a refusal costs statutory damages.
"""

from __future__ import annotations

import re

OPT_OUT = re.compile(
    r"\b(?:"
    r"stop (?:calling|ringing|phoning|contacting|bothering)"
    r"|(?:do not|don'?t|never) (?:call|ring|phone|contact) (?:me|us|this number|here)"
    r"|no more (?:calls|phone calls|reminders|reminder calls)"
    r"|(?:take|remove|delete|drop) (?:me|my number|this number|us)"
    r" (?:off|from) (?:your|the|this|that) (?:\w+ )?list"
    r"|put me on (?:your|the) (?:do not call|don'?t call|no call) list"
    r"|opt(?:ing)? out|unsubscribe"
    r")\b",
    re.IGNORECASE,
)
"""What counts as an opt-out said on a reminder call (matched anywhere in the turn)."""


def is_opt_out(text: str) -> bool:
    """Whether a caller turn asks not to be called again.

    >>> is_opt_out("Please stop calling me.")
    True
    >>> is_opt_out("Take me off your calling list")
    True
    >>> is_opt_out("Yes, I'll be there")
    False
    """
    return OPT_OUT.search(" ".join(text.replace("’", "'").split())) is not None
