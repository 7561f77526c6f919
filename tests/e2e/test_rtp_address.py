"""RTP bound to the configured address and advertised correctly, alone and behind the edge.

Issue 13 ("RTP listens on every address"; behind the Kamailio edge a worker's SDP said
``c=IN IP4 127.0.0.1``, so a PBX on the LAN would have sent RTP to its own loopback):

* A worker on its own with ``[sip] rtp_address = 127.0.0.5`` and ``rtp_public_address =
  127.0.0.6``: the 200's SDP carries ``127.0.0.6`` in ``c=`` and ``o=``, and while the call is up
  the worker's RTP and RTCP sockets (read from the kernel with psutil for its pid) are bound to
  ``127.0.0.5``, on the port the SDP's ``m=`` line names, inside ``rtp_port .. rtp_port_max``;
  no UDP socket of the worker is bound to a wildcard address.
* Through a real Kamailio whose trunk side listens on ``127.0.0.7`` (standing in for the box's
  LAN address): the worker keeps SIP on ``127.0.0.1``, but the 200's SDP says
  ``c=IN IP4 127.0.0.7``, and its RTP sockets are bound there (Kamailio relays no media).

Both workers load their models side by side; the module takes about as long as one start-up.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import STORE
from tests.e2e.server import PHRASE_CACHE, ApplianceProcess
from tests.e2e.sipp import Pause, SippProcess, free_udp_port, render_uac_scenario, start_sipp
from tests.e2e.test_edge import Edge, Worker, send

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
]

#: The worker's RTP binds here; its SDP advertises the other one (both on lo: all of 127/8).
RTP_ADDRESS = "127.0.0.5"
RTP_PUBLIC = "127.0.0.6"
RTP_PORT, RTP_PORT_MAX = 48200, 48299
#: The edge's trunk side, standing in for the box's LAN address.
TRUNK_HOST = "127.0.0.7"
EDGE_RTP_PORT = 48400
WILDCARDS = {"0.0.0.0", "::"}  # noqa: S104


class LanEdge(Edge):
    """The edge with its trunk listener on :data:`TRUNK_HOST` instead of 127.0.0.1."""

    @property
    def uri(self) -> str:
        """``HOST:PORT`` of the trunk listener."""
        return f"{TRUNK_HOST}:{self.trunk_port}"


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, store: Path
) -> Iterator[tuple[ApplianceProcess, LanEdge, Worker]]:
    """A lone worker with rtp_address/rtp_public_address, and an edge with one worker."""
    alone = ApplianceProcess(
        tmp_path_factory.mktemp("rtp-alone"),
        sip_port=free_udp_port(),
        rtp_port=RTP_PORT,
        max_calls=1,
    )
    alone.config_text = alone.config_text.replace(
        "[sip]\n",
        f'[sip]\nrtp_address = "{RTP_ADDRESS}"\nrtp_public_address = "{RTP_PUBLIC}"\n'
        f"rtp_port_max = {RTP_PORT_MAX}\n",
        1,
    )
    alone.config.write_text(alone.config_text)

    from appliance.audit import envelope
    from appliance.audit.checkpoint import load_or_create_signing_key
    from appliance.config import load_settings

    work = tmp_path_factory.mktemp("rtp-edge")
    base = free_udp_port("127.0.0.1", count=2)  # the edge's loopback socket, worker 0
    trunk_port = free_udp_port(TRUNK_HOST)
    config = work / "appliance.toml"
    config.write_text(
        f'[sip]\nbind = "{TRUNK_HOST}:{trunk_port}"\nrtp_port = {EDGE_RTP_PORT}\n'
        'max_calls = 1\ndrain_timeout_s = 10\nallowed_peers = ["127.0.0.1/32"]\n'
        f'[models]\nstore = "{STORE}"\nphrase_cache = "{PHRASE_CACHE}"\n'
        f'[store]\nmetadata_db = "{work / "calls.sqlite"}"\n'
        f"[edge]\nenabled = true\nworkers = 1\ninternal_port = {base}\n"
        f"worker_base_port = {base + 1}\nping_interval_s = 1\nping_threshold = 1\n"
        f'run_dir = "{work / "run"}"\n'
    )
    audit = load_settings(config).audit
    load_or_create_signing_key(audit.signing_key_file)
    envelope.load_kek(audit.kek_file, create=True)
    worker = Worker(work, config, 0)
    edge = LanEdge(work, config, trunk_port)
    try:
        alone.launch()
        if shutil.which("kamailio") is not None:
            worker.launch()
            edge.render()
        alone.wait_ready(420)
        if worker.proc is not None:
            worker.wait_ready()
            edge.start()
            deadline = time.monotonic() + 15
            while send(edge, "OPTIONS", 200).returncode != 0:
                assert time.monotonic() < deadline, edge.log()[-3000:]
                time.sleep(0.5)
        yield alone, edge, worker
    finally:
        edge.stop()
        worker.stop(timeout_s=20)
        alone.stop(timeout_s=20)


def _answered_call(target: str) -> SippProcess:
    """A call that stays up for 4 s; returns once sipp has ACKed the 200."""
    call = start_sipp(render_uac_scenario(steps=[Pause(4000)]), target, timeout_s=20)
    log = call.scenario_path.parent / "messages.log"
    deadline = time.monotonic() + 15
    while not (log.exists() and "ACK sip:" in log.read_text(errors="replace")):
        if time.monotonic() > deadline or call.poll() is not None:
            call.terminate()
            raise AssertionError(f"the call was not answered: {call.wait().messages[-2000:]}")
        time.sleep(0.1)
    return call


def _sdp_of_200(messages: str) -> dict[str, str]:
    """``c``, ``o`` and ``m`` lines of the first 200 OK to the INVITE that carried SDP."""
    for block in re.split(r"^-{20,} ", messages, flags=re.MULTILINE):  # sipp's separators
        if "SIP/2.0 200 OK" in block and "CSeq: 1 INVITE" in block and "\nv=0" in block:
            lines = [ln.strip() for ln in block.splitlines()]
            return {k: next(ln[2:] for ln in lines if ln.startswith(f"{k}=")) for k in "com"}
    raise AssertionError(f"no 200 OK with SDP in:\n{messages[-3000:]}")


def _udp_sockets(pid: int) -> list[tuple[str, int]]:
    """``(address, port)`` of every UDP socket the process holds (the kernel's view)."""
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="udp")
        if c.laddr
    ]


