"""Output transport: barge-in clears agent audio on the wire; protected audio survives.

A thread stands in for pjsua2's media clock, pulling one 20 ms frame every 20 ms from the
bridge, exactly as ``AudioMediaPort.onFrameRequested`` does.
"""

from __future__ import annotations

import threading
import time

import pytest
from pipecat.frames.frames import InterruptionFrame, TTSAudioRawFrame
from pipecat.tests.utils import SleepFrame, run_test

from appliance.audio.bridge import AudioBridge
from appliance.pipeline.transport import PjsuaOutputTransport, transport_params

RATE = 16000


class MediaClock:
    """Pulls 20 ms frames from the bridge in real time and timestamps the voiced ones."""

    def __init__(self, bridge: AudioBridge) -> None:
        self.bridge = bridge
        self.voiced: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            if any(self.bridge.take_outbound()):
                self.voiced.append(time.monotonic())
            nxt += 0.02
            time.sleep(max(0.0, nxt - time.monotonic()))

    def __enter__(self) -> MediaClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def tone(seconds: float) -> bytes:
    return b"\x10\x20" * int(RATE * seconds)


@pytest.mark.asyncio
async def test_interruption_stops_audio_on_the_wire_within_bound() -> None:
    bridge = AudioBridge(RATE)
    out = PjsuaOutputTransport(bridge, transport_params(RATE), lead_ms=60)
    cleared: list[float] = []
    out._on_cleared = cleared.append  # type: ignore[attr-defined]
    marks: dict[str, float] = {}

    class Mark(SleepFrame):
        pass

    with MediaClock(bridge) as clock:
        frames = [
            TTSAudioRawFrame(audio=tone(3.0), sample_rate=RATE, num_channels=1),
            SleepFrame(sleep=0.8),
            InterruptionFrame(),
            SleepFrame(sleep=0.6),
        ]
        t0 = time.monotonic()
        await run_test(out, frames_to_send=frames, expected_down_frames=None)
        marks["end"] = time.monotonic()
    played_s = len(clock.voiced) * 0.02
    assert cleared, "interruption did not reach the bridge"
    assert 0.4 < played_s < 1.2, f"played {played_s:.2f}s of a 3 s reply"
    interrupt_at = t0 + 0.8
    late = [t for t in clock.voiced if t > interrupt_at + 0.15]
    assert not late, f"{len(late)} frames went out more than 150 ms after the interruption"
    assert bridge.queued_ms == 0


@pytest.mark.asyncio
async def test_protected_audio_survives_interruption() -> None:
    bridge = AudioBridge(RATE)
    out = PjsuaOutputTransport(bridge, transport_params(RATE), lead_ms=60)
    disclosure = TTSAudioRawFrame(audio=tone(1.5), sample_rate=RATE, num_channels=1)
    disclosure.interruptible = False
    with MediaClock(bridge) as clock:
        await run_test(
            out,
            frames_to_send=[
                disclosure,
                SleepFrame(sleep=0.3),
                InterruptionFrame(),
                SleepFrame(sleep=1.8),
            ],
            expected_down_frames=None,
        )
    played_s = len(clock.voiced) * 0.02
    assert played_s == pytest.approx(1.5, abs=0.06), f"disclosure played {played_s:.2f}s of 1.5 s"
