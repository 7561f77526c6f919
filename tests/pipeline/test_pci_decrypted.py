"""PCI, decrypted: a card read out and keyed in a call leaves no PAN, CVV or expiry anywhere.

One call through the real PCI gate, receptionist and dialogue (the shipped workflows, the
embedding model from the store), with the audit log written by the real observer into a real
encrypted SQLite file. The caller reads a card number in three groupings (digits with commas,
digits with dots, spelled out), says the expiry and the security code, keys the number outside
a pause, then pays by keypad inside one (number, expiry, code). Afterwards every record of the
call is decrypted and exported: no digit run of the card is in it. What reached the LLM (each
context handed on, and every prompt of the intent fallback) holds none either, the payment
terminal got all three, and the embedding memo kept none of the caller's words.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    DataFrame,
    Frame,
    InputDTMFFrame,
    LLMContextFrame,
    LLMTextFrame,
    TTSSpeakFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from appliance.agent.calendar import seed_demo
from appliance.agent.dialog import Next, Reply
from appliance.agent.runtime import load_agent
from appliance.audit import envelope
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.observer import AuditObserver
from appliance.audit.store import AuditLog
from appliance.config.settings import AgentSettings, ApplianceSettings
from appliance.events import CallEnded, DtmfReceived, Event, PciPause, TurnEnded
from appliance.pipeline.payments import LuhnHandoff
from appliance.pipeline.pci import PciGate
from appliance.pipeline.receptionist import Receptionist
from appliance.pipeline.transport import SipDTMFFrame
from tests.conftest import NOW
from tests.unit.terminal import PaymentTerminal

CALL = "c-pci"
PAN = "4111111111111111"  # Visa's published test number
EXPIRY = "1299"  # December 2099
CVV = "737"
SPELLED = " ".join(["four", *["one"] * 15])

#: What the caller says, in order (each one caller turn).
TURNS = [
    "Hi, my card number is 4111, 1111, 1111, 1111.",
    "No, just a question. Is 4111.1111.1111.1111 with expiry twelve ninety-nine still on file?",
    f"The card is {SPELLED}, and the CVV is seven three seven.",
    "I want to pay my bill by card.",
]
#: Fields that hold opaque hex ids (a hand-off id could contain "737" by chance).
ID_FIELDS = {"handoff_id", "idempotency_key", "call_id"}


class LlmSpy(FrameProcessor):
    """Stands where the LLM service stands: records every context it would be handed."""

    def __init__(self) -> None:
        super().__init__(name="LlmSpy")
        self.prompts: list[str] = []
        self.spoken: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self.prompts.append(json.dumps(frame.context.get_messages()))
        elif isinstance(frame, LLMTextFrame | TTSSpeakFrame):
            self.spoken.append(frame.text)
        await self.push_frame(frame, direction)


def strings(value: Any, key: str = "") -> list[str]:
    """Every string in a JSON-like value, but the opaque id fields."""
    if isinstance(value, str):
        return [] if key in ID_FIELDS else [value]
    if isinstance(value, list):
        return [s for v in value for s in strings(v, key)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(v, k)]
    return []


def card_data_in(text: str) -> list[str]:
    """The card's data in ``text``: its digits in any grouping, or spelled out."""
    found = []
    digits = re.sub(r"(?<=\d)[\s,.\-/]+(?=\d)", "", text)  # "4111, 1111" -> "41111111"
    for needle in (PAN, PAN[:8], PAN[-8:], EXPIRY, CVV):
        if re.search(rf"(?<!\d){needle}(?!\d)", digits) or needle in digits and len(needle) > 4:
            found.append(needle)
    if re.search(r"(?i)\bone,? one,? one\b|\bseven,? three,? seven\b|ninety-nine", text):
        found.append("spelled")
    return found


def keys(text: str, method: str = "rfc4733") -> list[Frame]:
    return [SipDTMFFrame(button=KeypadEntry(c), method=method) for c in text]


@dataclass
class CallerSaid(DataFrame):
    """Marker: the caller finished a turn saying ``text`` (the STT's final transcript)."""

    text: str = ""


class UserAggregator(FrameProcessor):
    """Stands where the user aggregator stands: adds each turn to the context, hands it on."""

    def __init__(self, context: LLMContext) -> None:
        super().__init__(name="UserAggregator")
        self.context = context

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, CallerSaid):
            self.context.add_message({"role": "user", "content": frame.text})  # type: ignore[arg-type]
            await self.push_frame(LLMContextFrame(self.context), direction)
            return
        await self.push_frame(frame, direction)


