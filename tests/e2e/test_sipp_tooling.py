"""End-to-end checks of the wire-level test tooling against real peers on loopback.

These tests exercise only the tooling (``sipp.py``, ``capture.py`` and
``tests.kit.pcap``), not the appliance: the far end is the pjsua2 sketch UA from
``shared/telephony/ua.py`` or a sipp UAS. They need sipp, tshark, raw sockets (sipp plays pcap
audio from a raw socket) and, for the pjsua2 peer, the ``pjsua2`` module.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soxr

from tests.e2e.capture import LoopbackCapture, capture_binary
from tests.e2e.sipp import (
    ExpectRefer,
    InfoDtmf,
    Pause,
    Play,
    Rfc2833,
    SippResult,
    WaitBye,
    _split_messages,
    free_udp_port,
    parse_refer,
    render_uac_scenario,
    run_sipp,
    sipp_binary,
    start_sipp,
)
from tests.kit.pcap import (
    pcm_to_rtp_pcap,
    read_rtp_streams,
    read_wav_mono16,
    stream_pcm,
    telephone_events,
    voiced_intervals,
)

pytestmark = pytest.mark.e2e

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
UA_SCRIPT = SHARED / "telephony" / "ua.py"
OSR_WAV = SHARED / "data" / "speech" / "osr" / "OSR_us_000_0034_8k.wav"
SPEECH_SSRC = 0x5EED0042

UAS_503 = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="reject with 503">
  <recv request="INVITE"/>
  <send>
    <![CDATA[

      SIP/2.0 503 Service Unavailable
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Retry-After: 30
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""

UAS_REFER_HEAD = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answer, then blind-transfer with REFER">
  <recv request="INVITE" rrs="true">
    <action>
      <ereg regexp="tag=([^;>[:space:]]+)" search_in="hdr" header="From:" check_it="true"
            assign_to="from_tag,caller_tag"/>
      <log message="caller [$from_tag]"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:appliance@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=uas 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[local_ip_type] [local_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000

    ]]>
  </send>
  <recv request="ACK"/>
  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[

      REFER [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:appliance@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: sipp <sip:sipp@127.0.0.1>;tag=[$caller_tag]
      [last_Call-ID:]
      CSeq: 1 REFER
      Contact: <sip:appliance@[local_ip]:[local_port]>
      Max-Forwards: 70
      Refer-To: <sip:frontdesk@pbx.example;user=phone>
      Referred-By: <sip:appliance@[local_ip]:[local_port]>
      {handoff_line}
      Content-Length: 0

    ]]>
  </send>
"""
UAS_REFER_NOTIFY = """  <recv response="202"/>
  <recv request="NOTIFY" crlf="true">
    <action>
      <ereg regexp="SIP/2.0 100 Trying" search_in="body" check_it="true" assign_to="trying"/>
      <ereg regexp="active;expires=60" search_in="hdr" header="Subscription-State:"
            check_it="true" assign_to="active"/>
      <log message="NOTIFY [$trying] [$active]"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""
UAS_REFER_FINAL = """  <recv request="NOTIFY">
    <action>
      <ereg regexp="{sipfrag}" search_in="body" check_it="true" assign_to="final"/>
      <ereg regexp="terminated;reason=noresource" search_in="hdr"
            header="Subscription-State:" check_it="true" assign_to="terminated"/>
      <log message="NOTIFY [$final] [$terminated]"/>
    </action>
  </recv>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""
