"""Answering-machine detection wired into the dialler (issue 15 item 6, ADR 0022 appendix).

Real recorded speech (../shared/data/speech: a real person's single word as the "hello?", real
Harvard sentences as a greeting) through a phone line (8 kHz, G.711 mu-law, line noise, 16 kHz),
a real beep tone, the model store's Silero VAD, and the call's real ``AudioBridge``: frames go in
with ``put_inbound`` as the media thread delivers them, and the screen reads the bridge's
inbound queue as the call's pipeline would. The dialler runs with the real gate and files.
"""

from __future__ import annotations

import asyncio
import audioop
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import soxr

from appliance.app.answering_machine import AnsweringMachineScreen
from appliance.app.dialler import DialJob, DialResult
from appliance.app.outbound import _PlayedWatch, spoken_number, voicemail_text
from appliance.audio.amd import TUNED
from appliance.audio.bridge import AudioBridge
from appliance.audit.observer import AUDITED, to_entry
from appliance.config.outbound import OutboundSettings
from appliance.config.settings import ApplianceSettings
from appliance.events import CONTENT_FIELDS, AmdDecided, Event
from appliance.media.sip import CallHandle
from tests.conftest import STORE, read_pcm, speech_dir
from tests.unit.test_dialler import NY, Rig

LINE = 8000
RATE = 16000
FRAME = RATE // 50  # 20 ms at the bridge's 16 kHz


@pytest.fixture(scope="module")
def vad() -> Path:
    path = STORE / "vad" / "silero_vad.onnx"
    if not path.exists():
        pytest.skip(f"Silero VAD not in the model store at {path}; run ./build.sh setup")
    return path


def sil(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * LINE), dtype=np.int16)


def beep(freq: float, ms: int) -> np.ndarray:
    t = np.arange(int(LINE * ms / 1000)) / LINE
    return (np.sin(2 * np.pi * freq * t) * 32767 * 0.25).astype(np.int16)


def phone_line(*parts: np.ndarray) -> np.ndarray:
    """8 kHz parts -> line noise at -55 dBFS, G.711 mu-law round trip, 16 kHz (soxr)."""
    x = np.concatenate(parts).astype(np.float64)
    x += np.random.default_rng(7).normal(0.0, 32767 * 10 ** (-55 / 20), len(x))
    pcm = np.clip(x, -32768, 32767).astype(np.int16).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pcm = audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)
    return soxr.resample(np.frombuffer(pcm, dtype=np.int16), LINE, RATE).astype(np.int16)


def live_answer() -> np.ndarray:
    """A real person's single word (as short as a "hello?"), then waiting in silence."""
    word = read_pcm(speech_dir() / "fsdd" / "0_jackson_3.wav", LINE)
    return phone_line(sil(0.4), word, sil(4.0))


def greeting_with_beep() -> tuple[np.ndarray, int, int]:
    """Two real Harvard sentences, a 1 kHz 400 ms beep, then recording silence.

    Returns the audio and the beep's onset and end (ms since the answer).
    """
    osr = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", LINE)[: 6 * LINE]
    lead, gap = sil(0.5), sil(0.6)
    onset = (len(lead) + len(osr) + len(gap)) * 1000 // LINE
    return phone_line(lead, osr, gap, beep(1000.0, 400), sil(4.0)), onset, onset + 400


async def feed(
    bridge: AudioBridge, pcm: np.ndarray, then_hang_up: CallHandle | None = None
) -> None:
    """Deliver ``pcm`` in 20 ms frames as the media thread does, four times real time."""
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        bridge.put_inbound(pcm[i : i + FRAME].tobytes())
        await asyncio.sleep(0.005)
    if then_hang_up is not None:
        then_hang_up.disconnected.set()


def amd_events(events: list[Event]) -> list[AmdDecided]:
    return [e for e in events if isinstance(e, AmdDecided)]


def test_a_live_answer_is_decided_human_at_once_and_recorded_without_audio(vad: Path) -> None:
    events: list[Event] = []
    screen = AnsweringMachineScreen(vad, events.append)
    handle = CallHandle("c-live", AudioBridge(RATE))

    async def run() -> bool:
        feeder = asyncio.create_task(feed(handle.bridge, live_answer()))
        machine = await screen.detect(handle)
        feeder.cancel()
        return machine

    assert asyncio.run(run()) is False
    assert handle.bridge.on_inbound is None  # the queue is handed back to the pipeline
    assert handle.bridge.stats.rx_dropped == 0
    [event] = amd_events(events)
    assert (event.call_id, event.decision, event.treated_as) == ("c-live", "human", "live")
    assert event.cause == "after_greeting_silence"
    # The word ends about 0.9 s in; AMD decides after 1 s of silence, not at its 6 s limit.
    assert 1400 <= event.decided_at_ms <= 2600
    assert 0 < event.speech_ms < 1000 and event.words == 1
    assert event.beep_ms is None and event.cue == "" and event.cue_at_ms is None
    # Features and times only: nothing is sealed content, nothing is audio.
    fields = set(asdict(event))
    assert not fields & CONTENT_FIELDS
    assert "AmdDecided" in AUDITED and to_entry(event).content is None
    assert all(isinstance(v, int | float | str | type(None)) for v in asdict(event).values())


