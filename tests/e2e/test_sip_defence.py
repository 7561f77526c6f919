"""The worker's own SIP defences, over real SIP with sipp (ADR 0018).

* The crash from issue 13: INVITEs that lose their SDP offer (no body, or a datagram longer
  than pjsip's 4,000-byte ``PJSIP_MAX_PKT_LEN`` so the body is cut off) refused while every
  call slot is busy, or refused from a stranger, aborted the process on
  ``pjsip_rx_data_free_cloned: Assertion 'rdata' failed``. The worker must stay up, the calls
  in progress keep their audio, and an OPTIONS is answered afterwards.
* INVITE with ``Replaces`` naming a caller's dialog (RFC 3891): 403, and the caller stays.
* In-dialog REFER from the far end (RFC 3515): 603, and nothing is dialled.
* SUBSCRIBE (presence): 403 from anyone; REGISTER: never a 2xx.
* MESSAGE: pjsua 2.15.1 answers it 200 before any callback; its body is kept nowhere.
* Timer H: a call answered and never ACKed is ended with a BYE after ``[sip] ack_timeout_s``.
* RTP timeout: a call whose inbound RTP stops is ended after ``[sip] rtp_timeout_s``.

The worker here runs with ``ack_timeout_s = 3`` and ``rtp_timeout_s = 4`` so the module stays
well under 90 s; the defaults are 32 s (RFC 3261's 64*T1) and 60 s.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.capture import LoopbackCapture
from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import Pause, Play, WaitBye, render_uac_scenario, run_sipp, start_sipp
from tests.kit.pcap import pcm_to_rtp_pcap, read_rtp_streams

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]

RTP_BASE = 47000
#: Largest INVITE the issue's traffic reached, in bytes of body.
LARGEST_BODY = 8600
ACK_TIMEOUT_S = 3
RTP_TIMEOUT_S = 4


@pytest.fixture(scope="module")
def worker(tmp_path_factory, store):  # noqa: ANN001, ANN201
    """An appliance with two call slots and short Timer H and RTP timeouts."""
    proc = ApplianceProcess(
        tmp_path_factory.mktemp("defence"), sip_port=free_udp_port(), rtp_port=RTP_BASE
    )
    proc.config_text = proc.config_text.replace(
        "[sip]\n", f"[sip]\nack_timeout_s = {ACK_TIMEOUT_S}\nrtp_timeout_s = {RTP_TIMEOUT_S}\n", 1
    )
    proc.config.write_text(proc.config_text)
    proc.start()
    yield proc
    proc.stop()


def _noise_pcap(path: Path, seconds: int) -> Path:
    """Quiet noise as RTP/PCMU: a caller whose RTP keeps flowing."""
    rng = np.random.default_rng(13)
    pcm = (rng.standard_normal(8000 * seconds) * 60).astype(np.int16).tobytes()
    pcm_to_rtp_pcap(pcm, 8000, path, codec="PCMU")
    return path


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> Path:  # noqa: ANN001
    """15 s of caller RTP (outlasts the flood of the crash test)."""
    return _noise_pcap(tmp_path_factory.mktemp("noise") / "noise15.pcap", 15)


@pytest.fixture(scope="module")
def short_noise(tmp_path_factory) -> Path:  # noqa: ANN001
    """5 s of caller RTP."""
    return _noise_pcap(tmp_path_factory.mktemp("noise") / "noise5.pcap", 5)


def _alive(proc: ApplianceProcess) -> bool:
    return proc.proc is not None and proc.proc.poll() is None


def _sdp(size: int, *, pad_first: bool = False) -> str:
    """An SDP offer padded with ``a=`` lines to about ``size`` bytes."""
    head = (
        "v=0\n      o=sipp 1 1 IN IP[local_ip_type] [local_ip]\n      s=-\n"
        "      c=IN IP[local_ip_type] [local_ip]\n      t=0 0\n"
    )
    media = "      m=audio [auto_media_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000\n"
    pad, left = "", size - 160
    while left > 0:
        line = "a=x-pad:" + "p" * max(1, min(200, left - 10))
        pad += f"      {line}\n"
        left -= len(line) + 2
    return head + (pad + media if pad_first else media + pad)


def invite_scenario(
    *, expect: int, body: str = "", header_bytes: int = 0, extra: tuple[str, ...] = ()
) -> str:
    """One INVITE (optional SDP body, optional padding headers) that must get ``expect``.

    Padding headers of ~200 bytes each push the datagram past pjsip's 4,000-byte receive
    buffer, which keeps the head of the message and drops the rest, body included.
    """
    pads = tuple(f"X-Pad-{i}: {'h' * 190}" for i in range(header_bytes // 200))
    lines = [
        "INVITE sip:appliance@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        "From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]",
        "To: <sip:appliance@[remote_ip]:[remote_port]>",
        "Call-ID: [call_id]",
        "CSeq: 1 INVITE",
        "Contact: <sip:sipp@[local_ip]:[local_port]>",
        "Max-Forwards: 70",
        *extra,
        *pads,
    ]
    if body:
        lines += ["Content-Type: application/sdp", "Content-Length: [len]"]
    else:
        lines.append("Content-Length: 0")
    text = "\n".join(f"      {line}" for line in lines)
    if body:
        text += f"\n\n      {body}"
    ack = "\n".join(
        f"      {line}"
        for line in (
            "ACK sip:appliance@[remote_ip]:[remote_port] SIP/2.0",
            "[last_Via:]",
            "From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]",
            "[last_To:]",
            "Call-ID: [call_id]",
            "CSeq: 1 ACK",
            "Max-Forwards: 70",
            "Content-Length: 0",
        )
    )
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        '<scenario name="defence INVITE">\n'
        f'  <send retrans="500">\n    <![CDATA[\n\n{text}\n\n    ]]>\n  </send>\n'
        '  <recv response="100" optional="true"/>\n'
        f'  <recv response="{expect}"/>\n'
        f"  <send>\n    <![CDATA[\n\n{ack}\n\n    ]]>\n  </send>\n"
        "</scenario>\n"
    )


def options_scenario() -> str:
    """An OPTIONS that must get 200 OK."""
    lines = [
        "OPTIONS sip:appliance@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        "From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]opt[call_number]",
        "To: <sip:appliance@[remote_ip]:[remote_port]>",
        "Call-ID: [call_id]",
        "CSeq: 1 OPTIONS",
        "Max-Forwards: 70",
        "Content-Length: 0",
    ]
    text = "\n".join(f"      {line}" for line in lines)
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        f'<scenario name="options">\n  <send retrans="500">\n    <![CDATA[\n\n{text}\n\n'
        '    ]]>\n  </send>\n  <recv response="200"/>\n</scenario>\n'
    )


def _max_gap(stream) -> float:  # noqa: ANN001
    times = [t for t, _ in stream.audio_packets]
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=99.0)


def test_offerless_and_oversized_invites_at_capacity_leave_the_worker_up(
    worker: ApplianceProcess, noise: Path, tmp_path: Path
) -> None:
    cap = tmp_path / "calls.pcap"
    with LoopbackCapture(cap, bpf=f"udp portrange {RTP_BASE}-{RTP_BASE + 999}"):
        live = [
            start_sipp(render_uac_scenario(steps=[Play(noise)]), worker.uri, timeout_s=60)
            for _ in range(2)
        ]
        try:
            assert len(worker.wait_event("CallAnswered", count=2, timeout_s=15)) >= 2
            time.sleep(1.0)
            flood_started = time.monotonic()
            sent = 0
            # Bodies growing from 0.5 kB to 8.6 kB, as in the report.
            for size in range(500, LARGEST_BODY + 1, 700):
                r = run_sipp(invite_scenario(expect=503, body=_sdp(size)), worker.uri, timeout_s=10)
                assert r.returncode == 0, r.messages[-1500:]
                sent += 1
                assert _alive(worker), f"worker died after a {size}-byte body"
            # Padding headers: the datagram outgrows pjsip's buffer and the offer is lost.
            for header_bytes in (3000, 4200, 6000, 8000):
                xml = invite_scenario(expect=503, body=_sdp(500), header_bytes=header_bytes)
                r = run_sipp(xml, worker.uri, timeout_s=10)
                assert r.returncode == 0, r.messages[-1500:]
                sent += 1
                assert _alive(worker), f"worker died after {header_bytes} bytes of headers"
            # No offer at all (RFC 3261 13.2.1 allows it), from a trunk peer and a stranger.
            r = run_sipp(invite_scenario(expect=503), worker.uri, timeout_s=10)
            assert r.returncode == 0, r.messages[-1500:]
            r = run_sipp(invite_scenario(expect=403), worker.uri, local_ip="127.0.0.2")
            assert r.returncode == 0, r.messages[-1500:]
            sent += 2
            assert _alive(worker), "worker died after an INVITE with no offer"
            flood_s = time.monotonic() - flood_started
            results = [p.wait(40) for p in live]
        finally:
            for p in live:
                p.terminate()
    assert _alive(worker), worker.log()[-3000:]
    assert [r.returncode for r in results] == [0, 0], "a call in progress was dropped"
    assert sent >= 17 and flood_s < 13, "the live calls ended before the flood did"

    # Each live call kept hearing the agent: RTP every 20 ms, never a gap over half a second.
    streams = read_rtp_streams(cap)
    agent = [s for s in streams if RTP_BASE <= s.src[1] < RTP_BASE + 1000 and s.audio_packets]
    assert len(agent) >= 2, [(s.src, s.dst) for s in streams]
    for stream in agent[:2]:
        assert len(stream.audio_packets) > 12 * 50 * 0.9
        assert _max_gap(stream) < 0.5

    ok = run_sipp(options_scenario(), worker.uri, timeout_s=10)
    assert ok.returncode == 0 and 200 in ok.received_status_codes()
    after = run_sipp(render_uac_scenario(steps=[Pause(300)]), worker.uri, timeout_s=20)
    assert after.returncode == 0 and 200 in after.received_status_codes()


# -- helpers for requests sipp sends outside render_uac_scenario ----------------------------


def _xml(name: str, *elements: str) -> str:
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        f'<scenario name="{name}">\n' + "\n".join(elements) + "\n</scenario>\n"
    )


def _send(*lines: str, body: str = "", retrans: bool = True) -> str:
    head = [*lines, "Content-Length: [len]" if body else "Content-Length: 0"]
    text = "\n".join(f"      {line}" for line in head)
    if body:
        text += f"\n\n      {body}"
    attr = ' retrans="500"' if retrans else ""
    return f"  <send{attr}>\n    <![CDATA[\n\n{text}\n\n    ]]>\n  </send>"


def _request(method: str, *extra: str, tag: str = "[pid]x[call_number]", cseq: int = 1) -> str:
    return _send(
        f"{method} sip:appliance@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        f"From: sipp <sip:sipp@[local_ip]:[local_port]>;tag={tag}",
        "To: <sip:appliance@[remote_ip]:[remote_port]>",
        "Call-ID: [call_id]",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:sipp@[local_ip]:[local_port]>",
        "Max-Forwards: 70",
        *extra,
    )


OFFER = (
    "v=0\n      o=sipp 1 1 IN IP[local_ip_type] [local_ip]\n      s=-\n"
    "      c=IN IP[local_ip_type] [local_ip]\n      t=0 0\n"
    "      m=audio [auto_media_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000"
)


def _expect_only(method: str, status: int, *extra: str) -> str:
    """An out-of-dialog ``method`` that must be answered ``status``."""
    return _xml(f"{method} {status}", _request(method, *extra), f'  <recv response="{status}"/>')


# -- INVITE with Replaces (RFC 3891) --------------------------------------------------------


def _dialog_tags(messages_log: Path, timeout_s: float = 10) -> tuple[str, str, str]:
    """(Call-ID, our From tag, the worker's To tag) of a call in progress, from sipp's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = messages_log.read_text(errors="replace") if messages_log.exists() else ""
        for block in text.split("message received")[1:]:
            if "SIP/2.0 200 OK" not in block.split("\n", 3)[1] + block.split("\n", 3)[2]:
                continue
            cid = re.search(r"^Call-ID:\s*(\S+)", block, re.M | re.I)
            frm = re.search(r"^From:.*;tag=([^;\s]+)", block, re.M | re.I)
            to = re.search(r"^To:.*;tag=([^;\s]+)", block, re.M | re.I)
            if cid and frm and to:
                return cid.group(1), frm.group(1), to.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no 200 OK in {messages_log}")


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"], ids=["trunk-peer", "stranger"])
def test_invite_with_replaces_cannot_take_over_a_caller(
    worker: ApplianceProcess, short_noise: Path, tmp_path: Path, source: str
) -> None:
    caller = start_sipp(
        render_uac_scenario(steps=[Play(short_noise)]),
        worker.uri,
        timeout_s=40,
        workdir=tmp_path / "caller",
    )
    try:
        call_id, from_tag, to_tag = _dialog_tags(tmp_path / "caller" / "messages.log")
        # Replaces names the dialog as the worker sees it: to-tag is its own tag (RFC 3891 3).
        replaces = f"Replaces: {call_id};to-tag={to_tag};from-tag={from_tag}"
        takeover = _xml(
            "takeover",
            _request(
                "INVITE", "Content-Type: application/sdp", replaces, "Require: replaces"
            ).replace("Content-Length: 0", "Content-Length: [len]\n\n      " + OFFER),
            '  <recv response="100" optional="true"/>',
            '  <recv response="403"/>',
            _send(
                "ACK sip:appliance@[remote_ip]:[remote_port] SIP/2.0",
                "[last_Via:]",
                "[last_From:]",
                "[last_To:]",
                "Call-ID: [call_id]",
                "CSeq: 1 ACK",
                "Max-Forwards: 70",
                retrans=False,
            ),
        )
        result = run_sipp(takeover, worker.uri, local_ip=source, timeout_s=10)
        assert result.returncode == 0, result.messages[-2000:]
        assert 200 not in result.received_status_codes()
        assert "INVITE with Replaces" in worker.log()
    finally:
        done = caller.wait(40)
    assert done.returncode == 0, "the caller was taken over or dropped"
    assert "BYE" not in done.received_requests()


# -- REFER, SUBSCRIBE, REGISTER ---------------------------------------------------------------


def test_refer_from_the_far_end_is_declined_and_nothing_is_dialled(
    worker: ApplianceProcess,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        target.settimeout(0.2)
        port = target.getsockname()[1]
        refer = _send(
            "REFER sip:appliance@[remote_ip]:[remote_port] SIP/2.0",
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
            "From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]",
            "To: <sip:appliance@[remote_ip]:[remote_port]>[peer_tag_param]",
            "Call-ID: [call_id]",
            "CSeq: 2 REFER",
            "Contact: <sip:sipp@[local_ip]:[local_port]>",
            "Max-Forwards: 70",
            f"Refer-To: <sip:premium-rate@127.0.0.1:{port}>",
            "Referred-By: <sip:sipp@[local_ip]:[local_port]>",
        )
        xml = render_uac_scenario(steps=[Pause(300)]).replace(
            '  <pause milliseconds="300"/>',
            refer + '\n  <recv response="603"/>\n  <pause milliseconds="500"/>',
        )
        xml = xml.replace("CSeq: 2 BYE", "CSeq: 3 BYE")
        assert "REFER sip:" in xml and "CSeq: 3 BYE" in xml
        result = run_sipp(xml, worker.uri, timeout_s=20)
        assert result.returncode == 0, result.messages[-2000:]
        with pytest.raises(TimeoutError):
            target.recv(9000)  # pjsua's default would have sent an INVITE here
    assert "REFER declined (603)" in worker.log()


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"], ids=["trunk-peer", "stranger"])
def test_presence_subscribe_is_refused(worker: ApplianceProcess, source: str) -> None:
    xml = _expect_only("SUBSCRIBE", 403, "Event: presence", "Expires: 60")
    result = run_sipp(xml, worker.uri, local_ip=source, timeout_s=10)
    assert result.returncode == 0, result.messages[-2000:]
    assert "NOTIFY" not in result.received_requests()


def test_register_gets_no_2xx(worker: ApplianceProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(1.0)
        host, port = s.getsockname()
        s.sendto(
            (
                f"REGISTER sip:127.0.0.1:{worker.sip_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKreg13\r\n"
                f"From: <sip:200@127.0.0.1>;tag=r13\r\nTo: <sip:200@127.0.0.1>\r\n"
                f"Call-ID: reg13@{host}\r\nCSeq: 1 REGISTER\r\n"
                f"Contact: <sip:200@{host}:{port}>\r\nExpires: 3600\r\n"
                "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", worker.sip_port),
        )
        answers = []
        try:
            while True:
                answers.append(s.recv(9000).split(b"\r\n", 1)[0])
        except TimeoutError:
            pass
    assert not [a for a in answers if a.startswith(b"SIP/2.0 2")], answers
    assert _alive(worker)


# -- Timer H and the RTP timeout --------------------------------------------------------------


def _ended(worker: ApplianceProcess, count: int) -> dict:
    found = worker.wait_event("CallEnded", count=count, timeout_s=20)
    assert len(found) >= count, found
    return found[count - 1]


def test_answered_call_with_no_ack_is_ended_after_timer_h(worker: ApplianceProcess) -> None:
    before = len(worker.wait_event("CallEnded", timeout_s=0))
    xml = _xml(
        "no ACK",
        _request("INVITE", "Content-Type: application/sdp", tag="[pid]noack[call_number]").replace(
            "Content-Length: 0", "Content-Length: [len]\n\n      " + OFFER
        ),
        '  <recv response="100" optional="true"/>',
        '  <recv response="200" rtd="true"/>',
        # No ACK: the worker retransmits its 200, then must give up and send BYE.
        f'  <recv request="BYE" timeout="{(ACK_TIMEOUT_S + 4) * 1000}"/>',
        _send(
            "SIP/2.0 200 OK",
            "[last_Via:]",
            "[last_From:]",
            "[last_To:]",
            "[last_Call-ID:]",
            "[last_CSeq:]",
            retrans=False,
        ),
    )
    t0 = time.monotonic()
    result = run_sipp(xml, worker.uri, timeout_s=20)
    took = time.monotonic() - t0
    assert result.returncode == 0, result.messages[-2000:]
    assert ACK_TIMEOUT_S <= took < ACK_TIMEOUT_S + 4
    assert _ended(worker, before + 1)["disposition"] == "no_ack"


def test_call_whose_rtp_stops_is_ended_after_the_rtp_timeout(worker: ApplianceProcess) -> None:
    before = len(worker.wait_event("CallEnded", timeout_s=0))
    # sipp sends no RTP at all here; the worker must hang up on its own.
    t0 = time.monotonic()
    result = run_sipp(
        render_uac_scenario(steps=[WaitBye(timeout_ms=(RTP_TIMEOUT_S + 5) * 1000)]),
        worker.uri,
        timeout_s=30,
    )
    took = time.monotonic() - t0
    assert result.returncode == 0, result.messages[-2000:]
    assert RTP_TIMEOUT_S <= took < RTP_TIMEOUT_S + 4
    assert _ended(worker, before + 1)["disposition"] == "rtp_timeout"


# -- MESSAGE (RFC 3428) -----------------------------------------------------------------------


def _udp_request(worker: ApplianceProcess, source: str, text: str, wait_s: float = 1.5) -> list:
    """Send one datagram from ``source``; return the first line of every answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(wait_s)
        host, port = s.getsockname()
        s.sendto(text.format(host=host, port=port).encode(), ("127.0.0.1", worker.sip_port))
        answers = []
        try:
            while True:
                answers.append(s.recv(9000).split(b"\r\n", 1)[0])
        except TimeoutError:
            pass
    return answers


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"], ids=["trunk-peer", "stranger"])
def test_message_body_reaches_no_log_event_or_store(worker: ApplianceProcess, source: str) -> None:
    """The worker's pjsua answers an out-of-dialog MESSAGE 200 before any callback (ADR 0018).

    pjsua 2.15.1 gives no hook to refuse it, so the worker must at least keep nothing of it:
    the body (a made-up date of birth, standing in for PHI) appears in no log line, test
    event, metadata row or audit file, and no call is started.
    """
    marker = f"DOB-1913-{source.rsplit('.', 1)[1]}-Zq7"
    calls_before = len(worker.wait_event("CallAnswered", timeout_s=0))
    body = f"my date of birth is {marker}"
    answers = _udp_request(
        worker,
        source,
        f"MESSAGE sip:appliance@127.0.0.1:{worker.sip_port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKmsg13" + source[-1] + "\r\n"
        "From: <sip:200@{host}>;tag=m13\r\nTo: <sip:appliance@127.0.0.1>\r\n"
        "Call-ID: msg13-" + source[-1] + "@{host}\r\nCSeq: 1 MESSAGE\r\n"
        "Max-Forwards: 70\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}",
    )
    # Whatever pjsua answers (200 today; a later pjsua may let us refuse), it is one answer.
    assert len(answers) <= 1, answers
    assert _alive(worker)
    assert len(worker.wait_event("CallAnswered", timeout_s=0)) == calls_before
    assert marker not in worker.log()
    assert marker not in worker.events_path.read_text()
    stores = [p for p in worker.workdir.rglob("*") if p.is_file() and p.suffix != ".toml"]
    assert stores, "the worker wrote no files at all"
    leaked = [p for p in stores if marker.encode() in p.read_bytes()]
    assert not leaked, leaked


# -- An SDP address longer than pjlib takes (found by fuzzing) ------------------------------


@pytest.mark.parametrize("line", ["c", "rtcp"])
def test_offer_with_an_overlong_address_is_refused_not_fatal(
    worker: ApplianceProcess, line: str
) -> None:
    """A 300-character ``c=`` (or ``a=rtcp``) address: 488, and the worker stays up.

    Answering such an offer made pjmedia call ``pj_sockaddr_in_set_str_addr``, which asserts
    ``slen < PJ_MAX_HOSTNAME`` (254): the worker aborted on one INVITE from a trunk peer
    (boofuzz, ADR 0018). A slot is free here, so the INVITE would be answered.
    """
    host = "h" * 300
    conn = host if line == "c" else "127.0.0.1"
    rtcp = f"a=rtcp:4001 IN IP4 {host}\r\n" if line == "rtcp" else ""
    sdp = (
        f"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\n"
        f"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n{rtcp}"
    )
    answers = _udp_request(
        worker,
        "127.0.0.1",
        f"INVITE sip:appliance@127.0.0.1:{worker.sip_port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKlong13" + line + "\r\n"
        "From: <sip:200@{host}>;tag=l13\r\n"
        f"To: <sip:appliance@127.0.0.1>\r\nCall-ID: long13-{line}@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:200@{host}:{port}>\r\nMax-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}",
        wait_s=2.0,
    )
    time.sleep(0.5)
    assert _alive(worker), worker.log()[-2000:]
    assert b"SIP/2.0 488 Not Acceptable Here" in answers, answers
    assert not [a for a in answers if a.startswith(b"SIP/2.0 2")], answers
