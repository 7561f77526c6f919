"""Builds one call's pipecat pipeline from the shared engines.

::

    pjsua-in ─► PCI gate ─► STT ─► user aggregator (Silero VAD, smart-turn v3, mute until
      disclosure) ─► receptionist (dialogue manager | LLM) ─► disclosure opener ─► LLM ─► TTS
      ─► pjsua-out
      ─► played-text tracker ─► assistant aggregator

The composition of media and pipeline happens in :mod:`appliance.app`; this module only needs
an :class:`~appliance.audio.bridge.AudioBridge`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.turns.user_mute import MuteUntilFirstBotCompleteUserMuteStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from appliance.agent.dialog import DialogManager, Reply
from appliance.agent.runtime import AgentRuntime
from appliance.audio.bridge import AudioBridge
from appliance.config.settings import ApplianceSettings
from appliance.events import Event
from appliance.metrics.latency import TurnLatencyObserver
from appliance.models.engines import ModelSet
from appliance.pipeline.endpointing import SlotAwareTurnStopStrategy
from appliance.pipeline.health import StageHealthObserver
from appliance.pipeline.payments import LuhnHandoff, PaymentHandler
from appliance.pipeline.pci import PciGate, PciPrompts
from appliance.pipeline.phrase_cache import PhraseCache
from appliance.pipeline.played import PlayedTextTracker
from appliance.pipeline.receptionist import Receptionist
from appliance.pipeline.services import (
    LocalKokoroTTSService,
    LocalLlamaLLMService,
    LocalWhisperSTTService,
)
from appliance.pipeline.transport import PjsuaTransport
from appliance.policy.disclosure import DisclosureOpener, disclosure_text
from appliance.text.listening import FREE, Listening

#: Silero VAD hangover before "stopped speaking", in seconds (pipecat's default is 0.2).
VAD_STOP_SECS = 0.2

#: Few-shot turns that prime the tiny default LLM; part of the cached KV prefix.
FEW_SHOT = [
    {"role": "user", "content": "Do you take walk-ins?"},
    {"role": "assistant", "content": "I'll pass your question to our staff."},
    {"role": "user", "content": "Is Dr. Patel in today?"},
    {"role": "assistant", "content": "I'm not sure, so I'll pass your question to our staff."},
]


class StoreSileroVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD loaded from the verified model store instead of pipecat's package data.

    One ONNX Runtime session per analyzer, i.e. per call: the model keeps recurrent state
    between 32 ms windows (512 samples at 16 kHz, 256 at 8 kHz), so calls cannot share one.
    ``SileroVADAnalyzer.__init__`` always loads pipecat's bundled copy, so it is bypassed and
    its fields are set here (pipecat-ai 1.14; ``tests/pipeline/test_call_pipeline.py`` checks
    that the fields match a stock analyzer's).

    Args:
        model_path: ``silero_vad.onnx`` in the model store.
        params: VAD thresholds and start/stop times (seconds).

    Raises:
        onnxruntime.capi.onnxruntime_pybind11_state.NoSuchFile: ``model_path`` is missing
            (other ``onnxruntime`` exceptions for an invalid file).
    """

    def __init__(self, model_path: Path, params: VADParams) -> None:
        VADAnalyzer.__init__(self, sample_rate=None, params=params)
        self._model = SileroOnnxModel(str(model_path), force_onnx_cpu=True)  # type: ignore[no-untyped-call]
        self._windows_since_reset = 0
        self._low_confidence_windows = 0


def user_turn_params(
    models: ModelSet,
    *,
    mute_until_first_bot: bool = True,
    listening: Callable[[], Listening] = lambda: FREE,
    stt: LocalWhisperSTTService | None = None,
) -> LLMUserAggregatorParams:
    """Turn-taking for a call: Silero VAD and smart-turn v3 endpointing, slot-aware.

    By default the caller is muted until the first agent utterance (the disclosure) has played.
    ``listening`` says what the dialogue expects, so that a number said in groups is not cut
    at its pauses (:class:`~appliance.pipeline.endpointing.SlotAwareTurnStopStrategy`); with
    ``stt`` the turn never ends while one of its segments is still being transcribed.
    """
    return LLMUserAggregatorParams(
        vad_analyzer=StoreSileroVADAnalyzer(models.vad_path, VADParams(stop_secs=VAD_STOP_SECS)),
        user_turn_strategies=UserTurnStrategies(
            stop=[
                SlotAwareTurnStopStrategy(
                    turn_analyzer=LocalSmartTurnAnalyzerV3(
                        smart_turn_model_path=str(models.turn_path)
                    ),
                    listening=listening,
                    stt_pending=(lambda: stt.segments_pending) if stt else (lambda: 0),
                    stt_idle=stt.wait_idle if stt else None,
                )
            ]
        ),
        user_mute_strategies=(
            [MuteUntilFirstBotCompleteUserMuteStrategy()]  # type: ignore[no-untyped-call]
            if mute_until_first_bot
            else []
        ),
    )


def system_prompt(settings: ApplianceSettings) -> str:
    """The LLM system prompt, filled with the clinic's facts."""
    clinic = settings.clinic
    return (
        settings.agent.system_prompt.replace("{clinic}", clinic.name)
        .replace("{hours}", clinic.hours)
        .replace("{address}", clinic.address)
        .replace("{parking}", clinic.parking)
    )