def test_a_greeting_is_a_machine_and_the_cue_comes_after_the_beep(vad: Path) -> None:
    events: list[Event] = []
    screen = AnsweringMachineScreen(vad, events.append)
    handle = CallHandle("c-vm", AudioBridge(RATE))
    pcm, onset, end = greeting_with_beep()

    async def run() -> tuple[bool, object]:
        feeder = asyncio.create_task(feed(handle.bridge, pcm))
        machine = await screen.detect(handle)
        assert not amd_events(events)  # a machine is recorded once, at the message cue
        cue = await screen.wait_for_cue(handle) if machine else None
        feeder.cancel()
        return machine, cue

    machine, cue = asyncio.run(run())
    assert machine is True
    assert cue is not None and cue.cause == "beep"  # type: ignore[attr-defined]
    [event] = amd_events(events)
    assert (event.decision, event.treated_as, event.cue) == ("machine", "voicemail", "beep")
    assert event.cause in {"long_greeting", "max_words", "long_word"}
    assert event.decided_at_ms < onset  # decided from the speech pattern, before the beep
    assert event.beep_ms is not None and abs(event.beep_ms - onset) <= 100
    assert event.beep_hz is not None and abs(event.beep_hz - 1000.0) < 20
    assert event.cue_at_ms is not None and end <= event.cue_at_ms <= end + 250
    assert handle.bridge.on_inbound is None and handle.bridge.stats.rx_dropped == 0


def test_dead_air_and_no_audio_count_as_live(vad: Path) -> None:
    events: list[Event] = []
    quick = replace(TUNED, initial_silence_ms=1000, total_analysis_ms=1500)
    screen = AnsweringMachineScreen(vad, events.append, quick, slack_s=0.3)
    silent, mute = (
        CallHandle("c-silent", AudioBridge(RATE)),
        CallHandle("c-mute", AudioBridge(RATE)),
    )

    async def run() -> list[bool]:
        feeder = asyncio.create_task(feed(silent.bridge, phone_line(sil(3.0))))
        first = await screen.detect(silent)
        feeder.cancel()
        return [first, await screen.detect(mute)]  # no RTP at all: the wall-clock deadline

    assert asyncio.run(run()) == [False, False]
    got = {e.call_id: (e.decision, e.cause, e.treated_as) for e in amd_events(events)}
    assert got == {
        "c-silent": ("unknown", "initial_silence", "live"),
        "c-mute": ("unknown", "no_audio", "live"),
    }
    mute_event = next(e for e in amd_events(events) if e.call_id == "c-mute")
    assert 1500 <= mute_event.wall_ms < 3000


def test_a_machine_that_hangs_up_before_the_beep_gets_no_message(vad: Path) -> None:
    events: list[Event] = []
    screen = AnsweringMachineScreen(vad, events.append)
    handle = CallHandle("c-gone", AudioBridge(RATE))
    pcm, onset, _ = greeting_with_beep()
    cut = onset * RATE // 1000 - RATE // 2  # the line drops half a second before the beep

    async def run() -> object:
        feeder = asyncio.create_task(feed(handle.bridge, pcm[:cut], then_hang_up=handle))
        assert await screen.detect(handle) is True
        cue = await screen.wait_for_cue(handle)
        await feeder
        return cue

    assert asyncio.run(run()) is None
    [event] = amd_events(events)
    assert (event.decision, event.treated_as, event.cue, event.cue_at_ms) == (
        "machine",
        "voicemail",
        "hung_up",
        None,
    )


def test_a_detector_that_cannot_be_built_or_fails_leaves_the_answer_live(vad: Path) -> None:
    from appliance.audio.amd import AnsweringMachineDetector

    def broken_vad(window: np.ndarray, rate: int) -> np.ndarray:
        raise RuntimeError("onnxruntime failed")

    def no_detector(rate: int) -> AnsweringMachineDetector:
        raise ValueError(f"sample rate {rate} Hz")

    events: list[Event] = []
    failing = AnsweringMachineScreen(
        vad, events.append, factory=lambda rate: AnsweringMachineDetector(broken_vad, TUNED, rate)
    )
    missing = AnsweringMachineScreen(vad, events.append, factory=no_detector)
    a, b = CallHandle("c-fails", AudioBridge(RATE)), CallHandle("c-none", AudioBridge(RATE))

    async def run() -> list[bool]:
        feeder = asyncio.create_task(feed(a.bridge, live_answer()))
        got = [await failing.detect(a), await missing.detect(b)]
        feeder.cancel()
        return got

    assert asyncio.run(run()) == [False, False]
    got = {e.call_id: (e.decision, e.cause, e.treated_as) for e in amd_events(events)}
    assert got == {
        "c-fails": ("unknown", "error", "live"),
        "c-none": ("unknown", "no_detector", "live"),
    }
    assert a.bridge.on_inbound is None


