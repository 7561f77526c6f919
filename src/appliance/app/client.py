"""``appliance call``: a small SIP client that plays WAV files as the caller's turns.

It places a call (pjsua2, G.711), waits for the agent to finish speaking, plays each WAV as
one caller turn, waits for the agent's answer, hangs up and saves everything the agent sent
as a 16 kHz mono WAV. A REFER from the agent (a transfer to staff) is declined with 603 by
default, as a phone that cannot transfer would; with ``follow_refer`` the client calls the
``Refer-To`` target instead and keeps recording on that call. "Finished speaking" is decided
by pipecat's Silero VAD on the received audio (speech followed by ``--silence-ms`` of
non-speech). Per-turn response times (end of the caller's audio to the agent's first speech)
are printed as JSON on stdout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr

from appliance.audio.bridge import AudioBridge
from appliance.config.settings import SipSettings
from appliance.media.sip import CallHandle, SipUserAgent

_LOGGER = logging.getLogger(__name__)

CLOCK_RATE = 16000


def read_wav_16k(path: Path) -> bytes:
    """Read a mono 16-bit WAV and return 16 kHz 16-bit PCM (soxr-resampled if needed).

    Raises:
        ValueError: Not a mono 16-bit PCM WAV.
    """
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected mono 16-bit PCM WAV")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if rate != CLOCK_RATE:
        pcm = soxr.resample(pcm, rate, CLOCK_RATE).astype(np.int16)
    return pcm.tobytes()


@dataclass
class CallReport:
    """What the client observed (times in seconds from answer)."""

    status: str = "failed"
    answered: bool = False
    agent_speech: list[tuple[float, float]] = field(default_factory=list)
    turns: list[dict[str, float | None]] = field(default_factory=list)
    duration_s: float = 0.0
    #: What became of each REFER the agent sent: ``"declined"`` or ``"followed"``.
    refers: list[str] = field(default_factory=list)
    #: SIP status of the end of the call (BYE received: 200), if the far end ended it.
    end_status: int | None = None


class _Listener:
    """Records received audio and tracks agent speech with Silero VAD."""

    def __init__(self, bridge: AudioBridge, t0: float) -> None:
        from pipecat.audio.vad.silero import SileroVADAnalyzer
        from pipecat.audio.vad.vad_analyzer import VADParams, VADState

        self._quiet = (VADState.QUIET, VADState.STARTING)
        self._vad = SileroVADAnalyzer(sample_rate=CLOCK_RATE, params=VADParams(stop_secs=0.2))
        self._vad.set_sample_rate(CLOCK_RATE)
        self.bridge = bridge
        self.t0 = t0
        self.recording = bytearray()
        self.speaking = False
        self.speech: list[tuple[float, float]] = []
        self.last_voice = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self) -> None:
        while not self.bridge.closed:
            for pcm in self.bridge.drain_inbound():
                self.recording += pcm
                state = await self._vad.analyze_audio(pcm)
                voiced = state not in self._quiet
                t = self.now()
                if voiced and not self.speaking:
                    self.speaking = True
                    self.speech.append((t, t))
                if voiced:
                    self.last_voice = t
                    self.speech[-1] = (self.speech[-1][0], t)
                elif self.speaking and t - self.last_voice > 0.3:
                    self.speaking = False
            await asyncio.sleep(0.02)

    async def wait_agent_done(self, *, after: float, silence_s: float, timeout_s: float) -> bool:
        """Wait until the agent spoke after ``after`` and then stayed silent ``silence_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spoke = any(end > after for _, end in self.speech)
            if spoke and not self.speaking and self.now() - self.last_voice >= silence_s:
                return True
            await asyncio.sleep(0.05)
        return False

    def first_speech_after(self, t: float) -> float | None:
        starts = [s for s, _ in self.speech if s >= t]
        return min(starts) if starts else None


