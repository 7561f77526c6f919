"""What the dialogue expects the caller to say next: the contract between dialogue and listening.

The dialogue (:attr:`appliance.agent.dialog.DialogManager.listening`) publishes a
:class:`Listening` before each caller turn. The listening stages use it:

* the STT constrains its decoding for digit slots (:mod:`appliance.models.engines`);
* endpointing does not end a digit or date turn at the pauses between digit groups
  (:mod:`appliance.pipeline.endpointing`);
* slot parsing knows which slot the answer is for.

It lives in the text layer (below agent, models and pipeline) so that all three can use it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["free", "yes_no", "digits", "date", "time", "name", "message", "spelling"]


@dataclass(frozen=True)
class Listening:
    """The expected content of the caller's next turn.

    Attributes:
        kind: ``free`` (an open question: a request, a question about the clinic), ``yes_no``
            (a confirmation; a fresh value or a correction may still come), ``digits`` (a digit
            string such as a phone or member number), ``date`` (a date of birth), ``time`` (an
            appointment day and time), ``name`` (a person's name), ``spelling`` (a name spelled
            letter by letter), ``message`` (a message for staff, any length).
        digits_min: For ``digits``: the fewest digits that complete the answer (0 otherwise).
        digits_max: For ``digits``: the most digits the answer can have (0 otherwise). For
            ``date`` the keypad form has 8 digits (``MMDDYYYY``), which the endpointing uses.
        slot: The name of the slot being asked for (``""`` when none).
    """

    kind: Kind = "free"
    digits_min: int = 0
    digits_max: int = 0
    slot: str = ""

    @property
    def numeric(self) -> bool:
        """Whether the answer is made of numbers said in groups (digits or a date)."""
        return self.kind in ("digits", "date")


#: Nothing in particular is expected.
FREE = Listening()
