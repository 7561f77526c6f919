"""A scripted WebRTC "browser" for tests and benchmarks (aiortc), with wire timings.

* :class:`CallerTrack` is the microphone: 20 ms frames of silence, real-time paced, until
  :meth:`CallerTrack.say` queues speech; it notes when the last voiced frame of each utterance
  was handed to aiortc (the caller's end of turn, on the client's clock).
* :class:`Listener` records the agent's audio as it arrives, with arrival times, so that
  voice-to-voice latency can be measured on the client the way ``benchmarks/wire.py`` measures
  it from a loopback capture on SIP: first voiced agent frame after the caller's last voiced
  frame, voiced meaning above :data:`VOICED_RMS` (-40 dBFS, as ``benchmarks/wire.py``).
"""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

RATE = 16000
FRAME = RATE // 50
#: -40 dBFS as a 16-bit RMS level.
VOICED_RMS = 32768 * 10 ** (-40 / 20)


def last_voiced_sample(pcm: np.ndarray, rate: int = RATE) -> int:
    """Index just past the last 20 ms frame of ``pcm`` above :data:`VOICED_RMS`."""
    n = rate // 50
    count = len(pcm) // n
    frames = pcm[: count * n].astype(np.float64).reshape(count, n)
    voiced = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > VOICED_RMS)
    return int((voiced[-1] + 1) * n) if len(voiced) else 0


class CallerTrack(MediaStreamTrack):
    """The test's microphone (16 kHz mono), with the send time of each utterance's end."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue = bytearray()
        self._start: float | None = None
        self._pts = 0
        self._sent = 0  # bytes of queued speech handed out so far
        self._queued = 0  # bytes of speech ever queued
        self._marks: list[int] = []  # byte positions of utterance ends (last voiced frame)
        #: Loop time (s) at which each utterance's last voiced frame was sent.
        self.ends: list[float] = []

    def say(self, pcm: np.ndarray) -> float:
        """Queue 16 kHz int16 speech; returns its length in s."""
        self._marks.append(self._queued + 2 * last_voiced_sample(pcm))
        data = pcm.astype(np.int16).tobytes()
        self._queue += data
        self._queued += len(data)
        return len(pcm) / RATE

    @property
    def speaking(self) -> bool:
        """Whether queued speech is still being sent."""
        return bool(self._queue)

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame (speech if queued, else silence)."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME
            await asyncio.sleep(max(0.0, self._start + self._pts / RATE - loop.time()))
        chunk = bytes(self._queue[: 2 * FRAME])
        del self._queue[: 2 * FRAME]
        self._sent += len(chunk)
        while self._marks and self._sent >= self._marks[0]:
            self._marks.pop(0)
            self.ends.append(loop.time())
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(chunk.ljust(2 * FRAME, b"\0"))
        frame.pts = self._pts
        frame.sample_rate = RATE
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


class Listener:
    """Records a received audio track: mono samples and, per frame, (arrival time, RMS)."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.levels: list[tuple[float, float]] = []
        self.rate = 48000
        self._tasks: list[asyncio.Task[None]] = []

    def attach(self, track: MediaStreamTrack) -> None:
        """Start recording ``track`` (call from the peer connection's ``track`` event)."""
        if track.kind == "audio":
            self._tasks.append(asyncio.create_task(self._run(track)))

    async def _run(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, AudioFrame)
                self.rate = frame.sample_rate
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                mono = samples.mean(axis=1)
                self.chunks.append(mono.astype(np.int16))
                self.levels.append((loop.time(), float(np.sqrt((mono**2).mean()))))
        except MediaStreamError:
            pass

    def audio(self) -> np.ndarray:
        """Everything heard so far, mono int16 at :attr:`rate`."""
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def voiced_seconds(self) -> float:
        """Seconds of received frames above :data:`VOICED_RMS`."""
        if not self.levels or not self.chunks:
            return 0.0
        frame_s = len(self.chunks[0]) / self.rate
        return sum(1 for _, rms in self.levels if rms > VOICED_RMS) * frame_s

    def first_voiced_after(self, t: float, until: float | None = None) -> float | None:
        """Arrival time of the first voiced frame after ``t`` (and before ``until``)."""
        for at, rms in self.levels:
            if at > t and (until is None or at < until) and rms > VOICED_RMS:
                return at
        return None

    def stop(self) -> None:
        """Stop recording."""
        for task in self._tasks:
            task.cancel()
