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
import re
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
    turns: list[dict[str, float | int | str | None]] = field(default_factory=list)
    duration_s: float = 0.0
    #: What became of each REFER the agent sent: ``"declined"`` or ``"followed"``.
    refers: list[str] = field(default_factory=list)
    #: SIP status of the end of the call (BYE received: 200), if the far end ended it.
    end_status: int | None = None
    #: Wall-clock time of the answer (turn times are seconds from it).
    t0_epoch: float = 0.0
    #: The agent ended the call (a goodbye, or a transfer it completed).
    agent_hung_up: bool = False


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


# --------------------------------------------------------------------------- scripted calls
#
# A call script is JSON: ``{"steps": [...]}`` (or the bare list), each step one of
#
# * ``{"say": "turn.wav"}``: wait until the agent's prompt has ended, then play the WAV;
# * ``{"dtmf": "03041982#"}``: wait likewise, then key the digits (RFC 4733);
# * ``{"wait": 8.0}``: stay silent this many seconds (a caller who says nothing);
# * ``{"barge": "turn.wav", "after_s": 1.0}``: talk over the agent on purpose: play the WAV
#   ``after_s`` seconds after the agent's next prompt starts, without waiting for its end;
# * ``{"hangup": true}``: hang up now.
#
# Relative WAV paths are resolved against the script's folder. The script ends early when the
# agent hangs up, or, with ``follow_refer``, a couple of seconds after a transfer was followed.

STEP_KINDS = ("say", "dtmf", "wait", "barge", "hangup")


@dataclass(frozen=True)
class Step:
    """One step of a call script (see the module's script format)."""

    kind: str
    wav: Path | None = None
    digits: str = ""
    seconds: float = 0.0


def parse_script(data: object, base: Path | None = None) -> list[Step]:
    """Parse a call script (the decoded JSON) into steps.

    Args:
        data: ``{"steps": [...]}`` or the list of steps itself.
        base: Folder that relative WAV paths are resolved against (default: as given).

    Raises:
        ValueError: The script is malformed (unknown step, bad digits, negative wait...).
    """
    raw = data.get("steps") if isinstance(data, dict) else data
    if not isinstance(raw, list) or not raw:
        raise ValueError("a script needs a non-empty list of steps")
    steps: list[Step] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"step {i}: expected an object, got {item!r}")
        kinds = [k for k in STEP_KINDS if k in item]
        if len(kinds) != 1:
            raise ValueError(f"step {i}: needs exactly one of {', '.join(STEP_KINDS)}")
        kind = kinds[0]
        value = item[kind]
        if kind in ("say", "barge"):
            if not isinstance(value, str) or not value:
                raise ValueError(f"step {i}: {kind} needs a WAV path")
            wav = Path(value)
            if base is not None and not wav.is_absolute():
                wav = base / wav
            after = item.get("after_s", 0.0) if kind == "barge" else 0.0
            if not isinstance(after, int | float) or after < 0:
                raise ValueError(f"step {i}: after_s must be a number >= 0")
            steps.append(Step(kind, wav=wav, seconds=float(after)))
        elif kind == "dtmf":
            if not isinstance(value, str) or not re.fullmatch(r"[0-9*#A-Da-d]+", value):
                raise ValueError(f"step {i}: dtmf needs a string of 0-9 * # A-D")
            steps.append(Step(kind, digits=value.upper()))
        elif kind == "wait":
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"step {i}: wait needs seconds >= 0")
            steps.append(Step(kind, seconds=float(value)))
        else:
            steps.append(Step(kind))
    return steps


def load_script(path: Path) -> list[Step]:
    """Read and parse a JSON call script; WAV paths are relative to its folder."""
    return parse_script(json.loads(path.read_text()), path.parent)


def _send_dtmf(ua: SipUserAgent, handle: CallHandle, digits: str) -> None:
    def send() -> None:
        call = ua._calls.get(handle._pj_id)
        if call is not None and not call.ended:
            call.dialDtmf(digits)

    ua.submit(send)


