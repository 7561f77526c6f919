"""The PCI DTMF pause: card number, expiry and security code reach the payment handler only.

The gate runs in a real pipecat pipeline. A pause is started the way a call starts it (a
processor calls :meth:`PciGate.start`, in a call the receptionist's ``on_after``), here on a
marker frame so the point in the frame stream is exact. Everything the gate lets through is
what the STT, the user aggregator, the LLM and the transcript would see.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    SystemFrame,
    TTSSpeakFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from appliance.events import Event, PciPause
from appliance.pipeline.payments import CardEntry, LuhnHandoff, PaymentResult
from appliance.pipeline.pci import PciGate, PciPrompts
from tests.unit.terminal import PaymentTerminal

TEST_PAN = "4111111111111111"  # Visa's published test number
EXPIRY = "1299"  # December 2099
CVV = "737"
#: A whole entry as a caller keys it: PAN ``#``, expiry (ends by its 4th digit; the ``#`` after
#: it is ignored), security code ``#``.
CARD_KEYS = f"{TEST_PAN}#{EXPIRY}#{CVV}#"
VOICE = InputAudioRawFrame(audio=b"\x10\x27" * 320, sample_rate=16000, num_channels=1)


@dataclass
class BeginPause(SystemFrame):
    """Marker: start a pause here (the receptionist's ``on_after`` does it in a call)."""

    digits_max: int = 19
    timeout_s: float = 30.0
    handoff_id: str = ""


class Starter(FrameProcessor):
    """Starts the gate's pause at each :class:`BeginPause`; records the hand-off ids."""

    def __init__(self, gate: PciGate, done: list[bool]) -> None:
        super().__init__(name="Starter")
        self._gate = gate
        self._done = done
        self.handoff_ids: list[str] = []

    async def _on_done(self, ok: bool) -> None:
        self._done.append(ok)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, BeginPause):
            self.handoff_ids.append(
                self._gate.start(
                    self._on_done,
                    digits_max=frame.digits_max,
                    timeout_s=frame.timeout_s,
                    handoff_id=frame.handoff_id,
                )
            )
            return
        await self.push_frame(frame, direction)


ACCEPTED = PaymentResult(True, "accepted")


class RecordingHandler:
    """A :class:`PaymentHandler` that records what it is given."""

    def __init__(self, result: PaymentResult = ACCEPTED) -> None:
        self.result = result
        self.calls: list[tuple[CardEntry, str]] = []

    async def handle(self, card: CardEntry, handoff_id: str) -> PaymentResult:
        self.calls.append((card, handoff_id))
        return self.result

    @property
    def cards(self) -> list[tuple[str, str, str]]:
        return [(c.pan, c.expiry, c.cvv) for c, _ in self.calls]


class FailingHandler:
    async def handle(self, card: CardEntry, handoff_id: str) -> PaymentResult:
        raise ValueError(f"terminal choked on {card.pan} {card.cvv}")


@dataclass
class Call:
    gate: PciGate
    starter: Starter
    events: list[Event] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    down: Sequence[Frame] = ()

    def digits_downstream(self) -> str:
        return "".join(f.button.value for f in self.down if isinstance(f, InputDTMFFrame))

    def spoken(self) -> list[str]:
        return [f.text for f in self.down if isinstance(f, TTSSpeakFrame)]

    def audio_downstream(self) -> list[bytes]:
        return [f.audio for f in self.down if isinstance(f, InputAudioRawFrame)]

    def pauses(self) -> list[tuple[bool, int, str]]:
        """``(active, digits, outcome)`` of each :class:`PciPause` event, in order."""
        assert all(isinstance(e, PciPause) and e.call_id == "call-1" for e in self.events)
        return [(e.active, e.digits, e.outcome) for e in self.events]  # type: ignore[attr-defined]


def keys(text: str) -> list[Frame]:
    return [InputDTMFFrame(button=KeypadEntry(c)) for c in text]


async def run_call(handler: object, frames: list[Frame]) -> Call:
    events: list[Event] = []
    done: list[bool] = []
    gate = PciGate("call-1", events.append, handler, name="PCI")  # type: ignore[arg-type]
    call = Call(gate, Starter(gate, done), events, done)
    from pipecat.pipeline.pipeline import Pipeline

    call.down, _ = await run_test(
        Pipeline([call.starter, gate]), frames_to_send=[*frames, SleepFrame(sleep=0.1)]
    )
    return call


