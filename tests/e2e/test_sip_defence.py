"""The worker's own SIP defences, over real SIP with sipp (ADR 0018).

* The crash from issue 13: INVITEs that lose their SDP offer (no body, or a datagram longer
  than pjsip's 4,000-byte ``PJSIP_MAX_PKT_LEN`` so the body is cut off) refused while every
  call slot is busy, or refused from a stranger, aborted the process on
  ``pjsip_rx_data_free_cloned: Assertion 'rdata' failed``. The worker must stay up, the calls
  in progress keep their audio, and an OPTIONS is answered afterwards.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.capture import LoopbackCapture
from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import Pause, render_uac_scenario, run_sipp, start_sipp
from tests.kit.pcap import read_rtp_streams

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]

RTP_BASE = 47000
#: Largest INVITE the issue's traffic reached, in bytes of body.
LARGEST_BODY = 8600


@pytest.fixture(scope="module")
def worker(tmp_path_factory, store):  # noqa: ANN001, ANN201
    """An appliance with two call slots."""
    proc = ApplianceProcess(
        tmp_path_factory.mktemp("defence"), sip_port=free_udp_port(), rtp_port=RTP_BASE
    )
    proc.start()
    yield proc
    proc.stop()


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
    worker: ApplianceProcess, tmp_path: Path
) -> None:
    cap = tmp_path / "calls.pcap"
    with LoopbackCapture(cap, bpf=f"udp portrange {RTP_BASE}-{RTP_BASE + 999}"):
        live = [
            start_sipp(render_uac_scenario(steps=[Pause(14000)]), worker.uri, timeout_s=60)
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
    assert sent >= 17 and flood_s < 12.5, "the live calls ended before the flood did"

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