@pytest.mark.asyncio
async def test_card_read_out_and_keyed_leaves_no_card_data_anywhere(
    embedder: Any, tmp_path: Path
) -> None:
    settings = ApplianceSettings(agent=AgentSettings(llm_off_script=True, llm_intents=True))
    intent_prompts: list[str] = []

    def complete_json(messages: list[dict[str, str]], schema: dict[str, Any]) -> dict[str, Any]:
        intent_prompts.append(json.dumps(messages))  # the LLM's intent fallback sees this
        return {"intent": "none"}

    calendar = seed_demo(tmp_path / "calendar.sqlite", NOW.date())
    agent = load_agent(settings, embedder.encode, calendar=calendar, complete_json=complete_json)
    log = AuditLog(
        tmp_path / "audit.sqlite",
        envelope.load_kek(tmp_path / "kek", create=True),
        load_or_create_signing_key(tmp_path / "sign.key"),
        origin="test/pci",
        checkpoint_file=tmp_path / "checkpoints.log",
    )
    observer = AuditObserver(log, checkpoint_on_call_end=False)
    events: list[Event] = []

    def emit(event: Event) -> None:
        events.append(event)
        observer(event)

    dialog = agent.new_dialog(CALL, emit)
    dialog._now = lambda: NOW  # noqa: SLF001 - the demo calendar is seeded for NOW
    holder: dict[str, Any] = {}

    async def on_after(reply: Reply) -> None:  # what the server does with a PCI reply
        receptionist, gate = holder["receptionist"], holder["gate"]
        if reply.next is Next.PCI and reply.pci is not None:

            async def pci_done(ok: bool) -> None:
                await receptionist.speak(await receptionist.ask(receptionist.dialog.pci_done, ok))

            gate.start(pci_done, timeout_s=5.0, handoff_id=reply.pci.handoff_id)

    context = LLMContext(messages=[{"role": "system", "content": "You are a receptionist."}])
    spy = LlmSpy()
    with PaymentTerminal(200) as terminal:
        gate = holder["gate"] = PciGate(CALL, emit, LuhnHandoff(terminal.url), name="PCI")
        receptionist = holder["receptionist"] = Receptionist(
            CALL, dialog, emit, on_after, name="Receptionist"
        )
        frames: list[Frame] = []
        for text in TURNS[:3]:
            frames += [CallerSaid(text=text), SleepFrame(sleep=0.3)]
        frames += [*keys(PAN + "#", "sip-info"), SleepFrame(sleep=0.3)]  # no pause: keyed anyway
        frames += [CallerSaid(text=TURNS[3]), SleepFrame(sleep=0.8)]  # the pause starts
        frames += [*keys(f"{PAN}#{EXPIRY}{CVV}#"), SleepFrame(sleep=0.8)]
        pipeline = Pipeline([gate, UserAggregator(context), receptionist, spy])
        down, _ = await run_test(pipeline, frames_to_send=frames)
    emit(CallEnded(CALL, disposition="caller_hangup", duration_s=30.0))
    assert observer.flush()
    observer.close()

    print([(type(e).__name__, getattr(e, "user_text", getattr(e, "intent", ""))) for e in events])
    print(spy.spoken)
    # The payment terminal, and only it, got the card.
    assert len(terminal.bodies) == 1, [e.kind for e in events]
    assert terminal.bodies == [
        {"handoff_id": terminal.bodies[0]["handoff_id"], "pan": PAN, "expiry": EXPIRY, "cvv": CVV}
    ]
    pauses = [(e.active, e.digits, e.outcome) for e in events if isinstance(e, PciPause)]
    assert pauses == [(True, 0, ""), (False, 16, "accepted")]
    keyed = [(e.digit, e.in_slot, e.count) for e in events if isinstance(e, DtmfReceived)]
    assert keyed == [("", False, n) for n in range(1, 18)]  # the off-pause keys: a count
    assert len([e for e in events if isinstance(e, TurnEnded)]) == 4

    # Every record of the call, decrypted: no card data in any text.
    records = log.export_call(CALL)
    log.close()
    assert {"TurnEnded", "DtmfReceived", "PciPause", "CallEnded"} <= {r["kind"] for r in records}
    texts = strings(records)
    assert any("[PAN]" in t for t in texts) and any("[SAD]" in t for t in texts)
    leaks = {t: card_data_in(t) for t in texts if card_data_in(t)}
    assert not leaks, leaks

    # The LLM: every context handed on, its final state, and the intent fallback's prompts.
    assert spy.prompts, "no turn went to the LLM: the spy saw nothing"
    assert intent_prompts, "the intent fallback never ran: the spy saw nothing"
    seen = [*spy.prompts, *intent_prompts, json.dumps(context.get_messages()), *spy.spoken]
    leaks = {t: card_data_in(t) for t in seen if card_data_in(t)}
    assert not leaks, leaks
    assert not [f for f in down if isinstance(f, InputDTMFFrame) and f.button.value.isdigit()][17:]

    # The embedding memo kept none of the caller's words, raw or redacted (the last turn is
    # word for word a workflow example, a fixed text, which the memo holds by design).
    said = [*TURNS, *(e.user_text for e in events if isinstance(e, TurnEnded))]
    assert [t for t in said if embedder.remembers(t)] == [TURNS[3]] * 2
    await asyncio.sleep(0)
    calendar.close()


def test_the_leak_check_finds_card_data() -> None:
    """The check above can fail: it finds the card in every form the caller used."""
    for text in [*TURNS[:3], "digits 4111 1111 1111 1111", "code 737", "exp 12/99"]:
        assert card_data_in(text), text
    assert not card_data_in("my card is [PAN], expiry [EXPIRY], CVV [SAD]; born 03/04/1982")


def test_the_embedding_memo_holds_fixed_texts_only(embedder: Any) -> None:
    """A caller's words are embedded on their own and never memoised; an index batch is."""
    words = "my card number is 4111 1111 1111 1111, can you keep it on file for me"
    before = embedder.memo_size
    single = embedder.encode([words])
    assert single.shape == (1, 384) and not embedder.remembers(words)
    assert embedder.memo_size == before
    fixed = ["How do I pay my copay by card?", "Where is the pharmacy counter?"]
    embedder.encode(fixed)  # an index of fixed texts (workflow examples, KB questions)
    assert all(embedder.remembers(t) for t in fixed)
    batch = embedder.encode([words, fixed[0]], remember=False)  # told: not an index
    assert not embedder.remembers(words)
    # The vectors are the same either way (same model, same normalisation).
    assert abs(float(batch[0] @ single[0]) - 1.0) < 1e-5