async def place_call(
    uri: str,
    turns: list[Path],
    out: Path | None,
    *,
    bind: str = "127.0.0.1:0",
    silence_ms: int = 1500,
    turn_timeout_s: float = 30.0,
    follow_refer: bool = False,
    max_duration_s: float | None = None,
    rtp_port: int = 42000,
) -> CallReport:
    """Place a call, play ``turns`` as the caller, and save the agent's audio to ``out``.

    Args:
        uri: The agent's SIP URI, e.g. ``sip:appliance@127.0.0.1:5060``.
        turns: Mono 16-bit WAVs (any rate; resampled to 16 kHz), one per caller turn.
        out: Where to save the agent's audio (16 kHz mono 16-bit WAV), or ``None``.
        bind: Local SIP ``HOST:PORT`` (port 0: any free port).
        silence_ms: Agent silence, in ms, that ends the agent's turn.
        turn_timeout_s: How long to wait for the agent to finish a turn.
        follow_refer: Follow a REFER from the agent (call its target) instead of declining it.
        max_duration_s: Hang up this many seconds after the answer at the latest (a caller who
            gives up mid-prompt), or ``None``.
        rtp_port: First local RTP port.

    Raises:
        ValueError: A turn is not a mono 16-bit PCM WAV.
        MediaError: The local SIP transport could not start.
    """
    loop = asyncio.get_running_loop()
    pcm_turns = [read_wav_16k(p) for p in turns]
    settings = SipSettings(bind=bind, rtp_port=rtp_port, max_calls=1)
    ua = SipUserAgent(settings, loop, None, clock_rate=CLOCK_RATE, follow_refer=follow_refer)
    ua.start()
    report = CallReport()
    handle = CallHandle(call_id="client", bridge=AudioBridge(CLOCK_RATE, max_inbound_ms=60000))
    t_start = time.monotonic()
    try:
        ua.make_call(uri, handle)
        ready = asyncio.create_task(handle.media_ready.wait())
        gone = asyncio.create_task(handle.disconnected.wait())
        await asyncio.wait({ready, gone}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if not handle.media_ready.is_set():
            report.status = f"not answered (SIP {handle.end_status})"
            return report
        report.answered = True
        listener = _Listener(handle.bridge, time.monotonic())
        listen = asyncio.create_task(listener.run())
        if max_duration_s is not None:
            loop.call_later(max_duration_s, handle.hangup)
        silence = silence_ms / 1000
        ok = await listener.wait_agent_done(after=0.0, silence_s=silence, timeout_s=turn_timeout_s)
        for pcm in pcm_turns:
            if handle.disconnected.is_set():
                ok = max_duration_s is not None  # the caller gave up, as asked
                break
            handle.bridge.put_outbound(pcm)
            seconds = len(pcm) / 2 / CLOCK_RATE
            await asyncio.sleep(seconds + 0.04)
            end = listener.now()
            ok = await listener.wait_agent_done(
                after=end, silence_s=silence, timeout_s=turn_timeout_s
            )
            first = listener.first_speech_after(end)
            report.turns.append(
                {
                    "caller_end_s": round(end, 3),
                    "agent_start_s": None if first is None else round(first, 3),
                    "response_s": None if first is None else round(first - end, 3),
                }
            )
        report.status = "completed" if ok else "agent silent"
        handle.hangup()
        await asyncio.wait({gone}, timeout=5)
        listen.cancel()
        report.refers = list(handle.refers)
        report.end_status = handle.end_status
        report.agent_speech = [(round(a, 3), round(b, 3)) for a, b in listener.speech]
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            with wave.open(str(out), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(CLOCK_RATE)
                w.writeframes(bytes(listener.recording))
        return report
    finally:
        report.duration_s = round(time.monotonic() - t_start, 3)
        ua.stop()


def report_json(report: CallReport) -> str:
    """Serialise a report."""
    return json.dumps(report.__dict__, indent=2)