async def place_script_call(
    uri: str,
    steps: list[Step],
    out: Path | None,
    *,
    bind: str = "127.0.0.1:0",
    silence_ms: int = 1500,
    turn_timeout_s: float = 30.0,
    follow_refer: bool = False,
    max_duration_s: float | None = None,
    rtp_port: int = 42000,
    after_refer_s: float = 3.0,
) -> CallReport:
    """Place a call and act out ``steps`` as a person would (see the script format above).

    Each turn in the report has ``step`` (index), ``kind``, ``start_s`` / ``caller_end_s``
    (when the caller's audio or keys went out), ``agent_start_s`` and ``response_s`` (the
    agent's first speech after it, by Silero VAD), all from the answer; ``t0_epoch`` in the
    report's ``turns`` metadata is the answer's wall-clock time, for lining the turns up with
    a packet capture or the agent's events.

    Raises:
        ValueError: A WAV is not a mono 16-bit PCM WAV.
        MediaError: The local SIP transport could not start.
    """
    loop = asyncio.get_running_loop()
    audio = {s.wav: read_wav_16k(s.wav) for s in steps if s.wav is not None}
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
        report.t0_epoch = time.time()
        listener = _Listener(handle.bridge, time.monotonic())
        listen = asyncio.create_task(listener.run())
        if max_duration_s is not None:
            loop.call_later(max_duration_s, handle.hangup)
        silence = silence_ms / 1000
        last_end = 0.0
        ok = True

        def over() -> bool:
            return handle.disconnected.is_set() or "followed" in handle.refers

        async def agent_done(after: float) -> bool:
            deadline = time.monotonic() + turn_timeout_s
            while time.monotonic() < deadline and not over():
                if await listener.wait_agent_done(after=after, silence_s=silence, timeout_s=0.2):
                    return True
            return over()

        async def play(pcm: bytes) -> tuple[float, float]:
            start = listener.now()
            handle.bridge.put_outbound(pcm)
            await asyncio.sleep(len(pcm) / 2 / CLOCK_RATE + 0.04)
            return start, listener.now()

        ok = await agent_done(0.0)  # the greeting
        for i, step in enumerate(steps):
            if over():
                break
            if step.kind == "hangup":
                break
            if step.kind == "wait":
                start = listener.now()
                await asyncio.sleep(step.seconds)
                if listener.speaking or any(e > start for _, e in listener.speech):
                    await agent_done(start)
                continue
            if step.kind == "barge":
                deadline = time.monotonic() + turn_timeout_s
                while not over() and time.monotonic() < deadline:
                    if listener.speaking and listener.speech[-1][0] > last_end:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(step.seconds)
                if over():
                    break
                assert step.wav is not None
                start, end = await play(audio[step.wav])
            elif step.kind == "say":
                assert step.wav is not None
                start, end = await play(audio[step.wav])
            else:  # dtmf
                start = listener.now()
                _send_dtmf(ua, handle, step.digits)
                await asyncio.sleep(0.25 * len(step.digits) + 0.1)
                end = listener.now()
            last_end = end
            ok = await agent_done(end)
            first = listener.first_speech_after(end)
            report.turns.append(
                {
                    "step": i,
                    "kind": step.kind,
                    "start_s": round(start, 3),
                    "caller_end_s": round(end, 3),
                    "agent_start_s": None if first is None else round(first, 3),
                    "response_s": None if first is None else round(first - end, 3),
                }
            )
        if "followed" in handle.refers and not handle.disconnected.is_set():
            await asyncio.sleep(after_refer_s)  # on hold with the staff member, then done
        agent_hung_up = handle.disconnected.is_set()
        report.status = "completed" if ok or agent_hung_up else "agent silent"
        handle.hangup()
        await asyncio.wait({gone}, timeout=5)
        listen.cancel()
        report.refers = list(handle.refers)
        report.end_status = handle.end_status
        report.agent_hung_up = agent_hung_up
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


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.app.client URI --script FILE``: place one scripted call."""
    import argparse

    from appliance.app.logs import setup_logging

    ap = argparse.ArgumentParser(description="place a scripted test call (see client.py)")
    ap.add_argument("uri", help="e.g. sip:appliance@127.0.0.1:5060")
    ap.add_argument("--script", type=Path, required=True, help="JSON call script")
    ap.add_argument("--out", type=Path, default=None, help="save the agent's audio here")
    ap.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    ap.add_argument("--bind", default="127.0.0.1:0", help="local SIP HOST:PORT")
    ap.add_argument("--silence-ms", type=int, default=1500, help="agent silence ending a prompt")
    ap.add_argument("--turn-timeout-s", type=float, default=30.0)
    ap.add_argument("--refer", choices=("decline", "follow"), default="decline")
    ap.add_argument("--max-duration-s", type=float, default=None)
    ap.add_argument("--rtp-port", type=int, default=42000, help="first local RTP port")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args(argv)
    setup_logging(args.log_level)
    report = asyncio.run(
        place_script_call(
            args.uri,
            load_script(args.script),
            args.out,
            bind=args.bind,
            silence_ms=args.silence_ms,
            turn_timeout_s=args.turn_timeout_s,
            follow_refer=args.refer == "follow",
            max_duration_s=args.max_duration_s,
            rtp_port=args.rtp_port,
        )
    )
    text = report_json(report)
    if args.report is not None:
        args.report.write_text(text)
    print(text)
    return 0 if report.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