UAS_REFER_DECLINED = """  <recv response="603"/>
"""
UAS_BYE = """  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:appliance@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: sipp <sip:sipp@127.0.0.1>;tag=[$caller_tag]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def _uas_refer(
    *,
    accept: bool,
    handoff_line: str = "X-Handoff-ID: hof-7f3a9c",
    final_sipfrag: str | None = "SIP/2.0 200 OK",
) -> str:
    """A sipp UAS standing in for the appliance: answer, REFER, follow the transfer, hang up.

    ``final_sipfrag`` is the body the last NOTIFY must carry; None expects only 100 Trying.
    """
    middle = UAS_REFER_DECLINED
    if accept:
        middle = UAS_REFER_NOTIFY
        if final_sipfrag is not None:
            middle += UAS_REFER_FINAL.replace("{sipfrag}", final_sipfrag)
    return UAS_REFER_HEAD.replace("{handoff_line}", handoff_line) + middle + UAS_BYE


def _raw_sockets_allowed() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    except PermissionError:
        return False
    return True


@pytest.fixture
def tools() -> None:
    """Skip unless sipp, tshark and raw sockets are available."""
    if sipp_binary() is None:
        pytest.skip("sipp not installed (Debian package sip-tester)")
    if capture_binary() is None:
        pytest.skip("tshark not installed")
    if not _raw_sockets_allowed():
        pytest.skip("sipp's play_pcap_audio needs raw sockets (root or CAP_NET_RAW)")


@pytest.fixture
def speech_pcm(tools: None) -> np.ndarray:
    """The first 6 s of the OSR telephone speech recording, 8 kHz int16."""
    if not UA_SCRIPT.is_file() or importlib.util.find_spec("pjsua2") is None:
        pytest.skip(f"needs {UA_SCRIPT} and the pjsua2 module")
    if not OSR_WAV.is_file():
        pytest.skip(f"shared speech data not found at {OSR_WAV}")
    pcm, rate = read_wav_mono16(OSR_WAV)
    assert rate == 8000
    return np.frombuffer(pcm, dtype="<i2")[: 6 * 8000]


class SketchUa:
    """Runs shared/telephony/ua.py (auto-answer, records calls, logs DTMF) on free ports."""

    def __init__(self, workdir: Path, run_seconds: float):
        self.workdir = workdir
        self.sip_port = free_udp_port()
        self.rtp_port = free_udp_port(count=4, even=True)
        self.events_path = workdir / "events.jsonl"
        self.recdir = workdir / "rec"
        self.run_seconds = run_seconds
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SketchUa:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, str(UA_SCRIPT),
            "--port", str(self.sip_port), "--rtp-port", str(self.rtp_port),
            "--recdir", str(self.recdir), "--events", str(self.events_path),
            "--run-seconds", str(self.run_seconds),
        ]  # fmt: skip
        with open(self.workdir / "ua.log", "wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for(lambda e: e["ev"] == "ready", timeout_s=15)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def target(self) -> str:
        """The UA's SIP address as sipp's target."""
        return f"127.0.0.1:{self.sip_port}"

    def events(self) -> list[dict[str, object]]:
        """The events the UA has logged so far."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for(self, predicate: object, timeout_s: float) -> dict[str, object]:
        """Wait until an event matches ``predicate``; fail the test on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):  # type: ignore[operator]
                    return event
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.workdir / "ua.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"ua.py event not seen in {timeout_s} s; events={self.events()} log={log}")


def _envelope_match(recorded: np.ndarray, sent: np.ndarray, max_lag: int = 100) -> float:
    """Best correlation of the 20 ms level envelopes of two 8 kHz signals over +-2 s of lag.

    Levels, not waveforms: the UA's jitter buffer and conference bridge shift the audio by
    fractions of a frame during a call, which ruins a single waveform alignment.
    """

    def envelope(x: np.ndarray) -> np.ndarray:
        frames = x[: x.size // 160 * 160].astype(float).reshape(-1, 160)
        return 10 * np.log10((frames**2).mean(axis=1) + 1.0)

    rec, ref = envelope(recorded), envelope(sent)
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        a, b = rec[max(lag, 0) :], ref[max(-lag, 0) :]
        n = min(a.size, b.size)
        if n > ref.size // 2:
            best = max(best, float(np.corrcoef(a[:n], b[:n])[0, 1]))
    return best


def test_speech_and_dtmf_reach_pjsua_and_the_wire(tmp_path: Path, speech_pcm: np.ndarray) -> None:
    """Speech, an RFC 2833 digit and an INFO digit reach ua.py and show up in the capture."""
    speech_pcap = tmp_path / "speech.pcap"
    duration = pcm_to_rtp_pcap(
        speech_pcm.tobytes(), 8000, speech_pcap, leading_silence_ms=200, ssrc=SPEECH_SSRC
    )
    capture_path = tmp_path / "call.pcap"
    with SketchUa(tmp_path / "ua", run_seconds=60) as ua:
        scenario = render_uac_scenario(
            steps=[Play(speech_pcap), Rfc2833("1"), InfoDtmf("5"), Pause(300)], codecs=("PCMU",)
        )
        bpf = f"udp and (port {ua.sip_port} or portrange {ua.rtp_port}-{ua.rtp_port + 1})"
        with LoopbackCapture(capture_path, bpf=bpf):
            result = run_sipp(scenario, ua.target, workdir=tmp_path / "sipp", timeout_s=30)
        assert result.returncode == 0, result.logs.get("errors", result.stderr)
        assert result.received_status_codes().count(200) == 3  # INVITE, INFO, BYE
        ua.wait_for(lambda e: e.get("state") == "DISCONNECTED", timeout_s=10)
        events = ua.events()

    # ua.py saw both digits: RFC 2833 as method 0, SIP INFO as method 1.
    assert {e["digit"] for e in events if e["ev"] == "dtmf_digit"} == {"1", "5"}
    info = [e for e in events if e["ev"] == "dtmf_event" and e["method"] == 1]
    assert [e["digit"] for e in info] == ["5"]
    assert any(e["ev"] == "dtmf_event" and e["method"] == 0 and e["digit"] == "1" for e in events)

    # The recording holds the speech that was sent.
    (recording,) = (tmp_path / "ua" / "rec").glob("*.wav")
    pcm, rate = read_wav_mono16(recording)
    recorded = soxr.resample(np.frombuffer(pcm, dtype="<i2").astype(np.float32), rate, 8000)
    assert _envelope_match(recorded, speech_pcm) > 0.9

    # On the wire: the caller's audio stream to the UA, intact, and the digit.
    streams = read_rtp_streams(capture_path)
    assert streams.truncated == 0
    to_ua = [s for s in streams if s.dst == ("127.0.0.1", ua.rtp_port)]
    (speech,) = [s for s in to_ua if s.ssrc == SPEECH_SSRC]
    assert speech.payload_types == {0}
    assert len(speech.packets) == round(duration / 0.02)
    (sent,) = read_rtp_streams(speech_pcap)
    assert stream_pcm(speech, codec="PCMU") == stream_pcm(sent, codec="PCMU")
    (dtmf,) = [s for s in to_ua if 101 in s.payload_types]
    assert [digit for _, digit in telephone_events(dtmf)] == ["1"]
    assert telephone_events(dtmf)[0][0] > speech.packets[-1][0]

    # Speech onsets measured on the wire match the file's, to within sipp's pacing jitter.
    wire_start = voiced_intervals(speech)[0][0] - speech.packets[0][0]
    file_start = voiced_intervals(sent)[0][0] - sent.packets[0][0]
    assert abs(wire_start - file_start) < 0.04
    assert any(s.src == ("127.0.0.1", ua.rtp_port) for s in streams)  # the UA sent RTP too


def test_far_end_hangup_wait_bye_and_unexpected_bye(tmp_path: Path, speech_pcm: np.ndarray) -> None:
    """WaitBye succeeds on the UA's BYE; a BYE during Play is answered and fails the call."""
    speech_pcap = tmp_path / "speech.pcap"
    pcm_to_rtp_pcap(speech_pcm.tobytes(), 8000, speech_pcap)
    # ua.py hangs up every call when its run time ends.
    with SketchUa(tmp_path / "ua", run_seconds=4) as ua:
        waiting = start_sipp(
            render_uac_scenario(steps=[Pause(200), WaitBye(timeout_ms=15000)]),
            ua.target,
            workdir=tmp_path / "waitbye",
            timeout_s=20,
        )
        playing = start_sipp(
            render_uac_scenario(steps=[Play(speech_pcap)]),
            ua.target,
            workdir=tmp_path / "playing",
            timeout_s=20,
        )
        try:
            wait_result = waiting.wait()
            play_result = playing.wait()
        finally:
            waiting.terminate()
            playing.terminate()
    assert wait_result.returncode == 0, wait_result.logs.get("errors")
    assert wait_result.received_requests() == ["BYE"]
    assert play_result.returncode == 1
    assert play_result.received_requests() == ["BYE"]
    assert "unexpected BYE" in play_result.logs.get("errors", "")
    assert "SIP/2.0 200 OK" in play_result.messages.rsplit("message sent", 1)[-1]


