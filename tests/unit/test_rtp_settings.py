"""``[sip] rtp_address``, ``rtp_public_address`` and the RTP port range (issue 13).

Covers the settings' validation and defaults, the route lookup that picks the RTP address for a
wildcard SIP bind (checked against ``ip route get``, the kernel's own answer), the pjsua2 account
configuration built from them, and the edge workers' RTP address and port ranges.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.app.edge import worker_settings
from appliance.config.settings import (
    ApplianceSettings,
    SipSettings,
    load_settings,
    route_source_address,
)
from appliance.errors import ConfigError


def _kernel_source(target: str) -> str:
    """The ``src`` the kernel picks for ``target`` (``ip route get``), an independent oracle."""
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("iproute2 is not installed")
    out = subprocess.run(  # noqa: S603 - fixed argv
        [ip, "route", "get", target], capture_output=True, text=True, check=True, timeout=5
    ).stdout.split()
    return out[out.index("src") + 1]


def test_defaults_bind_rtp_to_the_sip_host_with_a_thousand_ports() -> None:
    sip = SipSettings(bind="127.0.0.5:5070")
    assert sip.rtp_address == ""
    assert sip.rtp_public_address == ""
    assert sip.rtp_bind_address() == "127.0.0.5"
    assert sip.rtp_port_count == 1000


def test_port_range_is_capped_at_65535_and_follows_rtp_port_max() -> None:
    assert SipSettings(rtp_port=65000).rtp_port_count == 536
    assert SipSettings(rtp_port=40000, rtp_port_max=40099).rtp_port_count == 100


def test_explicit_rtp_address_wins_over_the_sip_host() -> None:
    sip = SipSettings(bind="127.0.0.1:5060", rtp_address="127.0.0.5")
    assert sip.rtp_bind_address() == "127.0.0.5"
    assert sip.rtp_bind_address("192.0.2.10") == "127.0.0.5"


def test_explicit_wildcard_is_accepted_as_written() -> None:
    # Discouraged, but an operator may ask for it; it is never the default.
    assert SipSettings(rtp_address="0.0.0.0").rtp_bind_address() == "0.0.0.0"  # noqa: S104


def test_ipv6_addresses_are_normalised() -> None:
    sip = SipSettings(rtp_address="[::1]", rtp_public_address="2001:DB8::7")
    assert sip.rtp_address == "::1"
    assert sip.rtp_public_address == "2001:db8::7"


@pytest.mark.parametrize(
    ("peer", "target"),
    [("127.0.0.9/32", "127.0.0.9"), ("10.20.30.0/24", "10.20.30.1")],
)
def test_wildcard_bind_routes_towards_the_first_peer(peer: str, target: str) -> None:
    sip = SipSettings(bind="0.0.0.0:5060", allowed_peers=[peer])  # noqa: S104
    address = sip.rtp_bind_address()
    assert address == _kernel_source(target)
    assert address != "0.0.0.0"  # noqa: S104


def test_no_trunk_yet_binds_rtp_to_loopback() -> None:
    """A fresh image before its trunk file: no peer, every INVITE gets 403; the agent runs."""
    assert SipSettings(bind="0.0.0.0:5060", allowed_peers=[]).rtp_bind_address() == "127.0.0.1"  # noqa: S104
    assert SipSettings(bind="[::]:5060", allowed_peers=[]).rtp_bind_address() == "::1"


def test_route_lookup_skips_an_unroutable_peer_then_fails_clearly() -> None:
    # A UDP connect to the limited broadcast address fails (EACCES without SO_BROADCAST).
    assert route_source_address(["255.255.255.255/32", "127.0.0.9/32"]) == _kernel_source(
        "127.0.0.9"
    )
    with pytest.raises(ConfigError) as err:
        route_source_address(["255.255.255.255/32"])
    assert err.value.code == "config_invalid"
    assert "set [sip] rtp_address" in err.value.message
    assert "255.255.255.255" in err.value.message


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"rtp_address": "eth0"}, "rtp_address must be an IPv4 or IPv6 address"),
        ({"rtp_address": "lan.example"}, "rtp_address must be an IPv4 or IPv6 address"),
        ({"rtp_public_address": "pbx.example"}, "rtp_public_address must be an IPv4 or IPv6"),
        ({"rtp_public_address": "0.0.0.0"}, "not an address a far end can send RTP to"),  # noqa: S104
        ({"rtp_public_address": "::"}, "not an address a far end can send RTP to"),
        ({"rtp_public_address": "239.1.1.1"}, "not an address a far end can send RTP to"),
        ({"rtp_address": "127.0.0.5", "rtp_public_address": "2001:db8::1"}, "is IPv6 but"),
        ({"bind": "[::1]:5060", "rtp_public_address": "192.0.2.7"}, "but bind '::1' is IPv6"),
        ({"rtp_port": 40000, "rtp_port_max": 40006}, "leaves 7 RTP ports"),
        ({"rtp_port": 40000, "rtp_port_max": 39000}, "leaves 0 RTP ports"),
    ],
)
def test_bad_rtp_settings_are_refused_with_a_clear_message(
    fields: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValueError, match="rtp") as err:
        SipSettings.model_validate(fields)
    assert fragment in str(err.value)


def test_a_bad_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text('[sip]\nrtp_public_address = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.code == "config_invalid"
    assert err.value.message.startswith(f"{path}: sip.rtp_public_address: ")


#: Builds pjsua2 account configurations in a child process: ``pj.AccountConfig()`` needs a
#: created library (``libCreate``), and pjsua2's endpoint is a process-wide singleton that must
#: not outlive a test inside the pytest process.
_ACCOUNT_PROBE = """
import json, sys
import pjsua2 as pj
from appliance.config.settings import SipSettings
from appliance.errors import MediaError
from appliance.media.endpoint import account_config
ep = pj.Endpoint()
ep.libCreate()
out = []
for fields in json.loads(sys.argv[1]):
    try:
        acfg = account_config(SipSettings.model_validate(fields))  # owns transportConfig
        t = acfg.mediaConfig.transportConfig
        out.append([t.boundAddress, t.publicAddress, t.port, t.portRange])
        del t, acfg  # no pjsua2 object may outlive libDestroy() (ADR 0010)
    except MediaError as exc:
        out.append(exc.code)