def _check_call(
    target: str, pid: int, *, bound: str, advertised: str, ports: range
) -> dict[str, str]:
    """Place a call; check its SDP and the worker's RTP sockets while it is up."""
    call = _answered_call(target)
    try:
        sockets = _udp_sockets(pid)
        result = call.wait()
    finally:
        call.terminate()
    assert result.returncode == 0, result.messages[-3000:]
    sdp = _sdp_of_200(result.messages)
    assert sdp["c"] == f"IN IP4 {advertised}", sdp
    assert sdp["o"].endswith(f" IN IP4 {advertised}"), sdp
    media_port = int(sdp["m"].split()[1])
    assert media_port in ports, (media_port, ports)
    # RTP on the m= port and RTCP on the next one (RFC 3550 section 11), on the bound address.
    assert (bound, media_port) in sockets, sockets
    assert (bound, media_port + 1) in sockets, sockets
    in_range = [(ip, port) for ip, port in sockets if port in ports]
    assert {ip for ip, _ in in_range} == {bound}, sockets
    assert not [s for s in sockets if s[0] in WILDCARDS], sockets
    return sdp


def test_rtp_binds_rtp_address_and_sdp_advertises_rtp_public_address(
    workers: tuple[ApplianceProcess, LanEdge, Worker],
) -> None:
    alone, _, _ = workers
    assert alone.proc is not None
    sdp = _check_call(
        alone.uri,
        alone.proc.pid,
        bound=RTP_ADDRESS,
        advertised=RTP_PUBLIC,
        ports=range(RTP_PORT, RTP_PORT_MAX + 1),
    )
    assert RTP_ADDRESS not in " ".join(sdp.values())
    assert (
        f"RTP binds {RTP_ADDRESS} ports {RTP_PORT}-{RTP_PORT_MAX}, SDP advertises {RTP_PUBLIC}"
        in alone.log()
    )


@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")
def test_behind_the_edge_sdp_carries_the_trunk_side_address_not_loopback(
    workers: tuple[ApplianceProcess, LanEdge, Worker],
) -> None:
    _, edge, worker = workers
    assert worker.proc is not None
    sdp = _check_call(
        edge.uri,
        worker.proc.pid,
        bound=TRUNK_HOST,
        advertised=TRUNK_HOST,
        ports=range(EDGE_RTP_PORT, EDGE_RTP_PORT + 100),  # worker 0's rtp_port_stride
    )
    assert "127.0.0.1" not in " ".join(sdp.values())
    # SIP itself stayed on loopback (worker_base_port), and the trunk port is Kamailio's.
    sockets = _udp_sockets(worker.proc.pid)
    assert ("127.0.0.1", worker_sip_port(worker)) in sockets, sockets
    assert all(port != edge.trunk_port for _, port in sockets), sockets


def worker_sip_port(worker: Worker) -> int:
    """Worker ``N``'s SIP port, from the same settings the worker derives its own from."""
    from appliance.app.edge import worker_settings
    from appliance.config import load_settings

    return worker_settings(load_settings(worker.config), worker.index).sip.port