def test_expected_rejection(tmp_path: Path, tools: None) -> None:
    """A scenario expecting 503 passes on 503 (and sees Retry-After) and fails on anything else."""
    uas_port = free_udp_port()
    uas = start_sipp(
        UAS_503, None, sip_port=uas_port, workdir=tmp_path / "uas", timeout_s=20, calls=2
    )
    try:
        time.sleep(0.5)  # let the UAS bind its port
        target = f"127.0.0.1:{uas_port}"
        ok = run_sipp(render_uac_scenario(expect_status=503), target, workdir=tmp_path / "ok")
        wrong = run_sipp(render_uac_scenario(expect_status=486), target, workdir=tmp_path / "no")
        uas_result = uas.wait(timeout_s=10)
    finally:
        uas.terminate()
    assert ok.returncode == 0, ok.logs.get("errors")
    assert ok.received_status_codes()[-1] == 503
    assert ok.received_header(503, "Retry-After") == "30"
    assert wrong.returncode == 1
    assert uas_result.returncode == 0, uas_result.logs.get("errors")  # both 503s were ACKed


def test_render_rejects_bad_steps(tmp_path: Path) -> None:
    """Scenario rendering validates its input (no network needed)."""
    pcma = tmp_path / "pcma.pcap"
    pcm_to_rtp_pcap(bytes(3200), 8000, pcma, codec="PCMA")
    with pytest.raises(ValueError, match="not in offer"):
        render_uac_scenario(steps=[Play(pcma)], codecs=("PCMU",))
    with pytest.raises(ValueError, match="no RFC 2833 pcap"):
        render_uac_scenario(steps=[Rfc2833("A")])
    with pytest.raises(ValueError, match="last step"):
        render_uac_scenario(steps=[WaitBye(), Pause(10)])
    with pytest.raises(ValueError, match="answered call"):
        render_uac_scenario(steps=[Pause(10)], expect_status=503)
    with pytest.raises(ValueError, match="not a DTMF digit"):
        render_uac_scenario(steps=[InfoDtmf("x")])
    xml = render_uac_scenario(steps=[Play(pcma), InfoDtmf("#")], codecs=("PCMA",))
    assert "m=audio [auto_media_port] RTP/AVP 8 101" in xml
    assert "a=fmtp:101 0-16" in xml
    assert "Signal=#" in xml
    assert "CSeq: 2 INFO" in xml and "CSeq: 3 BYE" in xml


