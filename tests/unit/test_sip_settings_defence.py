"""[sip] settings of the worker's defences: allowlist breadth, Timer H, RTP timeout (ADR 0018)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError


def _load(tmp_path: Path, sip: str) -> object:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f"[sip]\n{sip}\n")
    return load_settings(cfg)


@pytest.mark.parametrize(
    "peer", ["0.0.0.0/0", "::/0", "0.0.0.0/0.0.0.0"], ids=["v4-any", "v6-any", "v4-any-mask"]
)
def test_an_allowlist_of_everyone_is_refused_even_when_forced(tmp_path: Path, peer: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f'allowed_peers = ["{peer}"]\nallow_broad_peers = true')
    assert "allows every address" in str(err.value)
    assert str(tmp_path / "appliance.toml") in str(err.value)


@pytest.mark.parametrize(
    ("peer", "option"),
    [("10.0.0.0/8", "min_peer_prefix_len"), ("2001:db8::/48", "min_peer_prefix_len_v6")],
)
def test_entries_broader_than_the_minimum_are_refused(
    tmp_path: Path, peer: str, option: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f'allowed_peers = ["192.0.2.10", "{peer}"]')
    text = str(err.value)
    assert peer in text and option in text and "allow_broad_peers" in text


def test_forcing_accepts_a_broad_entry_and_it_matches(tmp_path: Path) -> None:
    s = _load(tmp_path, 'allowed_peers = ["10.0.0.0/8"]\nallow_broad_peers = true')
    assert s.sip.peer_allowed("10.200.3.4")  # type: ignore[attr-defined]
    assert not s.sip.peer_allowed("11.0.0.1")  # type: ignore[attr-defined]


def test_the_minimum_prefix_is_configurable(tmp_path: Path) -> None:
    s = _load(tmp_path, 'allowed_peers = ["10.1.0.0/16"]\nmin_peer_prefix_len = 16')
    assert s.sip.peer_allowed("10.1.255.1")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        _load(tmp_path, 'allowed_peers = ["10.1.0.0/15"]\nmin_peer_prefix_len = 16')


def test_narrow_entries_of_both_families_load(tmp_path: Path) -> None:
    s = _load(tmp_path, 'allowed_peers = ["192.0.2.0/24", "198.51.100.7", "2001:db8::/64"]')
    sip = s.sip  # type: ignore[attr-defined]
    assert sip.peer_allowed("192.0.2.200") and sip.peer_allowed("2001:db8::1")
    assert not sip.peer_allowed("2001:db8:0:1::1") and not sip.peer_allowed("198.51.100.8")


def test_timer_h_and_rtp_timeout_defaults_and_bounds(tmp_path: Path) -> None:
    s = load_settings(None)
    assert s.sip.ack_timeout_s == 32.0  # RFC 3261: 64 * T1, T1 = 500 ms
    assert s.sip.rtp_timeout_s == 60.0
    assert s.sip.allow_broad_peers is False
    assert (s.sip.min_peer_prefix_len, s.sip.min_peer_prefix_len_v6) == (24, 64)
    for bad in ("ack_timeout_s = 0", "ack_timeout_s = 65", "rtp_timeout_s = -1"):
        with pytest.raises(ConfigError):
            _load(tmp_path, bad)
    assert _load(tmp_path, "rtp_timeout_s = 0").sip.rtp_timeout_s == 0  # type: ignore[attr-defined]
