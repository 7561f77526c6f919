"""Wire-level measurements for the benchmark: calls placed by sipp, captured with tshark.

Voice-to-voice latency per turn = first voiced agent RTP packet after the caller's turn minus
the caller's last voiced RTP packet of that turn, both by capture arrival time on loopback.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.capture import LoopbackCapture
from tests.e2e.sipp import Pause, Play, render_uac_scenario, run_sipp, start_sipp
from tests.e2e.speech import sentence_pcap
from tests.kit.pcap import packet_levels, read_rtp_streams

VOICED_DBFS = -40.0


@dataclass
class TurnTiming:
    """One caller turn measured on the wire (seconds)."""

    caller_end: float
    agent_start: float | None

    @property
    def latency(self) -> float | None:
        """Voice-to-voice latency, or ``None`` if the agent did not answer."""
        return None if self.agent_start is None else self.agent_start - self.caller_end


def _streams(cap: Path, rtp_base: int):  # noqa: ANN202
    streams = read_rtp_streams(cap)
    agent = max(
        (s for s in streams if rtp_base <= s.src[1] < rtp_base + 1000 and s.audio_packets),
        key=lambda s: len(s.audio_packets),
    )
    caller = max(
        (s for s in streams if rtp_base <= s.dst[1] < rtp_base + 1000 and s.audio_packets),
        key=lambda s: len(s.audio_packets),
    )
    return agent, caller


def voiced_times(stream) -> list[float]:  # noqa: ANN001
    """Arrival times of voiced packets."""
    return [t for t, level in packet_levels(stream) if level >= VOICED_DBFS]


def turns_from_capture(
    cap: Path, rtp_base: int, play_windows: list[tuple[float, float]]
) -> list[TurnTiming]:
    """Per-turn timings: the caller's voiced packets are grouped by play window (offsets)."""
    agent, caller = _streams(cap, rtp_base)
    caller_v = voiced_times(caller)
    agent_v = voiced_times(agent)
    if not caller_v:
        return []
    t0 = caller.audio_packets[0][0] - play_windows[0][0]
    out = []
    for i, (a, b) in enumerate(play_windows):
        lo, hi = t0 + a - 0.5, t0 + b + 0.5
        mine = [t for t in caller_v if lo <= t <= hi]
        if not mine:
            continue
        end = max(mine)
        nxt = t0 + play_windows[i + 1][0] if i + 1 < len(play_windows) else end + 15
        reply = [t for t in agent_v if end < t < nxt]
        out.append(TurnTiming(caller_end=end, agent_start=min(reply) if reply else None))
    return out


def conversation_call(
    uri: str,
    rtp_base: int,
    work: Path,
    sentences: list[int],
    reply_wait_ms: int = 9000,
    opening_ms: int = 7000,
) -> list[TurnTiming]:
    """One call: wait for the opening, then each OSR sentence as a turn, waiting for replies."""
    steps: list[object] = [Pause(opening_ms)]
    windows = []
    t = opening_ms / 1000
    for i in sentences:
        pcap, _, seconds = sentence_pcap(i, work / f"s{i}.pcap")
        steps += [Play(str(pcap)), Pause(reply_wait_ms)]
        windows.append((t, t + seconds))
        t += seconds + reply_wait_ms / 1000
    cap = work / "conversation.pcap"
    with LoopbackCapture(cap, bpf="udp"):
        result = run_sipp(render_uac_scenario(steps=steps), uri, timeout_s=t + 60)
    if result.returncode != 0:
        raise RuntimeError(f"sipp failed: {result.messages[-1500:]}")
    return turns_from_capture(cap, rtp_base, windows)


def barge_in_call(uri: str, rtp_base: int, work: Path, at_ms: int = 8000) -> float | None:
    """Caller talks over the (long) greeting; returns agent audio after the caller began (s)."""
    pcap, _, seconds = sentence_pcap(2, work / "barge.pcap")
    cap = work / "barge.pcap.cap"
    with LoopbackCapture(cap, bpf="udp"):
        result = run_sipp(
            render_uac_scenario(steps=[Pause(at_ms), Play(str(pcap)), Pause(6000)]),
            uri,
            timeout_s=60,
        )
    if result.returncode != 0:
        return None
    agent, caller = _streams(cap, rtp_base)
    caller_v = voiced_times(caller)
    agent_v = voiced_times(agent)
    start, end = caller_v[0], caller_v[-1]
    if not [t for t in agent_v if start - 0.5 <= t < start]:
        return None  # the agent was not talking: not a barge-in
    over = [t for t in agent_v if start <= t <= end]
    return (max(over) - start) if over else 0.0


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def concurrent_cpu(
    uri: str, pid: int, work: Path, n: int, seconds: float = 30.0
) -> dict[str, float]:
    """Run ``n`` concurrent conversational calls; CPU use of the agent per call (% of 1 core)."""
    procs = []
    for k in range(n):
        steps: list[object] = [Pause(6000)]
        for i in (k, k + 3):
            pcap, _, _ = sentence_pcap(i % 10, work / f"c{n}_{k}_{i}.pcap")
            steps += [Play(str(pcap)), Pause(7000)]
        procs.append(start_sipp(render_uac_scenario(steps=steps), uri, timeout_s=90))
        time.sleep(0.3)
    time.sleep(1.0)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    results = [p.wait(90) for p in procs]
    ok = sum(r.returncode == 0 for r in results)
    total = 100.0 * (c1 - c0) / (t1 - t0)
    return {
        "calls": n,
        "completed": ok,
        "cpu_pct_total": round(total, 1),
        "cpu_pct_per_call": round(total / n, 1),
    }


class Echo:
    """Reference responder: a pjsua2 UA (our media layer, no models) that echoes the caller.

    Measured with the same sipp/tshark method it gives the floor of the wire measurement
    (packetisation, jitter buffer, conference bridge), against which the agent is compared.
    """

    def __init__(self, port: int, rtp_port: int) -> None:
        import asyncio

        from appliance.config.settings import SipSettings
        from appliance.media.sip import SipUserAgent

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        def on_call(handle) -> None:  # noqa: ANN001
            async def loop_back() -> None:
                while not handle.disconnected.is_set():
                    for pcm in handle.bridge.drain_inbound():
                        handle.bridge.put_outbound(pcm)
                    await asyncio.sleep(0.01)

            asyncio.ensure_future(loop_back())  # noqa: RUF006

        self.ua = SipUserAgent(
            SipSettings(bind=f"127.0.0.1:{port}", rtp_port=rtp_port, max_calls=1),
            self._loop,
            on_call,
        )
        self.ua.start()

    def close(self) -> None:
        """Stop the UA and its loop."""
        self.ua.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
