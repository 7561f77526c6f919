"""The SIP front door, end to end: Kamailio in front of two agent workers, driven with sipp.

A real Kamailio (rendered by ``appliance edge render``) runs in front of two real
``appliance serve --worker N`` processes, all on loopback.

* The method and ACL matrix: INVITE with Replaces, REFER, SUBSCRIBE, MESSAGE, REGISTER and
  OPTIONS from the allowlisted trunk (127.0.0.1) and from a stranger (127.0.0.2); a stranger's
  INVITE too.
* A call through the edge (INVITE, 200, ACK, BYE) answered by a worker; a live call survives a
  takeover attempt (INVITE with Replaces naming it).
* Malformed requests get 400 from sanity and never reach a worker.
* Flood: a burst from one address gets 403, then nothing (pike); the trunk is unaffected.
* Drain: OPTIONS and INVITE get 503 + Retry-After while the edge's drain flag is set.
* Failover: the worker carrying a live call is killed with SIGKILL; the next INVITEs go to the
  other one; with that one busy too, the edge answers 503 + Retry-After (its own value, not a
  worker's); with both down, OPTIONS is 503.
* Each worker wrote its own audit log, and each verifies.

ADR 0020 (docs/decisions/0020-sip-edge-kamailio.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import STORE
from tests.e2e.server import PHRASE_CACHE, ApplianceProcess
from tests.e2e.sipp import Pause, SippResult, render_uac_scenario, run_sipp, start_sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed"),
]

#: The edge's Retry-After, distinct from the workers' (17) so a test can tell who answered.
EDGE_RETRY_AFTER = 23
WORKER_RETRY_AFTER = 17
STRANGER = "127.0.0.2"


def _ports(count: int) -> int:
    """A base port with ``count`` free consecutive UDP ports on 127.0.0.1."""
    from tests.e2e.sipp import free_udp_port

    return free_udp_port("127.0.0.1", count=count)


class Worker(ApplianceProcess):
    """``appliance serve --worker N`` on a shared settings file."""

    def __init__(self, workdir: Path, config: Path, index: int) -> None:
        self.workdir = workdir
        self.index = index
        self.config = config
        self.events_path = workdir / f"events-{index}.jsonl"
        self.log_path = workdir / f"worker-{index}.log"
        self.proc = None

    def launch(
        self, extra_args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
    ) -> None:
        """Start as worker N without waiting (workers load their models in parallel)."""
        super().launch(("--worker", str(self.index), *extra_args), extra_env)

    def wait_ready(self, timeout_s: float = 420) -> None:
        """Wait for the ``ready`` log line (two workers load their models at once)."""
        super().wait_ready(timeout_s)

    def answered(self) -> int:
        """Calls this worker answered so far."""
        return len([e for e in self.events() if e["kind"] == "CallAnswered"])


class Edge:
    """The rendered configuration and a running Kamailio."""

    def __init__(self, workdir: Path, config: Path, trunk_port: int) -> None:
        self.workdir = workdir
        self.config = config
        self.trunk_port = trunk_port
        self.out = workdir / "edge"
        self.run_dir = workdir / "run"
        self.log_path = workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``HOST:PORT`` of the trunk listener."""
        return f"127.0.0.1:{self.trunk_port}"

    def render(self) -> None:
        """``appliance edge render --check`` (the CLI, as the systemd unit runs it)."""
        subprocess.run(  # noqa: S603 - test harness, fixed argv
            [
                sys.executable,
                "-m",
                "appliance.cli",
                "edge",
                "--config",
                str(self.config),
                "render",
                "--out",
                str(self.out),
                "--check",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Run Kamailio in the foreground (``-DD``), logging to stderr (``-E``)."""
        self.run_dir.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - test harness, fixed argv
            [
                shutil.which("kamailio") or "kamailio",
                "-DD",
                "-E",
                "-Y",
                str(self.run_dir),
                "-f",
                str(self.out / "kamailio.cfg"),
            ],
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def ctl(self, *args: str) -> str:
        """A kamcmd RPC on the edge's control socket."""
        out = subprocess.run(  # noqa: S603 - test harness, fixed argv
            ["kamcmd", "-s", f"unix:{self.run_dir / 'kamailio.ctl'}", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout

    def log(self) -> str:
        """Kamailio's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def request_scenario(method: str, expect: int, headers: tuple[str, ...] = ()) -> str:
    """A sipp UAC scenario: one out-of-dialog request, which must get ``expect``."""
    lines = [
        f"{method} sip:appliance@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        "From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]",
        "To: <sip:appliance@[remote_ip]:[remote_port]>",
        "Call-ID: [call_id]",
        f"CSeq: 1 {method}",
        "Contact: <sip:sipp@[local_ip]:[local_port]>",
        "Max-Forwards: 70",
        *headers,
        "Content-Length: 0",
    ]
    text = "\n".join(lines)
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
        '<scenario name="edge request">\n'
        f'  <send retrans="500"><![CDATA[\n\n{text}\n\n  ]]></send>\n'
        '  <recv response="100" optional="true"/>\n'
        f'  <recv response="{expect}"/>\n'
        "</scenario>\n"
    )


def send(edge: Edge, method: str, expect: int, *, source: str = "127.0.0.1", **kw) -> SippResult:  # noqa: ANN003
    """Send one request through the edge; return sipp's result."""
    return run_sipp(request_scenario(method, expect, **kw), edge.uri, local_ip=source, timeout_s=8)


REPLACES = ("Replaces: 1-1@127.0.0.1;to-tag=abc;from-tag=def", "Require: replaces")
EVENT = ("Event: dialog", "Expires: 60")
REFER_TO = ("Refer-To: <sip:attacker@192.0.2.66>",)


@pytest.fixture(scope="module")
def box(tmp_path_factory, store) -> Iterator[tuple[Edge, list[Worker]]]:  # noqa: ANN001
    """Kamailio on a free trunk port, two workers (max_calls 1) on loopback ports behind it."""
    from appliance.audit import envelope
    from appliance.audit.checkpoint import load_or_create_signing_key
    from appliance.config import load_settings

    work = tmp_path_factory.mktemp("edge")
    base = _ports(4)  # internal socket, worker 0, worker 1, trunk
    config = work / "appliance.toml"
    config.write_text(
        f'[sip]\nbind = "127.0.0.1:{base + 3}"\nrtp_port = 47000\nmax_calls = 1\n'
        f"retry_after_s = {WORKER_RETRY_AFTER}\ndrain_timeout_s = 10\n"
        'allowed_peers = ["127.0.0.1/32"]\n'
        f'[models]\nstore = "{STORE}"\nphrase_cache = "{PHRASE_CACHE}"\n'
        f'[store]\nmetadata_db = "{work / "calls.sqlite"}"\n'
        f"[edge]\nenabled = true\nworkers = 2\ninternal_port = {base}\n"
        f"worker_base_port = {base + 1}\nretry_after_s = {EDGE_RETRY_AFTER}\n"
        "ping_interval_s = 1\nping_threshold = 1\ninvite_timeout_s = 2\n"
        f'run_dir = "{work / "run"}"\n'
    )
    # First boot makes the keys on the box; both workers then share them (ADR 0020).
    audit = load_settings(config).audit
    load_or_create_signing_key(audit.signing_key_file)
    envelope.load_kek(audit.kek_file, create=True)
    workers = [Worker(work, config, i) for i in range(2)]
    edge = Edge(work, config, base + 3)
    try:
        for w in workers:
            w.launch()
        edge.render()
        for w in workers:
            w.wait_ready()
        edge.start()
        deadline = time.monotonic() + 15
        while send(edge, "OPTIONS", 200).returncode != 0:
            assert time.monotonic() < deadline, edge.log()[-3000:]
            time.sleep(0.5)
        yield edge, workers
    finally:
        edge.stop()
        for w in workers:
            w.stop(timeout_s=20)


@pytest.mark.parametrize(
    ("method", "headers", "expect"),
    [
        ("OPTIONS", (), 200),
        ("INVITE", REPLACES, 403),
        ("REFER", REFER_TO, 405),
        ("SUBSCRIBE", EVENT, 405),
        ("MESSAGE", (), 405),
        ("REGISTER", (), 405),
    ],
    ids=["OPTIONS", "INVITE-Replaces", "REFER", "SUBSCRIBE", "MESSAGE", "REGISTER"],
)
def test_trunk_method_matrix(
    box: tuple[Edge, list[Worker]], method: str, headers: tuple[str, ...], expect: int
) -> None:
    edge, workers = box
    before = [w.answered() for w in workers]
    result = send(edge, method, expect, headers=headers)
    assert result.returncode == 0, (result.received_status_codes(), result.messages[-1500:])
    assert result.received_status_codes()[-1] == expect
    if expect == 405:
        assert "INVITE" in (result.received_header(405, "Allow") or "")
    assert [w.answered() for w in workers] == before


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("OPTIONS", ()),
        ("INVITE", ()),
        ("INVITE", REPLACES),
        ("REFER", REFER_TO),
        ("SUBSCRIBE", EVENT),
        ("MESSAGE", ()),
        ("REGISTER", ()),
    ],
    ids=["OPTIONS", "INVITE", "INVITE-Replaces", "REFER", "SUBSCRIBE", "MESSAGE", "REGISTER"],
)
def test_stranger_gets_403_for_everything(
    box: tuple[Edge, list[Worker]], method: str, headers: tuple[str, ...]
) -> None:
    edge, workers = box
    before = [w.answered() for w in workers]
    result = send(edge, method, 403, source=STRANGER, headers=headers)
    assert result.returncode == 0, (result.received_status_codes(), result.messages[-1500:])
    assert result.received_status_codes() == [403]
    assert [w.answered() for w in workers] == before
    assert f"refused {method} from {STRANGER}: not a trunk peer" in edge.log()


@pytest.mark.parametrize(
    ("method", "broken", "fixed"),
    [
        ("INVITE", "Content-Length: 0", "Content-Length: 500"),
        ("INVITE", "CSeq: 1 INVITE", "CSeq: x INVITE"),
        ("OPTIONS", "CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
    ],
    ids=["content-length", "cseq-number", "cseq-method"],
)
def test_malformed_requests_get_400_from_sanity(
    box: tuple[Edge, list[Worker]], method: str, broken: str, fixed: str
) -> None:
    edge, workers = box
    before = [w.answered() for w in workers]
    scenario = request_scenario(method, 400).replace(broken, fixed)
    assert fixed in scenario
    result = run_sipp(scenario, edge.uri, timeout_s=5)
    assert 400 in result.received_status_codes(), result.messages[-1500:]
    assert [w.answered() for w in workers] == before
    assert send(edge, "OPTIONS", 200).returncode == 0


def test_flood_from_one_source_is_cut_off_by_pike(box: tuple[Edge, list[Worker]]) -> None:
    edge, workers = box
    before = [w.answered() for w in workers]
    scenario = (
        request_scenario("OPTIONS", 403)
        .replace('<recv response="403"/>', '<recv response="403" timeout="1000"/>')
        .replace(' retrans="500"', "")  # one packet per request, no retransmission
        .replace('  <recv response="100" optional="true"/>\n', "")  # else no recv timeout
    )
    # 100 requests at up to 500/s from a third address (pike: 30 per 2 s by default).
    flood = start_sipp(
        scenario,
        edge.uri,
        local_ip="127.0.0.3",
        timeout_s=15,
        calls=100,
        extra_args=("-r", "500", "-l", "100"),
    ).wait()
    answered = flood.received_status_codes()
    assert set(answered) == {403}, answered
    assert 0 < len(answered) < 100, len(answered)  # then nothing at all
    assert "PIKE - BLOCKing ip 127.0.0.3" in edge.log()
    assert [w.answered() for w in workers] == before
    # Another source is not affected.
    assert send(edge, "OPTIONS", 200).returncode == 0


def test_call_through_the_edge_is_answered_by_a_worker(box: tuple[Edge, list[Worker]]) -> None:
    edge, workers = box
    before = sum(w.answered() for w in workers)
    result = run_sipp(render_uac_scenario(steps=[Pause(1500)]), edge.uri, timeout_s=20)
    assert result.returncode == 0, result.messages[-3000:]
    codes = result.received_status_codes()
    assert codes.count(200) == 2  # the INVITE's and the BYE's
    # The edge record-routes: the ACK and the BYE went back through it.
    assert f"Route: <sip:{edge.uri};lr" in result.messages
    assert sum(w.answered() for w in workers) == before + 1


def test_live_call_survives_a_takeover_attempt(box: tuple[Edge, list[Worker]]) -> None:
    edge, workers = box
    call = start_sipp(render_uac_scenario(steps=[Pause(3000)]), edge.uri, timeout_s=20)
    try:
        deadline = time.monotonic() + 10
        while sum(w.answered() for w in workers) == 0 or "ACK" not in _sent(call):
            assert time.monotonic() < deadline, "the call was not answered"
            time.sleep(0.2)
        call_id = _header(_sent(call), "Call-ID")
        takeover = (f"Replaces: {call_id};to-tag=x;from-tag=y", "Require: replaces")
        attempt = send(edge, "INVITE", 403, headers=takeover)
        assert attempt.received_status_codes() == [403]
        result = call.wait()
    finally:
        call.terminate()
    assert result.returncode == 0, result.messages[-2000:]  # BYE answered 200: still up


def _dispatcher_flags(listing: str) -> dict[str, str]:
    """``{uri: FLAGS}`` from ``kamcmd dispatcher.list`` (A active, I inactive, P probing)."""
    flags: dict[str, str] = {}
    uri = ""
    for line in listing.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "URI":
            uri = value
        elif key == "FLAGS" and uri:
            flags[uri] = value
    return flags


def _sent(call) -> str:  # noqa: ANN001 - SippProcess
    path = call.scenario_path.parent / "messages.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _header(log: str, name: str) -> str:
    for line in log.splitlines():
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} header")


def _edge_cli(edge: Edge, *args: str) -> str:
    out = subprocess.run(  # noqa: S603 - test harness, fixed argv
        [sys.executable, "-m", "appliance.cli", "edge", "--config", str(edge.config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_disabled_worker_gets_no_calls_and_rolling_restart_brings_each_back(
    box: tuple[Edge, list[Worker]],
) -> None:
    edge, (w0, w1) = box
    _edge_cli(edge, "worker", "1", "disable")
    port1 = f"sip:127.0.0.1:{edge.trunk_port - 1}"
    assert "D" in _dispatcher_flags(edge.ctl("dispatcher.list"))[port1]
    for _ in range(2):  # round-robin would give worker 1 one of these
        before = (w0.answered(), w1.answered())
        result = run_sipp(render_uac_scenario(steps=[Pause(200)]), edge.uri, timeout_s=20)
        assert result.returncode == 0, result.messages[-2000:]
        assert (w0.answered(), w1.answered()) == (before[0] + 1, before[1])
    # The rolling restart: each worker out of rotation in turn, restarted (here the command only
    # records its turn; systemctl restart on the box), then back before the next one goes.
    turns = edge.workdir / "restarted.txt"
    out = _edge_cli(
        edge,
        "restart-workers",
        "--restart-cmd",
        f"sh -c 'echo {{n}} >> {turns}'",
        "--timeout-s",
        "30",
    )
    assert turns.read_text().split() == ["0", "1"]
    assert out.splitlines() == [
        "worker 0: out of rotation, restarting",
        "worker 0: back in rotation",
        "worker 1: out of rotation, restarting",
        "worker 1: back in rotation",
    ]
    flags = _dispatcher_flags(edge.ctl("dispatcher.list"))
    assert all("A" in f and "D" not in f for f in flags.values()), flags


def test_drain_flag_fails_options_and_refuses_invites(box: tuple[Edge, list[Worker]]) -> None:
    edge, workers = box
    before = [w.answered() for w in workers]
    _edge_cli(edge, "drain", "on")
    try:
        options = send(edge, "OPTIONS", 503)
        assert options.returncode == 0, options.received_status_codes()
        assert options.received_header(503, "Retry-After") == str(EDGE_RETRY_AFTER)
        invite = run_sipp(render_uac_scenario(expect_status=503), edge.uri, timeout_s=10)
        assert invite.returncode == 0, invite.received_status_codes()
    finally:
        _edge_cli(edge, "drain", "off")
    assert send(edge, "OPTIONS", 200).returncode == 0
    assert [w.answered() for w in workers] == before


def test_kill_9_mid_call_failover_then_503_when_every_worker_is_busy_or_down(
    box: tuple[Edge, list[Worker]],
) -> None:
    edge, workers = box
    port = {w.index: edge.trunk_port - 2 + w.index for w in workers}
    # A live call; the worker carrying it is killed with SIGKILL mid-call.
    before = [w.answered() for w in workers]
    live = start_sipp(render_uac_scenario(steps=[Pause(8000)]), edge.uri, timeout_s=30)
    try:
        deadline = time.monotonic() + 10
        while [w.answered() for w in workers] == before:
            assert time.monotonic() < deadline, "the live call was not answered"
            time.sleep(0.2)
        victim = next(w for w, b in zip(workers, before, strict=True) if w.answered() > b)
        alive = next(w for w in workers if w is not victim)
        assert victim.proc is not None
        victim.proc.kill()
        victim.proc.wait(10)
    finally:
        live.terminate()  # its call is gone with the worker; the caller's BYE would time out
    # Round-robin would pick the dead worker for one of these; the edge skips it (probe) or
    # fails over to the other one (no answer within invite_timeout_s).
    for _ in range(2):
        count = alive.answered()
        result = run_sipp(render_uac_scenario(steps=[Pause(200)]), edge.uri, timeout_s=20)
        assert result.returncode == 0, result.messages[-2000:]
        assert alive.answered() == count + 1
    time.sleep(2.5)  # a probe or two: the dead worker is marked down
    flags = _dispatcher_flags(edge.ctl("dispatcher.list"))
    assert "I" in flags[f"sip:127.0.0.1:{port[victim.index]}"], flags  # inactive
    assert "A" in flags[f"sip:127.0.0.1:{port[alive.index]}"], flags  # active
    # The survivor busy with a call (max_calls 1): the next INVITE gets the edge's own 503.
    busy = start_sipp(render_uac_scenario(steps=[Pause(4000)]), edge.uri, timeout_s=20)
    try:
        deadline = time.monotonic() + 10
        while "ACK" not in _sent(busy):
            assert time.monotonic() < deadline, "the first call was not answered"
            time.sleep(0.2)
        refused = run_sipp(render_uac_scenario(expect_status=503), edge.uri, timeout_s=10)
        assert refused.returncode == 0, refused.received_status_codes()
        assert refused.received_header(503, "Retry-After") == str(EDGE_RETRY_AFTER)
        assert busy.wait().returncode == 0
    finally:
        busy.terminate()
    # Both down: the health check says so.
    assert alive.stop(timeout_s=20) == 0, alive.log()[-2000:]
    deadline = time.monotonic() + 10
    while send(edge, "OPTIONS", 503).returncode != 0:
        assert time.monotonic() < deadline, "OPTIONS still 200 with every worker down"
        time.sleep(0.5)
    refused = run_sipp(render_uac_scenario(expect_status=503), edge.uri, timeout_s=10)
    assert refused.returncode == 0, refused.received_status_codes()


def test_each_worker_wrote_and_verifies_its_own_audit_log(
    box: tuple[Edge, list[Worker]],
) -> None:
    edge, workers = box
    for w in workers:
        assert w.proc is not None and w.proc.poll() is not None  # killed or stopped above
    audit_dir = edge.workdir / "var" / "audit"
    assert sorted(p.name for p in audit_dir.glob("audit-*.sqlite")) == [
        "audit-0.sqlite",
        "audit-1.sqlite",
    ]
    assert not (audit_dir / "audit.sqlite").exists()
    for w in workers:
        out = subprocess.run(  # noqa: S603 - test harness, fixed argv
            [
                sys.executable,
                "-m",
                "appliance.cli",
                "audit",
                "--config",
                str(edge.config),
                "--worker",
                str(w.index),
                "verify",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
