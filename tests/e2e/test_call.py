"""End-to-end calls over real SIP/RTP on loopback, placed by sipp (a peer we did not write).

The appliance runs as a subprocess (`appliance serve`); sipp plays real recorded speech from a
pcap; tshark captures the loopback traffic. Assertions are made on the wire: the decoded RTP
the agent sent is transcribed with the same Whisper model and compared with the text the agent
reported in its test-only event stream.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soxr

from tests.e2e.capture import LoopbackCapture
from tests.e2e.server import ApplianceProcess
from tests.e2e.sipp import (
    InfoDtmf,
    Pause,
    Play,
    ReInvite,
    Rfc2833,
    render_uac_scenario,
    run_sipp,
)
from tests.e2e.speech import sentence_pcap
from tests.kit.pcap import read_rtp_streams, stream_pcm, voiced_intervals
from tests.kit.wer import normalise_for_wer, word_error_rate

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("sipp") is None and shutil.which("sip-tester") is None,
        reason="sipp (Debian sip-tester) is not installed",
    ),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]

DISCLOSURE = (
    "Hello, you've reached Maple Street Family Clinic. I'm an automated assistant, not a person."
)


def agent_stream(streams, appliance_rtp_base: int):  # noqa: ANN001, ANN201
    """The audio stream sent by the appliance (source port in its RTP range)."""
    cands = [
        s
        for s in streams
        if appliance_rtp_base <= s.src[1] < appliance_rtp_base + 1000 and s.audio_packets
    ]
    assert cands, f"no agent RTP stream among {[(s.src, s.dst) for s in streams]}"
    return max(cands, key=lambda s: len(s.audio_packets))


def caller_stream(streams, appliance_rtp_base: int):  # noqa: ANN001, ANN201
    cands = [
        s
        for s in streams
        if appliance_rtp_base <= s.dst[1] < appliance_rtp_base + 1000 and s.audio_packets
    ]
    assert cands, "no caller RTP stream"
    return max(cands, key=lambda s: len(s.audio_packets))


def transcribe_interval(models, stream, start: float, end: float) -> str:  # noqa: ANN001
    """Transcribe the agent audio between two arrival times (8 kHz RTP -> 16 kHz)."""
    pcm = np.frombuffer(stream_pcm(stream), dtype=np.int16)
    t0 = stream.audio_packets[0][0]
    a, b = int((start - t0 - 0.1) * 8000), int((end - t0 + 0.2) * 8000)
    seg = soxr.resample(pcm[max(0, a) : b], 8000, 16000).astype(np.int16)
    return models.stt.transcribe(seg.tobytes()).text


def test_call_answered_disclosure_first_reply_intelligible_bye_clean(
    appliance: ApplianceProcess,
    models,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    pcap, said, seconds = sentence_pcap(0, tmp_path / "caller.pcap")
    steps = [Pause(8500), Play(str(pcap)), Pause(10000)]
    cap = tmp_path / "call.pcap"
    before = len(appliance.events())
    with LoopbackCapture(cap, bpf="udp"):
        result = run_sipp(render_uac_scenario(steps=steps), appliance.uri, timeout_s=60)
    assert result.returncode == 0, result.messages[-2000:]
    assert 200 in result.received_status_codes()

    events = appliance.events()[before:]
    kinds = [e["kind"] for e in events]
    assert "CallAnswered" in kinds and "DisclosurePlayed" in kinds
    ended = appliance.wait_event("CallEnded")[-1]
    assert ended["disposition"] == "caller_hangup"

    streams = read_rtp_streams(cap)
    agent = agent_stream(streams, 43000)
    caller = caller_stream(streams, 43000)
    speech = voiced_intervals(agent, threshold_dbfs=-40, min_gap_ms=800)
    assert speech, "the agent sent only silence"
    first_start = agent.audio_packets[0][0]
    # 1. The first thing the caller hears is the disclosure, starting promptly.
    d_start, d_end = speech[0]
    assert d_start - first_start < 1.5
    heard = transcribe_interval(models, agent, d_start, d_end)
    # The greeting may follow without a long pause: compare the opening words.
    opening = " ".join(normalise_for_wer(heard).split()[: len(DISCLOSURE.split())])
    assert word_error_rate([DISCLOSURE], [opening]) <= 0.2, heard
    answered_at = next(e for e in events if e["kind"] == "CallAnswered")["t"]
    disclosed_at = next(e for e in events if e["kind"] == "DisclosurePlayed")["t"]
    assert disclosed_at - answered_at < 10.0

    # 2. The reply to the caller's sentence is non-silent and says what the agent logged.
    caller_speech = voiced_intervals(caller, threshold_dbfs=-40)
    caller_end = caller_speech[-1][1]
    replies = [iv for iv in speech if iv[0] > caller_end]
    assert replies, "no agent audio after the caller spoke"
    spoke = [e for e in events if e["kind"] == "AgentSpoke" and e["source"] != "opening"]
    assert spoke, "agent logged no reply"
    wire = transcribe_interval(models, agent, replies[0][0], replies[-1][1])
    logged = spoke[-1]["text"]
    assert word_error_rate([logged], [wire]) <= 0.35, (logged, wire)
    turn = [e for e in events if e["kind"] == "TurnEnded"]
    assert turn and word_error_rate([said], [turn[-1]["user_text"]]) <= 0.3


def test_rfc4733_and_sip_info_dtmf_reach_the_pipeline(
    appliance: ApplianceProcess, tmp_path: Path
) -> None:
    before = len(appliance.events())
    steps = [
        Pause(1500),
        Rfc2833("1"),
        Pause(600),
        InfoDtmf("5"),
        Pause(600),
        Rfc2833("9"),
        Pause(1000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), appliance.uri, timeout_s=40)
    assert result.returncode == 0, result.messages[-2000:]
    appliance.wait_event("CallEnded", count=2)
    got = [
        (e["digit"], e["method"], e["in_slot"], e["count"])
        for e in appliance.events()[before:]
        if e["kind"] == "DtmfReceived"
    ]
    # No digit slot is open at the greeting: the keys are recorded as a count only (PCI).
    assert got == [("", "rfc4733", False, 1), ("", "sip-info", False, 2), ("", "rfc4733", False, 3)]
    # Digits are content: they go to the (encrypted) event stream only, never to the log. No log
    # line may carry a keyed digit next to a DTMF word ("DTMF digit 5", "button: 9", ...).
    log = appliance.log()
    leaks = re.findall(r"(?i)(?:dtmf|digit|button|key(?:pad|ed)?)\W{1,24}([159])\b", log)
    assert not leaks, [line for line in log.splitlines() if re.search(r"(?i)dtmf|digit", line)]


def test_reinvite_hold_and_resume_keeps_the_call_working(
    appliance: ApplianceProcess, tmp_path: Path
) -> None:
    before = len(appliance.events())
    pcap, said, _ = sentence_pcap(3, tmp_path / "caller.pcap")
    steps = [
        Pause(7500),
        ReInvite("sendonly"),
        Pause(800),
        ReInvite("sendrecv"),
        Pause(800),
        Play(str(pcap)),
        Pause(9000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), appliance.uri, timeout_s=60)
    assert result.returncode == 0, result.messages[-3000:]
    assert result.received_status_codes().count(200) >= 4  # INVITE, 2 re-INVITEs, BYE
    appliance.wait_event(
        "CallEnded", count=1 + sum(e["kind"] == "CallEnded" for e in appliance.events()[:before])
    )
    events = appliance.events()[before:]
    turns = [e["user_text"] for e in events if e["kind"] == "TurnEnded"]
    assert turns and word_error_rate([said], [turns[-1]]) <= 0.3, turns
    assert any(e["kind"] == "AgentSpoke" and e["source"] != "opening" for e in events)


def test_logs_carry_no_caller_content(appliance: ApplianceProcess) -> None:
    log = appliance.log().lower()
    for event in appliance.events():
        for key in ("user_text", "text"):
            value = str(event.get(key, "")).lower()
            if event["kind"] in ("TurnEnded", "AgentSpoke") and len(value.split()) >= 3:
                assert value not in log, f"{event['kind']} content found in the log"


def test_appliance_call_client_plays_turns_and_saves_agent_audio(
    appliance: ApplianceProcess, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys
    import wave

    from tests.e2e.speech import osr_sentences

    parts, _ = osr_sentences()
    caller = tmp_path / "caller.wav"
    with wave.open(str(caller), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(parts[4].tobytes())
    out = tmp_path / "agent.wav"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "call",
            f"sip:appliance@{appliance.uri}",
            "--wav",
            str(caller),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(run.stdout[run.stdout.index("{") :])
    assert report["status"] == "completed" and report["answered"]
    assert len(report["turns"]) == 1 and report["turns"][0]["response_s"] is not None
    assert 0.2 < report["turns"][0]["response_s"] < 6.0
    with wave.open(str(out), "rb") as w:
        assert w.getframerate() == 16000 and w.getnframes() / 16000 > 8.0
    assert len(report["agent_speech"]) >= 2  # the opening, then the reply