ep.libDestroy()
print(json.dumps(out))
"""


def _account_transport(*settings: dict[str, object]) -> list[object]:
    proc = subprocess.run(  # noqa: S603 - fixed argv, our own probe
        [sys.executable, "-c", _ACCOUNT_PROBE, json.dumps(settings)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_account_config_binds_and_advertises_the_configured_addresses() -> None:
    configured = {
        "bind": "127.0.0.1:5070",
        "rtp_port": 46000,
        "rtp_port_max": 46099,
        "rtp_address": "127.0.0.5",
        "rtp_public_address": "127.0.0.6",
    }
    unresolvable = {"bind": "0.0.0.0:5060", "allowed_peers": ["255.255.255.255/32"]}  # noqa: S104
    assert _account_transport(configured, {"bind": "127.0.0.3:5070"}, unresolvable) == [
        ["127.0.0.5", "127.0.0.6", 46000, 100],
        ["127.0.0.3", "", 40000, 1000],
        "rtp_address_unresolved",
    ]


def _edge(**sip: object) -> ApplianceSettings:
    return ApplianceSettings.model_validate(
        {
            "sip": {"bind": "192.0.2.10:5060", "rtp_port": 40000, **sip},
            "edge": {"enabled": True, "workers": 3, "rtp_port_stride": 100},
        }
    )


def test_edge_workers_bind_rtp_on_the_trunk_address_in_disjoint_ranges() -> None:
    box = _edge()
    ranges = []
    for n in range(3):
        sip = worker_settings(box, n).sip
        assert sip.host == "127.0.0.1"  # SIP stays on loopback behind the edge
        assert sip.rtp_bind_address() == "192.0.2.10"  # RTP faces the trunk
        assert sip.rtp_public_address == ""
        ranges.append(range(sip.rtp_port, sip.rtp_port + sip.rtp_port_count))
    assert [(r.start, r.stop - 1) for r in ranges] == [
        (40000, 40099),
        (40100, 40199),
        (40200, 40299),
    ]


def test_edge_workers_keep_an_explicit_rtp_address_and_public_address() -> None:
    box = _edge(rtp_address="192.0.2.11", rtp_public_address="203.0.113.7")
    sip = worker_settings(box, 1).sip
    assert (sip.rtp_bind_address(), sip.rtp_public_address) == ("192.0.2.11", "203.0.113.7")


def test_edge_on_a_wildcard_trunk_routes_workers_rtp_towards_the_trunk() -> None:
    box = ApplianceSettings.model_validate(
        {
            "sip": {"bind": "0.0.0.0:5060", "allowed_peers": ["10.20.30.40/32"]},  # noqa: S104
            "edge": {"enabled": True, "workers": 2},
        }
    )
    assert worker_settings(box, 0).sip.rtp_address == _kernel_source("10.20.30.40")


def test_edge_worker_ranges_must_fit_below_rtp_port_max() -> None:
    with pytest.raises(ValueError, match=r"need RTP ports up to 40299, past 40199"):
        _edge(rtp_port_max=40199)
    assert _edge(rtp_port_max=40299).sip.rtp_port_max == 40299
