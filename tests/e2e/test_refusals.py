"""Refusals and lifecycle over real SIP.

Trunk ACL (403), capacity (503 + Retry-After), bad config and missing models at start, config
reload on SIGHUP, and drain on SIGTERM.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import Pause, render_uac_scenario, run_sipp, start_sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
]


@pytest.fixture(scope="module")
def single(tmp_path_factory, store):  # noqa: ANN001, ANN201
    """An appliance with capacity for one call."""
    proc = ApplianceProcess(
        tmp_path_factory.mktemp("single"), sip_port=free_udp_port(), rtp_port=45000, max_calls=1
    )
    proc.start()
    yield proc
    proc.stop()


def test_non_allowlisted_source_gets_403(single: ApplianceProcess) -> None:
    # 127.0.0.2 is loopback too, but not in the trunk allowlist (only 127.0.0.1/32).
    result = run_sipp(
        render_uac_scenario(expect_status=403), single.uri, local_ip="127.0.0.2", timeout_s=20
    )
    assert result.returncode == 0, result.messages[-2000:]
    assert 200 not in result.received_status_codes()
    assert "not a trunk peer" in single.log()


def test_svwar_invite_scan_is_not_answered(single: ApplianceProcess) -> None:
    svwar = Path(sys.executable).with_name("sipvicious_svwar")
    if not svwar.exists():
        pytest.skip("sipvicious is not installed")
    before = len([e for e in single.events() if e["kind"] == "CallAnswered"])
    subprocess.run(
        [
            str(svwar),
            "-m",
            "INVITE",
            "-e",
            "100-104",
            "-b",
            "127.0.0.2",
            "-p",
            "0",
            single.uri,
            "-t",
            "0.2",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    time.sleep(1)
    after = len([e for e in single.events() if e["kind"] == "CallAnswered"])
    assert after == before, "a scan from a non-trunk address got a call answered"


def test_call_beyond_capacity_gets_503_with_retry_after(single: ApplianceProcess) -> None:
    first = start_sipp(render_uac_scenario(steps=[Pause(6000)]), single.uri, timeout_s=30)
    try:
        single.wait_event("CallAnswered", count=1, timeout_s=10)
        time.sleep(0.5)
        second = run_sipp(render_uac_scenario(expect_status=503), single.uri, timeout_s=20)
        assert second.returncode == 0, second.messages[-2000:]
        assert second.received_header(503, "Retry-After") == "17"
    finally:
        result = first.wait(30)
    assert result.returncode == 0, "the call in progress was disturbed"


def test_corrupt_config_exits_nonzero_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[sip]\nbind = \n")
    out = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert str(bad) in out.stderr and "configuration error" in out.stderr


def test_missing_model_exits_nonzero_naming_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(
        f'[models]\nstore = "{tmp_path / "empty-store"}"\n'
        f'[sip]\nbind = "127.0.0.1:{free_udp_port()}"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3
    assert str(tmp_path / "empty-store") in out.stderr and "not found" in out.stderr


def test_corrupt_config_reload_keeps_serving(single: ApplianceProcess) -> None:
    single.config.write_text("[sip\n")
    try:
        single.signal(signal.SIGHUP)
        time.sleep(1)
        assert "configuration reload refused" in single.log()
        assert str(single.config) in single.log()
        result = run_sipp(render_uac_scenario(steps=[Pause(500)]), single.uri, timeout_s=20)
        assert result.returncode == 0 and 200 in result.received_status_codes()
        refused = single.wait_event("ConfigChanged")
        assert refused and refused[-1]["accepted"] is False
    finally:
        single.config.write_text(single.config_text)


def test_sigterm_drains_new_calls_refused_active_call_finishes(tmp_path: Path, store: Path) -> None:
    proc = ApplianceProcess(tmp_path, sip_port=free_udp_port(), rtp_port=46000)
    proc.start()
    active = start_sipp(render_uac_scenario(steps=[Pause(5000)]), proc.uri, timeout_s=30)
    proc.wait_event("CallAnswered", timeout_s=10)
    proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while "draining" not in proc.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    refused = run_sipp(render_uac_scenario(expect_status=503), proc.uri, timeout_s=20)
    assert refused.returncode == 0, refused.messages[-2000:]
    done = active.wait(30)
    assert done.returncode == 0, "the active call did not finish cleanly during the drain"
    assert proc.proc is not None
    assert proc.proc.wait(30) == 0
    ended = proc.wait_event("CallEnded")
    assert ended and ended[0]["disposition"] == "caller_hangup"


def test_unsupported_codec_is_refused_and_service_continues(single: ApplianceProcess) -> None:
    xml = render_uac_scenario(codecs=("PCMU",), expect_status=488)
    xml = xml.replace("RTP/AVP 0 101", "RTP/AVP 18 101").replace(
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000"
    )
    assert "G729" in xml
    result = run_sipp(xml, single.uri, timeout_s=20)
    assert result.returncode == 0, result.messages[-2000:]
    assert 200 not in result.received_status_codes()
    ok = run_sipp(render_uac_scenario(steps=[Pause(300)]), single.uri, timeout_s=20)
    assert ok.returncode == 0


def test_malformed_sip_does_not_take_the_agent_down(single: ApplianceProcess) -> None:
    import socket

    garbage = [
        b"\x00\xff" * 300,
        b"INVITE sip:appliance@127.0.0.1 SIP/2.0\r\nVia: broken\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\nContent-Length: 99999\r\n\r\nv=0",
        b"OPTIONS sip:appliance@127.0.0.1 SIP/9.9\r\n\r\n",
        "REGISTER sip:\u00e9\u00e9 SIP/2.0\r\n\r\n".encode(),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for datagram in garbage:
            s.sendto(datagram, ("127.0.0.1", single.sip_port))
    time.sleep(0.5)
    assert single.proc is not None and single.proc.poll() is None, "agent died"
    ok = run_sipp(render_uac_scenario(steps=[Pause(300)]), single.uri, timeout_s=20)
    assert ok.returncode == 0 and 200 in ok.received_status_codes()
