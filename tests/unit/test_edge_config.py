"""The SIP edge's configuration, and the units that run it.

``[edge]`` settings, the rendered Kamailio files (checked by ``kamailio -c`` itself), the
worker settings, and the systemd and supervisor units.

ADR 0020 (docs/decisions/0020-sip-edge-kamailio.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.app.edge import (
    address_list,
    check_config,
    dispatcher_list,
    render_config,
    render_edge,
    worker_settings,
)
from appliance.config import load_settings
from appliance.config.edge import MAX_WORKERS, EdgeSettings, default_workers
from appliance.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
needs_kamailio = pytest.mark.skipif(
    shutil.which("kamailio") is None and not Path("/usr/sbin/kamailio").exists(),
    reason="kamailio is not installed",
)


def _settings(  # noqa: ANN202 - ApplianceSettings
    tmp_path: Path, toml: str = "", peers: str = '"10.20.0.1/32", "192.0.2.0/28"'
):
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[sip]\nbind = "10.20.0.5:5060"\nallowed_peers = [{peers}]\n'
        "rtp_port = 40000\nmax_calls = 3\n"
        f'[edge]\nenabled = true\nworkers = 3\nrun_dir = "{tmp_path / "run"}"\n{toml}'
    )
    return load_settings(path)


def test_edge_is_off_by_default_and_workers_follow_the_cores() -> None:
    edge = load_settings(None).edge
    assert edge.enabled is False
    assert edge.worker_count() == default_workers()
    assert default_workers(1) == 1
    assert default_workers(2) == 1
    assert default_workers(16) == 8
    assert default_workers(256) == MAX_WORKERS


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('worker_host = "10.0.0.1"', "loopback"),
        ('bind = "nonsense"', "HOST:PORT"),
        ('tls_cert = "/etc/x.pem"', "go together"),
        ('tls_cert = "x.pem"\ntls_key = "x.key"', "absolute"),
        ("internal_port = 5071", "among the worker ports"),
        ("worker_base_port = 65000\nrtp_port_stride = 10", "rtp_port_stride"),
        ("pike_density = 0", "edge.pike_density"),
    ],
)
def test_bad_edge_settings_are_refused_with_the_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, toml)
    assert err.value.code == "config_invalid"
    assert message in err.value.message


def test_address_list_is_the_sip_allowlist(tmp_path: Path) -> None:
    text = address_list(_settings(tmp_path))
    records = [line for line in text.splitlines() if not line.startswith("#")]
    assert records == ["1 10.20.0.1 32 0", "1 192.0.2.0 28 0"]


def test_dispatcher_list_has_one_loopback_worker_per_index(tmp_path: Path) -> None:
    text = dispatcher_list(_settings(tmp_path))
    records = [line for line in text.splitlines() if not line.startswith("#")]
    assert records == [
        f"1 sip:127.0.0.1:{5070 + i} 9 0 socket=udp:127.0.0.1:5069;worker={i}" for i in range(3)
    ]


def test_rendered_config_holds_every_rule(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "retry_after_s = 41\npike_density = 12")
    text = render_config(settings, tmp_path / "out")
    # The trunk address is the only non-loopback listener; no TCP without TLS.
    listens = re.findall(r"^listen=(\S+)", text, re.M)
    assert listens == ["udp:10.20.0.5:5060", "udp:127.0.0.1:5069"]
    assert "disable_tcp=yes" in text
    assert '"reqs_density_per_unit", 12' in text
    assert f'"address_file", "{(tmp_path / "out" / "address.list").resolve()}"' in text
    route = text[text.index("request_route {") :]
    # Order: sanity, then pike, then the allowlist, then the refusals, then dialogs.
    order = [
        route.index("sanity_check()"),
        route.index("pike_check_req()"),
        route.index('allow_source_address("1")'),
        route.index('is_method("REFER|SUBSCRIBE|MESSAGE|REGISTER|PUBLISH")'),
        route.index('is_present_hf("Replaces")'),
        route.index("has_totag()"),
        route.index('ds_select_dst("1", "4")'),
    ]
    assert order == sorted(order)
    assert text.count("Retry-After: 41") >= 4
    assert "ds_next_dst()" in text and 'ds_is_active("1")' in text
    assert "@@" not in text


def test_trunk_address_cannot_be_a_worker_port(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'bind = "127.0.0.1:5071"')
    with pytest.raises(ConfigError, match="worker port"):
        render_config(settings, tmp_path)


@needs_kamailio
def test_kamailio_accepts_the_rendered_config(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'bind = "127.0.0.1:5060"')
    files = render_edge(settings, tmp_path / "out", source="appliance.toml")
    assert files.tls_config is None
    ok, output = check_config(files.config)
    assert ok, output
    assert "config file ok" in output


@needs_kamailio
def test_kamailio_refuses_a_broken_config(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'bind = "127.0.0.1:5060"')
    files = render_edge(settings, tmp_path / "out")
    files.config.write_text(files.config.read_text().replace("sanity_check()", "sanity_chek()"))
    ok, output = check_config(files.config)
    assert not ok
    assert "sanity_chek" in output


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for the TLS listener (cryptography, P-256)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


needs_tls_module = pytest.mark.skipif(
    not any(Path("/usr/lib").glob("*/kamailio/modules/tls.so")),
    reason="Kamailio's tls module is not installed (Debian: kamailio-tls-modules)",
)


@needs_kamailio
@needs_tls_module
def test_tls_listener_answers_options_with_the_real_state(tmp_path: Path) -> None:
    """A real Kamailio with the rendered TLS listener: a TLS OPTIONS gets 503 (no worker up)."""
    import socket
    import ssl
    import time

    from tests.e2e.sipp import free_udp_port

    cert, key = _self_signed(tmp_path)
    base = free_udp_port("127.0.0.1", count=4)
    settings = _settings(
        tmp_path,
        f'bind = "127.0.0.1:{base}"\ntls_port = {base + 1}\ninternal_port = {base + 2}\n'
        f'worker_base_port = {base + 3}\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        "retry_after_s = 19",
        peers='"127.0.0.1/32"',
    )
    files = render_edge(settings, tmp_path / "out")
    ok, output = check_config(files.config)
    assert ok, output
    (tmp_path / "run").mkdir()
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    log = (tmp_path / "kamailio.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-DD", "-E", "-Y", str(tmp_path / "run"), "-f", str(files.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the certificate names edge.test, we dial 127.0.0.1
        deadline = time.monotonic() + 10
        while True:
            try:
                raw = socket.create_connection(("127.0.0.1", base + 1), timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "kamailio.log").read_text()
                time.sleep(0.2)
        with context.wrap_socket(raw) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            port = tls.getsockname()[1]
            tls.sendall(
                (
                    f"OPTIONS sip:appliance@127.0.0.1:{base + 1};transport=tls SIP/2.0\r\n"
                    f"Via: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-edge-tls-1\r\n"
                    "From: <sip:probe@127.0.0.1>;tag=t1\r\nTo: <sip:appliance@127.0.0.1>\r\n"
                    "Call-ID: edge-tls-1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode()
            )
            tls.settimeout(5)
            reply = tls.recv(4096).decode(errors="replace")
        assert reply.startswith("SIP/2.0 503 "), reply
        assert "Retry-After: 19" in reply
    finally:
        proc.terminate()
        proc.wait(10)


def test_invite_rate_limit_is_rendered_before_dispatch(tmp_path: Path) -> None:
    default = render_config(_settings(tmp_path), tmp_path / "out")
    assert 'pl_check("invites", "TAILDROP", 30)' in default  # 10 a second per worker, 3 workers
    text = render_config(_settings(tmp_path, "max_invites_per_s = 7"), tmp_path / "out")
    assert 'pl_check("invites", "TAILDROP", 7)' in text
    assert '"timer_interval", 1)' in text
    route = text[text.index("request_route {") :]
    order = [
        route.index("$sht(edge=>drain) == 1) {\n        append_to_reply", route.index("INVITE")),
        route.index('pl_check("invites"'),
        route.index('ds_select_dst("1", "4")'),
    ]
    assert order == sorted(order)
    with pytest.raises(ConfigError, match="edge.max_invites_per_s"):
        _settings(tmp_path, "max_invites_per_s = -1")


@needs_kamailio
def test_kamailio_refuses_invites_over_the_rate_limit(tmp_path: Path) -> None:
    """A real Kamailio, no worker up: 3 INVITEs a second get past the limit, the rest do not.

    The ones under the limit reach dispatch and get the edge's "No Agent Available" (no worker
    up); the ones over it get "Call Rate Limit", both 503 with Retry-After. Pike is set far
    above the burst, so only pipelimit refuses.
    """
    import socket
    import time

    from tests.e2e.sipp import free_udp_port

    base = free_udp_port("127.0.0.1", count=5)  # trunk, internal, 3 workers (none started)
    settings = _settings(
        tmp_path,
        f'bind = "127.0.0.1:{base}"\ninternal_port = {base + 1}\nworker_base_port = {base + 2}\n'
        "max_invites_per_s = 3\npike_density = 1000\nretry_after_s = 19",
        peers='"127.0.0.1/32"',
    )
    files = render_edge(settings, tmp_path / "out")
    ok, output = check_config(files.config)
    assert ok, output
    (tmp_path / "run").mkdir()
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    log = (tmp_path / "kamailio.log").open("wb")
    proc = subprocess.Popen(
        [binary, "-DD", "-E", "-Y", str(tmp_path / "run"), "-f", str(files.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.5)
            port = sock.getsockname()[1]

            def invite(i: int) -> bytes:
                return (
                    f"INVITE sip:appliance@127.0.0.1:{base} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-rate-{i};rport\r\n"
                    f"From: <sip:rate@127.0.0.1>;tag=r{i}\r\nTo: <sip:appliance@127.0.0.1>\r\n"
                    f"Call-ID: edge-rate-{i}@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
                    f"Contact: <sip:rate@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode()

            deadline = time.monotonic() + 10
            while True:  # wait until Kamailio answers at all (one INVITE, then a new second)
                sock.sendto(invite(0), ("127.0.0.1", base))
                try:
                    sock.recv(4096)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, (tmp_path / "kamailio.log").read_text()
            time.sleep(1.2)
            for i in range(1, 11):
                sock.sendto(invite(i), ("127.0.0.1", base))
            replies = []
            while True:
                try:
                    replies.append(sock.recv(4096).decode(errors="replace"))
                except TimeoutError:
                    break
    finally:
        proc.terminate()
        proc.wait(10)
    finals = [r for r in replies if r.startswith("SIP/2.0 503 ")]
    limited = [r for r in finals if r.startswith("SIP/2.0 503 Call Rate Limit")]
    passed = [r for r in finals if r.startswith("SIP/2.0 503 No Agent Available")]
    assert len(finals) == 10, replies
    assert 3 <= len(passed) <= 6, finals  # 3 a second; the burst may straddle one reset
    assert len(limited) == 10 - len(passed)
    assert all("Retry-After: 19" in r for r in limited)


def test_tls_listener_is_rendered_when_configured(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'tls_cert = "/etc/edge/cert.pem"\ntls_key = "/etc/edge/key.pem"')
    files = render_edge(settings, tmp_path / "out")
    text = files.config.read_text()
    assert "listen=tls:10.20.0.5:5061" in text
    assert 'loadmodule "tls.so"' in text
    assert "disable_tcp=no" in text
    assert files.tls_config is not None
    tls = files.tls_config.read_text()
    assert "method = TLSv1.2+" in tls
    assert "certificate = /etc/edge/cert.pem" in tls
    assert "private_key = /etc/edge/key.pem" in tls


def test_render_cli_writes_and_checks(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[edge]\nenabled = true\nworkers = 2\nrun_dir = "{tmp_path}"\n')
    args = ["--check"] if shutil.which("kamailio") else []
    out = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "edge", "--config", str(config), "render"]
        + ["--out", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "kamailio.cfg",
        "address.list",
        "dispatcher.list",
    }
    count = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "edge", "--config", str(config), "workers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert count.stdout.strip() == "2"


def test_worker_settings_split_what_has_one_writer(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    one = worker_settings(settings, 1)
    assert one.sip.bind == "127.0.0.1:5071"
    assert one.sip.allowed_peers == ["127.0.0.1/32"]  # the edge only
    assert one.sip.rtp_port == 40100
    assert one.sip.max_calls == 3
    assert one.audit.db.name == "audit-1.sqlite"
    assert one.audit.db.parent == settings.audit.db.parent
    assert one.audit.checkpoint_file.name == "checkpoints-1.log"
    assert one.audit.origin == f"{settings.audit.origin}/worker-1"
    assert one.audit.kek_file == settings.audit.kek_file  # the same keys
    assert one.audit.signing_key_file == settings.audit.signing_key_file
    assert one.admin.control_socket.name == "control-1.sock"
    assert one.store.metadata_db == settings.store.metadata_db  # shared (WAL)
    zero = worker_settings(settings, 0)
    assert zero.audit.db != one.audit.db and zero.sip.bind != one.sip.bind
    with pytest.raises(ConfigError, match="worker 3 outside 0..2"):
        worker_settings(settings, 3)


def test_worker_max_calls_is_capped_at_three(tmp_path: Path) -> None:
    settings = _settings(tmp_path).model_copy()
    four = settings.model_copy(update={"sip": settings.sip.model_copy(update={"max_calls": 4})})
    assert worker_settings(four, 0).sip.max_calls == 3


def test_edge_settings_are_frozen() -> None:
    with pytest.raises(ValueError):
        EdgeSettings().workers = 4  # type: ignore[misc]


def _unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_worker_template_unit_keeps_the_agent_hardening() -> None:
    agent = _unit(REPO / "systemd" / "appliance-agent.service")
    worker = _unit(REPO / "systemd" / "appliance-agent@.service")
    assert any("--worker %i" in v for v in worker["ExecStart"])
    for key, values in agent.items():
        if key in ("ExecStart", "Description", "Documentation"):
            continue
        assert worker.get(key) == values, key


def test_edge_unit_renders_then_runs_kamailio() -> None:
    unit = _unit(REPO / "systemd" / "appliance-edge.service")
    assert any("edge --config" in v and "render" in v for v in unit["ExecStartPre"])
    assert any(v.split()[0].endswith("kamailio") and "-DD" in v for v in unit["ExecStart"])
    assert unit["NoNewPrivileges"] == ["yes"]


def test_supervisor_edge_config_starts_n_workers(tmp_path: Path) -> None:
    from supervisor.options import ServerOptions

    env = {
        "APPLIANCE_VENV": str(tmp_path / "venv"),
        "APPLIANCE_CONFIG": str(tmp_path / "appliance.toml"),
        "APPLIANCE_VAR": str(tmp_path),
        "APPLIANCE_EDGE_DIR": str(tmp_path / "edge"),
        "APPLIANCE_WORKERS": "3",
    }
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        options = ServerOptions()
        options.configfile = str(REPO / "systemd" / "supervisord-edge.conf")
        options.process_config(do_usage=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    groups = {g.name: g for g in options.process_group_configs}
    workers = groups["appliance-worker"].process_configs
    assert [p.name for p in workers] == [f"appliance-worker-{i}" for i in range(3)]
    assert workers[2].command.endswith(" 2")
    assert '--worker "$2"' in workers[2].command
    assert "appliance-edge" in groups


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", ["appliance-edge.service", "appliance-agent@.service"])
def test_edge_units_security_exposure(unit: str) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(REPO / "systemd" / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert match, out.stdout[-1000:] + out.stderr[-1000:]
    assert float(match.group(1)) <= 2.5, f"{unit} exposure {match.group(1)}"


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "edge", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_worker_control_refuses_a_bad_index_before_any_rpc(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[edge]\nworkers = 2\nrun_dir = "{tmp_path}"\n')
    out = _cli(config, "worker", "2", "disable")
    assert out.returncode == 2
    assert "worker 2 outside 0..1" in out.stderr


@pytest.mark.skipif(shutil.which("kamcmd") is None, reason="kamcmd is not installed")
def test_control_without_a_running_edge_fails_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[edge]\nworkers = 2\nrun_dir = "{tmp_path}"\n')
    out = _cli(config, "drain", "on")
    assert out.returncode == 1
    assert "edge_rpc" in out.stderr and str(tmp_path / "kamailio.ctl") in out.stderr
    assert "Traceback" not in out.stderr