class AudioPlacer:
    """The rig's placer, but the answered call's bridge receives real callee audio."""

    def __init__(self, rig: Rig, audio: dict[str, np.ndarray]) -> None:
        self.rig, self.audio = rig, audio
        self.feeders: list[asyncio.Task[None]] = []

    async def place(
        self, call_id: str, uri: str, headers: dict[str, str], ring_timeout_s: float
    ) -> DialResult:
        number = uri.removeprefix("sip:").split("@")[0]
        handle = CallHandle(call_id=call_id, bridge=AudioBridge(RATE))
        self.feeders.append(asyncio.create_task(feed(handle.bridge, self.audio[number])))
        return DialResult(200, handle)


def test_the_dialler_leaves_voicemail_on_a_machine_and_converses_with_a_person(
    vad: Path, tmp_path: Path
) -> None:
    machine_number = "+12125550177"
    rig = Rig(tmp_path)
    rig.grant(NY, machine_number)
    screen = AnsweringMachineScreen(vad, rig.events.append)
    pcm, _, beep_end = greeting_with_beep()
    rig.dialler.placer = AudioPlacer(rig, {NY: live_answer(), machine_number: pcm})
    left: list[tuple[str, str, int]] = []

    async def leave(job: DialJob, handle: CallHandle) -> None:
        cue = await screen.wait_for_cue(handle)
        assert cue is not None
        left.append((job.job_id, cue.cause, cue.at_ms))

    rig.dialler.detect_machine = screen.detect
    rig.dialler.leave_message = leave
    person = rig.dialler.submit(DialJob(NY, appointment_id="a1"))
    machine = rig.dialler.submit(DialJob(machine_number, appointment_id="a2"))
    rig.run()
    assert rig.store.outcome(person.job_id) == "confirmed" and rig.conversations == ["a1"]
    assert rig.store.outcome(machine.job_id) == "voicemail"
    assert [(j, c) for j, c, _ in left] == [(machine.job_id, "beep")]
    assert left[0][2] >= beep_end
    assert [(e.decision, e.treated_as) for e in amd_events(rig.events)] == [
        ("human", "live"),
        ("machine", "voicemail"),
    ]


def test_the_voicemail_message_holds_the_clinic_and_a_call_back_number_only() -> None:
    settings = ApplianceSettings.model_validate(
        {"outbound": {"caller_id": "+12125550100"}, "clinic": {"name": "Maple Street Clinic"}}
    )
    text = voicemail_text(settings)
    assert text == (
        "This message is for you from Maple Street Clinic. Please call us back at "
        "2 1 2, 5 5 5, 0 1 0 0. Thank you, goodbye."
    )
    own = settings.model_copy(
        update={"outbound": settings.outbound.model_copy(update={"callback_number": "4155550199"})}
    )
    assert "4 1 5, 5 5 5, 0 1 9 9" in voicemail_text(own)
    assert spoken_number("sip:+12125550100@pbx.lan;user=phone") == "2 1 2, 5 5 5, 0 1 0 0"
    assert spoken_number("tel:+442079460134") == "0 2 0, 7 9 4 6, 0 1 3 4"
    assert voicemail_text(ApplianceSettings()) == ""  # no number: no message is left
    # Nothing but the clinic and the call-back number can be put in the message.
    for bad in (
        "Hi {patient_name}, call {callback_number}.",
        "Your appointment on {appointment_when}: {callback_number}.",
        "Please call {clinic}.",
    ):
        with pytest.raises(ValueError, match="voicemail message"):
            OutboundSettings(voicemail_message=bad)
    with pytest.raises(ValueError, match="phone number"):
        OutboundSettings(callback_number="call the front desk")


def test_the_message_counts_as_played_only_once_its_words_were_heard() -> None:
    async def run() -> list[bool]:
        watch = _PlayedWatch(asyncio.get_running_loop(), "Please call us back at 2 1 2.")
        seen = []
        for part in ("Hello, you've reached the clinic.", "Please call us back", "at 2 1 2."):
            watch.heard(part)
            await asyncio.sleep(0)
            seen.append(watch.done.is_set())
        return seen

    assert asyncio.run(run()) == [False, False, True]