def assert_no_card_number(call: Call, caplog: pytest.LogCaptureFixture) -> None:
    seen = " ".join(str(f) for f in call.down) + " ".join(repr(e) for e in call.events)
    seen += caplog.text
    assert TEST_PAN not in seen and f"{EXPIRY}{CVV}" not in seen
    assert not re.search(rf"(?<!\d){CVV}(?!\d)", seen)


async def test_pause_withholds_digits_and_voice_then_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    handler = RecordingHandler()
    call = await run_call(
        handler,
        [
            VOICE,
            *keys("5"),  # before the pause: a menu choice, passed on
            SleepFrame(sleep=0.05),  # the gate has seen it before the pause starts
            BeginPause(handoff_id="a1b2c3d4e5f60718"),
            VOICE,  # the caller reads the number aloud: silenced
            *keys(TEST_PAN),
            *keys("#"),
            VOICE,  # and the expiry and the code: silenced too
            *keys(EXPIRY),
            *keys(CVV + "#"),
            SleepFrame(sleep=0.05),
            VOICE,  # resumed: audio and keys flow again
            *keys("7"),
        ],
    )
    assert handler.cards == [(TEST_PAN, EXPIRY, CVV)]
    assert handler.calls[0][1] == "a1b2c3d4e5f60718"
    assert call.done == [True]
    assert call.digits_downstream() == "57"  # no card digit, no '#'
    silence = bytes(len(VOICE.audio))
    assert call.audio_downstream() == [VOICE.audio, silence, silence, VOICE.audio]
    assert call.spoken() == [PciPrompts().expiry, PciPrompts().cvv]
    assert call.pauses() == [(True, 0, ""), (False, 16, "accepted")]
    assert not call.gate.active
    assert_no_card_number(call, caplog)


async def test_a_cvv_keyed_after_the_card_number_stays_in_the_pause() -> None:
    """The old pause ended at the PAN's ``#``: the code keyed next went on the record."""
    handler = RecordingHandler()
    call = await run_call(handler, [BeginPause(), *keys(f"{TEST_PAN}#"), *keys(CVV + "#")])
    # Still in the pause when the call ended ("737#" went into the expiry entry), so nothing
    # passed on, and the half-typed card went nowhere.
    assert call.digits_downstream() == ""
    assert handler.calls == [] and call.done == [] and call.pauses() == [(True, 0, "")]
    assert call.spoken() == [PciPrompts().expiry, PciPrompts().cvv]


async def test_entries_that_end_by_their_count_need_no_hash() -> None:
    handler = RecordingHandler()
    call = await run_call(
        handler, [BeginPause(digits_max=16), *keys(TEST_PAN + "#" + EXPIRY + "4321" + "#")]
    )
    assert handler.cards == [(TEST_PAN, EXPIRY, "4321")]  # the '#' after each count: ignored
    assert call.digits_downstream() == "#"  # the pause was already over at the code's 4th
    assert call.done == [True]


async def test_star_starts_the_current_entry_over() -> None:
    handler = RecordingHandler()
    await run_call(handler, [BeginPause(), *keys("99*"), *keys(f"{TEST_PAN}#12*{EXPIRY}5*{CVV}#")])
    assert handler.cards == [(TEST_PAN, EXPIRY, CVV)]


async def test_timeout_hands_off_what_was_typed() -> None:
    handler = RecordingHandler(PaymentResult(False, "bad_length"))
    call = await run_call(
        handler, [BeginPause(timeout_s=0.3), *keys("4111"), SleepFrame(sleep=0.6), *keys("2")]
    )
    assert handler.cards == [("4111", "", "")]
    assert call.pauses() == [(True, 0, ""), (False, 4, "bad_length")]
    assert call.done == [False]
    assert call.digits_downstream() == "2"