def _transfer_call(tmp_path: Path, uas_xml: str, steps: list) -> tuple[SippResult, SippResult]:
    """Run the UAS (REFER sender) and a UAC with ``steps``; return (uac, uas) results."""
    uas_port = free_udp_port()
    uas = start_sipp(uas_xml, None, sip_port=uas_port, workdir=tmp_path / "uas", timeout_s=15)
    try:
        time.sleep(0.5)  # let the UAS bind its port
        uac = run_sipp(
            render_uac_scenario(steps=steps),
            f"127.0.0.1:{uas_port}",
            workdir=tmp_path / "uac",
            timeout_s=15,
        )
        uas_result = uas.wait(timeout_s=20)
    finally:
        uas.terminate()
    return uac, uas_result


@pytest.mark.parametrize("accept", [True, False], ids=["accepted", "declined"])
def test_expect_refer_blind_transfer(tmp_path: Path, tools: None, accept: bool) -> None:
    """ExpectRefer answers a REFER (202 + NOTIFYs, or 603) and parse_refer reads it back."""
    uac, uas = _transfer_call(
        tmp_path, _uas_refer(accept=accept), [ExpectRefer(accept=accept), WaitBye(10000)]
    )
    assert uac.returncode == 0, uac.logs.get("errors", uac.stderr)
    assert uas.returncode == 0, uas.logs.get("errors", uas.stderr)
    expected = {"Refer-To": "<sip:frontdesk@pbx.example;user=phone>", "X-Handoff-ID": "hof-7f3a9c"}
    assert parse_refer(uac.messages) == expected
    assert parse_refer(uac.logs["log"]) == expected  # the <log> lines of the step
    assert uac.received_requests() == ["REFER", "BYE"]
    if accept:
        assert uac.received_status_codes() == [200, 200, 200]  # INVITE, NOTIFY x2
        assert uas.received_requests() == ["INVITE", "ACK", "NOTIFY", "NOTIFY"]
        notifies = [m for d, m in _sent(uac) if m.startswith("NOTIFY ")]
        assert [n.rsplit("\n", 1)[-1] for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
        assert all(f"CSeq: {i + 2} NOTIFY" in n for i, n in enumerate(notifies))
        assert all("Event: refer" in n and "message/sipfrag" in n for n in notifies)
    else:
        assert uac.received_status_codes() == [200]
        assert uas.received_status_codes()[:1] == [603]
        assert "NOTIFY" not in uac.messages


@pytest.mark.parametrize(
    ("notify_status", "sipfrag"),
    [(486, "SIP/2.0 486 Busy Here"), (None, None)],
    ids=["target-busy", "no-final-notify"],
)
def test_expect_refer_failed_or_unfinished_transfer(
    tmp_path: Path, tools: None, notify_status: int | None, sipfrag: str | None
) -> None:
    """A failed transfer ends with its status in the last NOTIFY; None sends only 100 Trying."""
    uac, uas = _transfer_call(
        tmp_path,
        _uas_refer(accept=True, final_sipfrag=sipfrag),
        [ExpectRefer(notify_status=notify_status), WaitBye(10000)],
    )
    assert uac.returncode == 0, uac.logs.get("errors", uac.stderr)
    assert uas.returncode == 0, uas.logs.get("errors", uas.stderr)
    notifies = [m for _, m in _sent(uac) if m.startswith("NOTIFY ")]
    assert len(notifies) == (1 if sipfrag is None else 2)
    if sipfrag is not None:
        assert notifies[-1].endswith(sipfrag)


def test_expect_refer_needs_the_handoff_header(tmp_path: Path, tools: None) -> None:
    """A REFER without the handoff header fails the UAC's call."""
    uac, _ = _transfer_call(
        tmp_path, _uas_refer(accept=True, handoff_line="X-Other: 1"), [ExpectRefer(), WaitBye()]
    )
    assert uac.returncode == 1
    assert parse_refer(uac.messages)["X-Handoff-ID"] is None


def test_render_expect_refer(tmp_path: Path) -> None:
    """ExpectRefer renders NOTIFYs only when accepted and validates its input."""
    xml = render_uac_scenario(steps=[ExpectRefer(notify_status=486), WaitBye()])
    assert '<recv request="REFER"' in xml and "SIP/2.0 202 Accepted" in xml
    assert "CSeq: 2 NOTIFY" in xml and "CSeq: 3 NOTIFY" in xml
    assert "SIP/2.0 486 Busy Here" in xml and "terminated;reason=noresource" in xml
    assert "To: <sip:appliance@[remote_ip]:[remote_port]>[peer_tag_param]" in xml
    timeout = render_uac_scenario(steps=[ExpectRefer(notify_status=None), WaitBye()])
    assert timeout.count("NOTIFY [next_url]") == 1 and "terminated" not in timeout
    declined = render_uac_scenario(steps=[ExpectRefer(accept=False), WaitBye()])
    assert "SIP/2.0 603 Decline" in declined and "NOTIFY" not in declined
    with pytest.raises(ValueError, match="header name"):
        render_uac_scenario(steps=[ExpectRefer(header="X Bad")])
    with pytest.raises(ValueError, match="notify_status"):
        render_uac_scenario(steps=[ExpectRefer(notify_status=99)])
    assert parse_refer("") == {"Refer-To": None, "X-Handoff-ID": None}


def _sent(result: SippResult) -> list[tuple[str, str]]:
    return [(d, m) for d, m in _split_messages(result.messages) if d == "sent"]
