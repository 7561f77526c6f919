"""Settings: development defaults, clear errors naming the file, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError


def test_defaults_bind_and_allow_only_loopback() -> None:
    s = load_settings(None)
    assert s.sip.bind == "127.0.0.1:5060"
    assert s.sip.peer_allowed("127.0.0.1")
    assert not s.sip.peer_allowed("127.0.0.2")
    assert not s.sip.peer_allowed("10.0.0.5")
    assert not s.sip.peer_allowed("not-an-ip")


def test_repo_config_is_valid() -> None:
    repo = Path(__file__).resolve().parents[2]
    s = load_settings(repo / "config" / "appliance.toml")
    assert s.sip.host == "127.0.0.1"
    assert s.models.store == (repo / "models" / "store").resolve()


def test_corrupt_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[sip\nbind = ")
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    assert err.value.code == "config_corrupt"
    assert str(bad) in err.value.message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "absent.toml")
    assert "absent.toml" in err.value.message


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('[sip]\nbind = "nonsense"', "sip.bind"),
        ('[sip]\ncodecs = ["G729/8000"]', "sip.codecs"),
        ("[sip]\nmax_calls = 9", "sip.max_calls"),
        ('[sip]\nallowed_peers = ["300.1.1.1"]', "sip.allowed_peers"),
        ("[sip]\nunknown_key = 1", "sip.unknown_key"),
    ],
)
def test_invalid_values_name_file_and_key(tmp_path: Path, body: str, where: str) -> None:
    f = tmp_path / "appliance.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.code == "config_invalid"
    assert str(f) in err.value.message and where in err.value.message


def test_cli_override_of_sip_bind(tmp_path: Path) -> None:
    s = load_settings(None, sip__bind="127.0.0.1:5099")
    assert (s.sip.host, s.sip.port) == ("127.0.0.1", 5099)


def test_cidr_allowlist(tmp_path: Path) -> None:
    f = tmp_path / "appliance.toml"
    f.write_text('[sip]\nallowed_peers = ["192.0.2.0/24", "::1"]\n')
    s = load_settings(f)
    assert s.sip.peer_allowed("192.0.2.77") and s.sip.peer_allowed("::1")
    assert not s.sip.peer_allowed("192.0.3.1")