def initial_messages(settings: ApplianceSettings) -> list[dict[str, str]]:
    """System prompt plus few-shot examples: the shared, KV-cached prompt prefix."""
    return [{"role": "system", "content": system_prompt(settings)}, *FEW_SHOT]


@dataclass
class CallPipeline:
    """One call's pipeline, its task and the pieces tests and the server look at."""

    task: PipelineWorker
    transport: PjsuaTransport
    receptionist: Receptionist
    latency: TurnLatencyObserver
    tracker: PlayedTextTracker
    context: LLMContext
    pci: PciGate
    stt: LocalWhisperSTTService


def build_call_pipeline(
    call_id: str,
    bridge: AudioBridge,
    models: ModelSet,
    settings: ApplianceSettings,
    emit: Callable[[Event], None],
    on_after: Callable[[Reply], Awaitable[None]],
    agent: AgentRuntime,
    phrases: PhraseCache | None = None,
    payments: PaymentHandler | None = None,
    *,
    dialog: DialogManager | None = None,
    greeting: str | None = None,
) -> CallPipeline:
    """Assemble the pipeline for one answered call.

    Args:
        call_id: Opaque call id for events and logs.
        bridge: The call's audio bridge (16-bit mono PCM at ``bridge.sample_rate`` Hz).
        models: Engines shared by all calls.
        settings: Appliance settings.
        emit: Event sink.
        on_after: Awaited with replies that end in an action (transfer, hang up, PCI pause).
        agent: Workflows, intent matcher, knowledge base and calendar (shared by calls).
        phrases: Pre-rendered fixed phrases served without synthesis.
        payments: Where PCI-pause card digits go (default: Luhn check + ``[payments]`` URL).
        dialog: The call's dialogue, already started (a reminder call the box placed:
            ``DialogManager.start_outbound``); ``None``: a new one for an inbound caller.
        greeting: What follows the disclosure (the outbound workflow's opening); ``None``:
            ``[agent] greeting``.
    """
    dropped = {"ms": 0.0}

    def on_cleared(ms: float) -> None:
        dropped["ms"] = ms

    transport = PjsuaTransport(bridge, on_cleared=on_cleared)
    if dialog is None:
        dialog = agent.new_dialog(call_id, emit)

    def listening() -> Listening:
        return dialog.listening

    stt = LocalWhisperSTTService(models.stt, listening=listening, name="STT")
    context = LLMContext(messages=initial_messages(settings))  # type: ignore[arg-type]
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=user_turn_params(models, listening=listening, stt=stt),
    )
    receptionist = Receptionist(
        call_id,
        dialog,
        emit,
        on_after,
        stt_confidence=lambda: stt.last_confidence,
        stt_language=lambda: stt.last_language,
        idle_timeout_s=settings.agent.idle_timeout_s,
        turn_text=stt.take_turn_text,
        name="Receptionist",
    )
    pci = PciGate(
        call_id,
        emit,
        payments or LuhnHandoff(settings.payments.handoff_url),
        name="PCI",
    )
    disclosure = disclosure_text(settings.agent.disclosure, settings.clinic.name)
    opening = settings.agent.greeting if greeting is None else greeting
    opener = DisclosureOpener(disclosure, opening, name="Disclosure")
    llm = LocalLlamaLLMService(models.llm, max_tokens=settings.agent.max_reply_tokens, name="LLM")
    tts = LocalKokoroTTSService(
        models.tts, speed=settings.models.tts_speed, cache=phrases, name="TTS"
    )
    tracker = PlayedTextTracker(
        call_id,
        emit,
        disclosure,
        source=lambda: receptionist.last_source,
        dropped_ms=lambda: dropped["ms"],
        name="Played",
    )
    pipeline = Pipeline(
        [
            transport.input(),
            pci,
            stt,
            aggregators.user(),
            receptionist,
            opener,
            llm,
            tts,
            transport.output(),
            tracker,
            aggregators.assistant(),
        ]
    )
    latency = TurnLatencyObserver(
        call_id,
        emit,
        vad_stop_secs=VAD_STOP_SECS,
        listening=lambda: dialog.listening.kind,
        stt_confidence=lambda: stt.last_confidence,
    )

    async def on_stage_failure(stage: str) -> None:
        await receptionist.speak(await receptionist.ask(receptionist.dialog.stage_failed, stage))

    health = StageHealthObserver(call_id, on_stage_failure)
    task = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=bridge.sample_rate,
            audio_out_sample_rate=bridge.sample_rate,
            enable_metrics=True,
        ),
        observers=[latency, health],
        idle_timeout_secs=None,
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
    )
    return CallPipeline(task, transport, receptionist, latency, tracker, context, pci, stt)


def fixed_phrases(settings: ApplianceSettings, extra: list[str] | None = None) -> list[str]:
    """The fixed utterances of a call: disclosure, greeting, PCI prompts, then ``extra``.

    The PCI pause's entry prompts are spoken mid-pause, where a slow synthesis would leave the
    caller keying into silence, so they are pre-rendered too.
    """
    phrases = [disclosure_text(settings.agent.disclosure, settings.clinic.name)]
    if settings.agent.greeting:
        phrases.append(settings.agent.greeting)
    prompts = PciPrompts()
    return [*phrases, prompts.expiry, prompts.cvv, *(extra or [])]
