"""Barge-in on the wire: the caller talks over a long agent utterance and the agent stops.

The reaction time is measured from the capture: first voiced caller packet after the agent
started its long utterance, to the last voiced agent packet of that utterance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.capture import LoopbackCapture
from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import Pause, Play, render_uac_scenario, run_sipp
from tests.e2e.speech import sentence_pcap
from tests.e2e.test_call import agent_stream, caller_stream
from tests.kit.pcap import packet_levels, read_rtp_streams, voiced_intervals

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]

LONG_GREETING = (
    "I can tell you our opening hours, our address, and where to park. "
    "I can also take a message for our staff, or put you through to a person. "
    "Please tell me in a few words what you need today, and I will do my best to help."
)

#: Acceptance bound for barge-in reaction on the wire (VAD start 0.2 s + pipeline + 60 ms lead).
BARGE_IN_BOUND_S = 1.0


def test_caller_interrupts_long_greeting(tmp_path: Path, store: Path) -> None:
    rtp = 44000
    proc = ApplianceProcess(
        tmp_path,
        sip_port=free_udp_port(),
        rtp_port=rtp,
        extra_toml=f'[agent]\ngreeting = "{LONG_GREETING}"\n',
    )
    proc.start()
    try:
        pcap, _, _ = sentence_pcap(2, tmp_path / "caller.pcap")
        cap = tmp_path / "call.pcap"
        steps = [Pause(8000), Play(str(pcap)), Pause(8000)]
        with LoopbackCapture(cap, bpf="udp"):
            result = run_sipp(render_uac_scenario(steps=steps), proc.uri, timeout_s=60)
        assert result.returncode == 0, result.messages[-2000:]
        proc.wait_event("CallEnded")
        events = proc.events()
    finally:
        assert proc.stop() == 0

    streams = read_rtp_streams(cap)
    agent = agent_stream(streams, rtp)
    caller = voiced_intervals(caller_stream(streams, rtp), threshold_dbfs=-40)
    barge_at, caller_end = caller[0][0], caller[-1][1]
    voiced = [t for t, level in packet_levels(agent) if level >= -40]
    # Mid-utterance when the caller started: at least 0.4 s of speech in the second before
    # (Kokoro pauses up to half a second at a comma, so a shorter window can fall in one).
    before = [t for t in voiced if barge_at - 1.0 <= t < barge_at]
    assert len(before) >= 20, "the agent was not talking when the caller started"
    over = [t for t in voiced if barge_at <= t <= caller_end]
    reaction = (max(over) - barge_at) if over else 0.0
    (tmp_path.parent / "barge_in_reaction.json").write_text(json.dumps({"reaction_s": reaction}))
    assert reaction < BARGE_IN_BOUND_S, f"agent kept talking {reaction:.2f}s over the caller"

    # The context keeps only what was played: the greeting is reported cut short.
    cut = [e for e in events if e["kind"] == "AgentSpoke" and e["interrupted"]]
    assert cut, "no interrupted utterance was reported"
    assert "best to help" not in cut[0]["text"]
    assert any(e["kind"] == "BargeIn" for e in events)
