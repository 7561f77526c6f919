"""The PCI DTMF pause: card digits reach the payment handler and nothing else.

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
from pipecat.frames.frames import Frame, InputAudioRawFrame, InputDTMFFrame, SystemFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from appliance.events import Event, PciPause
from appliance.pipeline.payments import LuhnHandoff, PaymentResult
from appliance.pipeline.pci import PciGate
from tests.unit.terminal import PaymentTerminal

TEST_PAN = "4111111111111111"  # Visa's published test number
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
        self.calls: list[tuple[str, str]] = []

    async def handle(self, pan: str, handoff_id: str) -> PaymentResult:
        self.calls.append((pan, handoff_id))
        return self.result


class FailingHandler:
    async def handle(self, pan: str, handoff_id: str) -> PaymentResult:
        raise ValueError(f"terminal choked on {pan}")


@dataclass
class Call:
    gate: PciGate
    starter: Starter
    events: list[Event] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    down: Sequence[Frame] = ()

    def digits_downstream(self) -> str:
        return "".join(f.button.value for f in self.down if isinstance(f, InputDTMFFrame))

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
    assert TEST_PAN not in seen and TEST_PAN not in caplog.text


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
            SleepFrame(sleep=0.05),
            VOICE,  # resumed: audio and keys flow again
            *keys("7"),
        ],
    )
    assert handler.calls == [(TEST_PAN, "a1b2c3d4e5f60718")]
    assert call.done == [True]
    assert call.digits_downstream() == "57"  # neither the card digits nor its '#'
    assert call.audio_downstream() == [VOICE.audio, bytes(len(VOICE.audio)), VOICE.audio]
    assert call.pauses() == [(True, 0, ""), (False, 16, "accepted")]
    assert not call.gate.active
    assert_no_card_number(call, caplog)


async def test_max_digits_end_the_pause_without_hash() -> None:
    handler = RecordingHandler()
    call = await run_call(handler, [BeginPause(digits_max=16), *keys(TEST_PAN + "#")])
    assert [pan for pan, _ in handler.calls] == [TEST_PAN]
    assert call.digits_downstream() == "#"  # the pause was already over
    assert call.done == [True]


async def test_star_starts_the_entry_over() -> None:
    handler = RecordingHandler()
    await run_call(handler, [BeginPause(), *keys("99*"), *keys(TEST_PAN + "#")])
    assert [pan for pan, _ in handler.calls] == [TEST_PAN]


async def test_timeout_hands_off_what_was_typed() -> None:
    handler = RecordingHandler(PaymentResult(False, "bad_length"))
    call = await run_call(
        handler, [BeginPause(timeout_s=0.3), *keys("4111"), SleepFrame(sleep=0.6), *keys("2")]
    )
    assert [pan for pan, _ in handler.calls] == ["4111"]
    assert call.pauses() == [(True, 0, ""), (False, 4, "bad_length")]
    assert call.done == [False]
    assert call.digits_downstream() == "2"


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
    call = await run_call(FailingHandler(), [BeginPause(), *keys(TEST_PAN + "#")])
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
            *keys(TEST_PAN + "#"),
        ],
    )
    assert call.pauses() == [(True, 0, ""), (True, 0, ""), (False, 16, "accepted")]
    assert [pan for pan, _ in handler.calls] == [TEST_PAN]
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
            [BeginPause(handoff_id="5e1f0c2d9a8b7c6d"), *keys(TEST_PAN + "#")],
        )
    assert terminal.bodies == [{"handoff_id": "5e1f0c2d9a8b7c6d", "pan": TEST_PAN}]
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
                *keys(TEST_PAN + "#"),
                SleepFrame(sleep=0.3),  # the next pause follows the first one's outcome
                BeginPause(),
                *keys(TEST_PAN + "#"),
            ],
        )
    ids = [body["handoff_id"] for body in terminal.bodies]
    assert ids == call.starter.handoff_ids
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids) and ids[0] != ids[1]
    assert call.gate.handoff_id == ids[1]
