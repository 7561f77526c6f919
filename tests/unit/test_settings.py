"""Settings: development defaults, clear errors naming the file, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import load_settings, settings_files
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


# --- drop-ins: <file>.d/*.toml merged over the file, by name, key by key ----------------------


def _base(tmp_path: Path) -> Path:
    f = tmp_path / "appliance.toml"
    f.write_text(
        '[sip]\nbind = "0.0.0.0:5060"\nallowed_peers = ["192.0.2.1/32"]\nmax_calls = 1\n'
        '\n[clinic]\nname = "Base Clinic"\n'
    )
    (tmp_path / "appliance.toml.d").mkdir()
    return f


def test_dropins_merge_in_file_name_order(tmp_path: Path) -> None:
    f = _base(tmp_path)
    d = tmp_path / "appliance.toml.d"
    (d / "20-late.toml").write_text("[sip]\nmax_calls = 3\n")
    (d / "10-early.toml").write_text("[sip]\nmax_calls = 2\nretry_after_s = 7\n")
    # Not drop-ins: hidden (a writer's temporary file), another suffix, a directory.
    (d / ".30-tmp.toml").write_text("[sip]\nmax_calls = 4\n")
    (d / "40-notes.conf").write_text("[sip]\nmax_calls = 4\n")
    (d / "50-dir.toml").mkdir()
    s = load_settings(f)
    assert s.sip.max_calls == 3  # 20-late.toml is read after 10-early.toml
    assert s.sip.retry_after_s == 7  # a key only the earlier drop-in sets survives
    assert settings_files(f) == [f, d / "10-early.toml", d / "20-late.toml"]


def test_dropin_overrides_one_key_only(tmp_path: Path) -> None:
    f = _base(tmp_path)
    (tmp_path / "appliance.toml.d" / "10-firstboot.toml").write_text(
        '[sip]\nallowed_peers = ["198.51.100.7/32"]\n'
    )
    s = load_settings(f)
    assert s.sip.allowed_peers == ["198.51.100.7/32"]
    assert (s.sip.bind, s.sip.max_calls, s.clinic.name) == ("0.0.0.0:5060", 1, "Base Clinic")
    # A section only a drop-in has is added; relative paths still resolve against the base.
    (tmp_path / "appliance.toml.d" / "20-store.toml").write_text('[store]\nmetadata_db = "c.db"\n')
    assert load_settings(f).store.metadata_db == (tmp_path / "c.db").resolve()


def test_corrupt_dropin_is_refused_with_its_name(tmp_path: Path) -> None:
    f = _base(tmp_path)
    bad = tmp_path / "appliance.toml.d" / "10-firstboot.toml"
    bad.write_text("[sip\nmax_calls = ")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.code == "config_corrupt"
    assert str(bad) in err.value.message

    bad.write_bytes(b'[clinic]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.code == "config_corrupt" and str(bad) in err.value.message


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("[sip]\nmax_calls = 9", "sip.max_calls"),
        ('[sip]\nallowed_peers = ["300.1.1.1"]', "sip.allowed_peers"),
        ("[sip]\nunknown_key = 1", "sip.unknown_key"),
        ("[nonsense]\nx = 1", "nonsense"),
        ("sip = 3", "sip"),
    ],
)
def test_invalid_dropin_names_the_dropin_and_key(tmp_path: Path, body: str, where: str) -> None:
    f = _base(tmp_path)
    bad = tmp_path / "appliance.toml.d" / "50-site.toml"
    bad.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.code == "config_invalid"
    assert err.value.message.startswith(f"{bad}: {where}")


def test_invalid_base_key_is_blamed_on_the_base_not_a_dropin(tmp_path: Path) -> None:
    f = _base(tmp_path)
    f.write_text(f.read_text().replace("max_calls = 1", "max_calls = 0"))
    (tmp_path / "appliance.toml.d" / "10-firstboot.toml").write_text("[sip]\nretry_after_s = 5\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.message.startswith(f"{f}: sip.max_calls")
    # The same key set again by a drop-in: the drop-in's value is the one validated and blamed.
    (tmp_path / "appliance.toml.d" / "20-fix.toml").write_text("[sip]\nmax_calls = 2\n")
    assert load_settings(f).sip.max_calls == 2


def test_pending_text_is_validated_as_if_written(tmp_path: Path) -> None:
    f = _base(tmp_path)
    new = tmp_path / "appliance.toml.d" / "10-firstboot.toml"
    assert load_settings(f, pending={new: "[sip]\nmax_calls = 3\n"}).sip.max_calls == 3
    with pytest.raises(ConfigError) as err:
        load_settings(f, pending={new: "[sip]\nmax_calls = 9\n"})
    assert err.value.message.startswith(f"{new}: sip.max_calls")
    assert not new.exists()


def test_unlistable_dropin_directory_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "appliance.toml"
    f.write_text("")
    (tmp_path / "appliance.toml.d").write_text("a file, not a directory")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert err.value.code == "config_unreadable"
    assert "appliance.toml.d" in err.value.message
