"""Building one call's pipeline: which ONNX Runtime sessions it opens.

Silero VAD keeps recurrent state per audio stream, so each call needs its own session, and
exactly one: pipecat's ``SileroVADAnalyzer.__init__`` loads its bundled copy, which the
store-loaded analyzer must not do before loading the verified store file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams

from appliance.audio.bridge import AudioBridge
from appliance.config.settings import ApplianceSettings
from appliance.pipeline.builder import CallPipeline, StoreSileroVADAnalyzer, build_call_pipeline
from tests.conftest import read_pcm, speech_dir

pytestmark = pytest.mark.pipeline


@pytest.fixture()
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths of every ONNX Runtime session created while the test runs."""
    opened: list[str] = []
    real = onnxruntime.InferenceSession

    class CountingSession(real):  # type: ignore[misc, valid-type]
        def __init__(self, path_or_bytes, *args, **kwargs) -> None:  # noqa: ANN001
            opened.append(str(path_or_bytes))
            super().__init__(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", CountingSession)
    return opened


def build(call_id: str, models, agent) -> CallPipeline:  # noqa: ANN001
    async def on_after(_reply: object) -> None:
        return None

    settings = ApplianceSettings()
    return build_call_pipeline(
        call_id, AudioBridge(16000), models, settings, lambda _e: None, on_after, agent
    )


def test_one_call_pipeline_loads_silero_once_from_the_store(models, agent, sessions) -> None:  # noqa: ANN001
    call = build("call-vad", models, agent)
    assert call.task is not None
    silero = [p for p in sessions if Path(p).name == "silero_vad.onnx"]
    assert silero == [str(models.vad_path)], f"Silero sessions opened: {silero}"
    # The only other per-call session is smart-turn v3, also from the store.
    assert sorted(sessions) == sorted([str(models.vad_path), str(models.turn_path)]), sessions


def test_a_second_call_gets_its_own_vad_session(models, agent, sessions) -> None:  # noqa: ANN001
    build("call-1", models, agent)
    build("call-2", models, agent)
    silero = [p for p in sessions if Path(p).name == "silero_vad.onnx"]
    assert silero == [str(models.vad_path)] * 2


def test_store_analyzer_is_initialised_like_pipecats_own(store: Path) -> None:
    params = VADParams(stop_secs=0.2)
    ours = StoreSileroVADAnalyzer(store / "vad" / "silero_vad.onnx", params)
    stock = SileroVADAnalyzer(params=params)
    # Bypassing SileroVADAnalyzer.__init__ must leave no field unset (a pipecat upgrade that
    # adds one fails here).
    assert set(vars(ours)) == set(vars(stock))
    for analyzer in (ours, stock):
        analyzer.set_sample_rate(16000)
    # Same model bytes (the store copies pipecat's file), same scores on real speech.
    pcm = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", 16000)[: 16000 * 2]
    windows = [pcm[i : i + 512].tobytes() for i in range(0, len(pcm) - 511, 512)]
    a = np.array([np.ravel(ours.voice_confidence(w))[0] for w in windows])
    b = np.array([np.ravel(stock.voice_confidence(w))[0] for w in windows])
    assert np.allclose(a, b, atol=1e-5)
    assert a.max() > 0.9 and a.min() < 0.1  # it hears speech and silence, not a constant