async def test_each_entry_has_its_own_timeout() -> None:
    handler = RecordingHandler(PaymentResult(False, "bad_cvv"))
    call = await run_call(
        handler,
        [
            BeginPause(timeout_s=0.3),
            *keys(TEST_PAN + "#"),
            SleepFrame(sleep=0.2),
            *keys(EXPIRY),  # 0.2 s into the expiry entry: the PAN's time no longer counts
            SleepFrame(sleep=0.2),
            *keys("7"),
            SleepFrame(sleep=0.5),  # the code's entry runs out
        ],
    )
    assert handler.cards == [(TEST_PAN, EXPIRY, "7")]
    assert call.pauses() == [(True, 0, ""), (False, 16, "bad_cvv")]


async def test_timeout_without_digits_does_not_call_the_handler() -> None:
    handler = RecordingHandler()
    call = await run_call(handler, [BeginPause(timeout_s=0.2), SleepFrame(sleep=0.4)])
    assert handler.calls == []
    assert call.pauses() == [(True, 0, ""), (False, 0, "no_digits")]
    assert call.done == [False]


async def test_failing_handler_falls_back_without_logging_digits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    call = await run_call(FailingHandler(), [BeginPause(), *keys(CARD_KEYS)])
    assert call.pauses() == [(True, 0, ""), (False, 16, "handler_error")]
    assert call.done == [False]
    assert "payment handler failed (ValueError)" in caplog.text
    assert_no_card_number(call, caplog)


async def test_restarting_a_pause_cancels_the_old_timer() -> None:
    handler = RecordingHandler()
    call = await run_call(
        handler,
        [
            BeginPause(timeout_s=0.3),
            SleepFrame(sleep=0.1),
            BeginPause(timeout_s=5.0),
            SleepFrame(sleep=0.4),  # the first pause's timer would have fired by now
            *keys(CARD_KEYS),
        ],
    )
    assert call.pauses() == [(True, 0, ""), (True, 0, ""), (False, 16, "accepted")]
    assert handler.cards == [(TEST_PAN, EXPIRY, CVV)]
    assert call.digits_downstream() == ""


async def test_call_end_drops_a_pause_in_progress() -> None:
    handler = RecordingHandler()
    call = await run_call(handler, [BeginPause(timeout_s=0.3), *keys("4111")])
    await asyncio.sleep(0.5)  # past the pause's timeout
    assert handler.calls == [] and call.done == []
    assert call.pauses() == [(True, 0, "")]
    assert not call.gate.active


async def test_payment_post_carries_the_pauses_handoff_id() -> None:
    with PaymentTerminal(200) as terminal:
        call = await run_call(
            LuhnHandoff(terminal.url),
            [BeginPause(handoff_id="5e1f0c2d9a8b7c6d"), *keys(CARD_KEYS)],
        )
    assert terminal.bodies == [
        {"handoff_id": "5e1f0c2d9a8b7c6d", "pan": TEST_PAN, "expiry": EXPIRY, "cvv": CVV}
    ]
    assert call.starter.handoff_ids == ["5e1f0c2d9a8b7c6d"]
    assert call.done == [True]
    # The audit record of the pause carries the same id: the two records can be linked.
    started = [e for e in call.events if isinstance(e, PciPause) and e.active]
    assert [e.handoff_id for e in started] == ["5e1f0c2d9a8b7c6d"]


def test_each_pci_request_from_the_dialogue_has_its_own_handoff_id() -> None:
    from appliance.agent.replies import PciRequest

    a, b = PciRequest(13, 19, 30.0), PciRequest(13, 19, 30.0)
    assert re.fullmatch(r"[0-9a-f]{16}", a.handoff_id) and a.handoff_id != b.handoff_id


async def test_a_pause_started_without_an_id_gets_a_fresh_one() -> None:
    with PaymentTerminal(200) as terminal:
        call = await run_call(
            LuhnHandoff(terminal.url),
            [
                BeginPause(),
                *keys(CARD_KEYS),
                SleepFrame(sleep=0.3),  # the next pause follows the first one's outcome
                BeginPause(),
                *keys(CARD_KEYS),
            ],
        )
    ids = [body["handoff_id"] for body in terminal.bodies]
    assert ids == call.starter.handoff_ids
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids) and ids[0] != ids[1]
    assert call.gate.handoff_id == ids[1]
