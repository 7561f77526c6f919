"""The turn-latency observer: stage figures from real pipecat frames and their push times."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    Frame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import ProcessingMetricsData, TTFBMetricsData
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from appliance.events import Event, TurnLatency
from appliance.metrics.latency import TurnLatencyObserver


class Passthrough(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


SRC = FrameProcessor(name="Source")
DST = FrameProcessor(name="Sink")


def pushed(frame: Frame, at_s: float, *, first: bool = True) -> FramePushed:
    return FramePushed(
        source=SRC,
        destination=DST,
        frame=frame,
        direction=FrameDirection.DOWNSTREAM,
        timestamp=round(at_s * 1e9),
        first_push=first,
    )


def ttfb(processor: str, value: float) -> MetricsFrame:
    return MetricsFrame(data=[TTFBMetricsData(processor=processor, value=value)])


def transcript() -> TranscriptionFrame:
    return TranscriptionFrame("what time do you open", "caller", "2026-01-01T00:00:00Z")


async def feed(observer: TurnLatencyObserver, timeline: list[tuple[float, Frame]]) -> None:
    for at, frame in timeline:
        await observer.on_push_frame(pushed(frame, at))


@pytest.fixture()
def events() -> list[Event]:
    return []


async def test_one_turn_breaks_down_into_its_stages(events: list[Event]) -> None:
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2)
    await feed(
        obs,
        [
            (10.0, VADUserStoppedSpeakingFrame(stop_secs=0.2)),  # voice ended at 9.8
            (10.3, UserStoppedSpeakingFrame()),  # smart-turn: turn over
            (10.45, transcript()),
            (10.5, ttfb("LLM#0", 0.35)),
            (10.9, ttfb("TTS#0", 0.12)),
            (11.1, BotStartedSpeakingFrame()),
        ],
    )
    assert len(events) == 1 and obs.turns == events
    lat = events[0]
    assert isinstance(lat, TurnLatency) and lat.call_id == "c1"
    assert lat.endpointing_s == pytest.approx(0.5)  # 10.3 - 9.8
    assert lat.stt_s == pytest.approx(0.45)  # 10.45 - 10.0 (VAD stop to transcript)
    assert lat.llm_ttft_s == pytest.approx(0.35)
    assert lat.tts_ttfa_s == pytest.approx(0.12)
    assert lat.voice_to_voice_s == pytest.approx(1.3)  # 11.1 - 9.8


async def test_the_vad_frames_own_hangover_wins(events: list[Event]) -> None:
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2)
    await feed(
        obs,
        [
            (5.0, VADUserStoppedSpeakingFrame(stop_secs=0.8)),  # voice ended at 4.2
            (5.1, UserStoppedSpeakingFrame()),
            (5.2, transcript()),
            (6.0, BotStartedSpeakingFrame()),
        ],
    )
    (lat,) = events
    assert lat.endpointing_s == pytest.approx(0.9)
    assert lat.voice_to_voice_s == pytest.approx(1.8)


async def test_templated_turn_has_no_llm_figure_and_metrics_go_by_processor(
    events: list[Event],
) -> None:
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2)
    await feed(
        obs,
        [
            (1.0, VADUserStoppedSpeakingFrame(stop_secs=0.2)),
            (1.2, transcript()),
            (1.25, MetricsFrame(data=[ProcessingMetricsData(processor="LLM#0", value=0.5)])),
            (1.3, ttfb("TTS#0", 0.0)),  # zero: not a measurement
            (1.4, ttfb("TTS#0", 0.05)),
            (1.5, ttfb("TTS#0", 0.4)),  # a later sentence: only the first counts
            (1.6, BotStartedSpeakingFrame()),
        ],
    )
    (lat,) = events
    assert lat.llm_ttft_s is None
    assert lat.endpointing_s is None  # no UserStoppedSpeakingFrame seen
    assert lat.tts_ttfa_s == pytest.approx(0.05)
    assert lat.voice_to_voice_s == pytest.approx(0.8)


async def test_a_vad_blip_without_transcript_is_not_a_turn(events: list[Event]) -> None:
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2)
    await feed(
        obs,
        [
            (1.0, VADUserStoppedSpeakingFrame(stop_secs=0.2)),
            (1.5, BotStartedSpeakingFrame()),
            # Frames outside a turn are ignored; the next turn starts clean.
            (2.0, transcript()),
            (2.1, ttfb("LLM#0", 9.0)),
            (3.0, VADUserStoppedSpeakingFrame(stop_secs=0.2)),
            (3.4, transcript()),
            (3.9, BotStartedSpeakingFrame()),
        ],
    )
    (lat,) = events
    assert lat.llm_ttft_s is None
    assert lat.stt_s == pytest.approx(0.4)
    assert lat.voice_to_voice_s == pytest.approx(1.1)


async def test_repeated_pushes_of_a_frame_do_not_move_the_marks(events: list[Event]) -> None:
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2)
    vad, text, bot = (
        VADUserStoppedSpeakingFrame(stop_secs=0.2),
        transcript(),
        BotStartedSpeakingFrame(),
    )
    await obs.on_push_frame(pushed(vad, 1.0))
    await obs.on_push_frame(pushed(text, 1.3))
    await obs.on_push_frame(pushed(vad, 1.4, first=False))  # the same frame, next hop
    await obs.on_push_frame(pushed(text, 1.5, first=False))
    await obs.on_push_frame(pushed(bot, 2.0))
    (lat,) = events
    assert lat.stt_s == pytest.approx(0.3)
    assert lat.voice_to_voice_s == pytest.approx(1.2)


async def test_in_a_running_pipeline_figures_follow_the_push_times() -> None:
    events: list[Event] = []
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2)
    await run_test(
        Passthrough(),
        frames_to_send=[
            VADUserStoppedSpeakingFrame(stop_secs=0.2),
            SleepFrame(sleep=0.15),
            UserStoppedSpeakingFrame(),
            SleepFrame(sleep=0.1),
            transcript(),
            SleepFrame(sleep=0.2),
            BotStartedSpeakingFrame(),
            SleepFrame(sleep=0.05),
        ],
        observers=[obs],
    )
    (lat,) = [e for e in events if isinstance(e, TurnLatency)]
    # Lower bounds are the sleeps (plus the 0.2 s hangover); upper bounds allow a busy host.
    assert 0.35 <= lat.endpointing_s < 0.35 + 0.5
    assert 0.25 <= lat.stt_s < 0.25 + 0.5
    assert 0.65 <= lat.voice_to_voice_s < 0.65 + 0.5
    assert lat.endpointing_s < lat.voice_to_voice_s


async def test_the_agent_stage_closes_the_breakdown(events: list[Event]) -> None:
    receptionist = FrameProcessor(name="Receptionist#0")
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2, listening=lambda: "date")
    timeline: list[tuple[float, Frame, FrameProcessor]] = [
        (10.0, VADUserStoppedSpeakingFrame(stop_secs=0.2), SRC),  # voice ended at 9.8
        (10.2, transcript(), SRC),
        (10.4, UserStoppedSpeakingFrame(), SRC),
        (10.5, TTSSpeakFrame("not the receptionist's"), SRC),  # another processor's frame
        (10.55, LLMFullResponseStartFrame(), receptionist),  # the dialogue answered
        (10.6, TTSSpeakFrame("later"), receptionist),  # only the first reply frame counts
        (11.0, BotStartedSpeakingFrame(), SRC),
    ]
    for at, frame, source in timeline:
        push = pushed(frame, at)
        push.source = source
        await obs.on_push_frame(push)
    (lat,) = events
    assert lat.endpointing_s == pytest.approx(0.6)
    assert lat.agent_s == pytest.approx(0.15)
    assert lat.reply_s == pytest.approx(0.45)
    assert lat.endpointing_s + lat.agent_s + lat.reply_s == pytest.approx(lat.voice_to_voice_s)
    assert lat.listening == "date"


async def test_stt_confidence_is_the_turns_last_transcripts(events: list[Event]) -> None:
    """Read from the STT at each transcript: the turn keeps its last one's (the dialogue's)."""
    confidence: list[float | None] = [0.91]
    obs = TurnLatencyObserver(
        "c1", events.append, vad_stop_secs=0.2, stt_confidence=lambda: confidence[0]
    )
    await feed(
        obs,
        [
            (1.0, VADUserStoppedSpeakingFrame(stop_secs=0.2)),
            (1.2, transcript()),  # read 0.91
            (1.3, VADUserStoppedSpeakingFrame(stop_secs=0.2)),  # the caller went on
        ],
    )
    confidence[0] = 0.42
    await feed(obs, [(1.6, transcript()), (2.0, BotStartedSpeakingFrame())])
    confidence[0] = 0.99  # a later segment's figure does not reach the reported turn
    await feed(obs, [(2.1, VADUserStoppedSpeakingFrame(stop_secs=0.2))])
    confidence[0] = None  # the next turn's STT gave none
    await feed(obs, [(2.3, transcript()), (2.8, BotStartedSpeakingFrame())])
    assert [e.stt_confidence for e in events if isinstance(e, TurnLatency)] == [0.42, None]


async def test_without_a_confidence_source_the_figure_is_none(events: list[Event]) -> None:
    obs = TurnLatencyObserver("c1", events.append, vad_stop_secs=0.2)
    await feed(
        obs,
        [
            (1.0, VADUserStoppedSpeakingFrame(stop_secs=0.2)),
            (1.2, transcript()),
            (1.5, BotStartedSpeakingFrame()),
        ],
    )
    (lat,) = events
    assert isinstance(lat, TurnLatency) and lat.stt_confidence is None
