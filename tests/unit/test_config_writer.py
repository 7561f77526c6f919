"""The admin page's settings writer on real files: merge, refusal, restart, history, rollback."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from appliance.admin.config_writer import (
    DROPIN_NAME,
    apply_change,
    dropin_path,
    history,
    previous_text,
    restart_needed,
    rollback,
)
from appliance.config.settings import dropin_dir, load_settings
from appliance.errors import ConfigError

BASE = """\
[sip]
bind = "127.0.0.1:5060"
allowed_peers = ["127.0.0.1/32"]

[clinic]
name = "Base Clinic"

[transfer]
target = ""
"""

FIRSTBOOT = """\
# written by appliance firstboot
[sip]
allowed_peers = ["10.0.0.5/32"]

[clinic]
name = "Firstboot Clinic"
"""


@pytest.fixture
def settings_path(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(BASE, encoding="utf-8")
    dropins = dropin_dir(path)
    dropins.mkdir()
    (dropins / "10-firstboot.toml").write_text(FIRSTBOOT, encoding="utf-8")
    return path


def read_dropin(settings_path: Path) -> dict[str, object]:
    return tomllib.loads(dropin_path(settings_path).read_text(encoding="utf-8"))


def test_change_creates_the_dropin_and_wins_over_firstboot(settings_path: Path) -> None:
    settings, changed = apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})

    assert settings.clinic.name == "Oak Clinic"
    assert changed == ["clinic.name"]
    assert read_dropin(settings_path) == {"clinic": {"name": "Oak Clinic"}}
    assert load_settings(settings_path).clinic.name == "Oak Clinic"
    # First boot's other key still applies.
    assert settings.sip.allowed_peers == ["10.0.0.5/32"]
    mode = stat.S_IMODE(dropin_path(settings_path).stat().st_mode)
    assert mode == 0o640


def test_merge_keeps_other_keys_and_comments(settings_path: Path) -> None:
    path = dropin_path(settings_path)
    path.write_text('# kept comment\n[clinic]\nname = "Oak Clinic"\n', encoding="utf-8")

    settings, changed = apply_change(
        settings_path, {"transfer": {"target": "sip:desk@10.0.0.9"}, "clinic": {}}
    )

    text = path.read_text(encoding="utf-8")
    assert "# kept comment" in text
    assert tomllib.loads(text) == {
        "clinic": {"name": "Oak Clinic"},
        "transfer": {"target": "sip:desk@10.0.0.9"},
    }
    assert settings.transfer.target == "sip:desk@10.0.0.9"
    assert settings.clinic.name == "Oak Clinic"
    assert changed == ["transfer.target"]


def test_unchanged_value_is_not_reported(settings_path: Path) -> None:
    apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})
    _, changed = apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})
    assert changed == []
    assert len(history(settings_path)) == 1


@pytest.mark.parametrize(
    ("updates", "needle"),
    [
        ({"sip": {"allowed_peers": ["not-an-ip"]}}, "sip.allowed_peers"),
        ({"sip": {"bind": "nohostport"}}, "sip.bind"),
        ({"transfer": {"mode": "sideways"}}, "transfer.mode"),
        ({"clinic": {"no_such_key": "x"}}, "clinic.no_such_key"),
        ({"nosection": {"x": 1}}, "nosection"),
        ({"sip": {"max_calls": 99}}, "sip.max_calls"),
        ({"clinic": {"name": {"nested": 1}}}, "clinic.name"),
        ({"Bad Section": {"x": 1}}, "Bad Section"),
    ],
)
def test_invalid_change_is_refused_and_nothing_written(
    settings_path: Path, updates: dict[str, dict[str, object]], needle: str
) -> None:
    apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})
    before = dropin_path(settings_path).read_bytes()
    kept = history(settings_path)

    with pytest.raises(ConfigError) as caught:
        apply_change(settings_path, updates)

    assert needle in caught.value.message
    assert dropin_path(settings_path).read_bytes() == before
    assert history(settings_path) == kept
    # No temporary file is left behind.
    leftovers = [p.name for p in dropin_dir(settings_path).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_invalid_first_change_creates_no_file(settings_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"60-admin\.toml: sip\.allowed_peers"):
        apply_change(settings_path, {"sip": {"allowed_peers": ["10.0.0.300/32"]}})
    assert not dropin_path(settings_path).exists()


def test_none_removes_the_key_so_lower_layers_apply(settings_path: Path) -> None:
    apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})
    settings, changed = apply_change(settings_path, {"clinic": {"name": None}})
    assert settings.clinic.name == "Firstboot Clinic"
    assert changed == ["clinic.name"]
    assert read_dropin(settings_path) == {}


def test_paths_are_written_as_strings(settings_path: Path, tmp_path: Path) -> None:
    kb = tmp_path / "kb.yaml"
    settings, _ = apply_change(settings_path, {"agent": {"knowledge_file": kb}})
    assert settings.agent.knowledge_file == kb
    assert read_dropin(settings_path) == {"agent": {"knowledge_file": str(kb)}}


def test_restart_needed() -> None:
    assert restart_needed(["sip.bind"])
    assert restart_needed(["clinic.name", "sip.allowed_peers"])
    assert restart_needed(["models.llm"])
    assert not restart_needed(["clinic.name", "transfer.target", "agent.disclosure"])
    assert not restart_needed([])
    assert not restart_needed(["sipx.bind"])


def test_sip_change_reports_restart(settings_path: Path) -> None:
    _, changed = apply_change(
        settings_path, {"sip": {"bind": "0.0.0.0:5060", "allowed_peers": ["10.0.0.5/32"]}}
    )
    # allowed_peers already had that value through first boot's drop-in.
    assert changed == ["sip.bind"]
    assert restart_needed(changed)


def test_history_and_rollback(settings_path: Path) -> None:
    assert previous_text(settings_path) is None
    with pytest.raises(ConfigError, match="no earlier version"):
        rollback(settings_path)

    apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})
    first = dropin_path(settings_path).read_text(encoding="utf-8")
    apply_change(settings_path, {"clinic": {"name": "Elm Clinic"}, "transfer": {"target": "x"}})

    assert previous_text(settings_path) == first
    assert [e.seq for e in history(settings_path)] == [2, 1]
    assert history(settings_path)[-1].text == ""

    settings, changed = rollback(settings_path)
    assert settings.clinic.name == "Oak Clinic"
    assert settings.transfer.target == ""
    assert sorted(changed) == ["clinic.name", "transfer.target"]
    assert dropin_path(settings_path).read_text(encoding="utf-8") == first

    # One step further: before the first change the drop-in did not exist.
    settings, changed = rollback(settings_path)
    assert not dropin_path(settings_path).exists()
    assert settings.clinic.name == "Firstboot Clinic"
    assert changed == ["clinic.name"]
    assert previous_text(settings_path) is None


def test_rollback_refused_when_old_text_no_longer_validates(settings_path: Path) -> None:
    apply_change(settings_path, {"sip": {"max_calls": 3}})
    apply_change(settings_path, {"sip": {"max_calls": 2}})
    # The history's text (max_calls = 3) is fine; break it by hand to stand for a version that
    # today's loader refuses.
    hist = history(settings_path)[0]
    (
        dropin_dir(settings_path) / ".admin-history" / f"{DROPIN_NAME}.{hist.seq:06d}.prev"
    ).write_text("[sip]\nmax_calls = 42\n", encoding="utf-8")
    before = dropin_path(settings_path).read_bytes()
    with pytest.raises(ConfigError, match="sip.max_calls"):
        rollback(settings_path)
    assert dropin_path(settings_path).read_bytes() == before
    assert len(history(settings_path)) == 2


def test_history_files_are_ignored_by_the_loader(settings_path: Path) -> None:
    apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})
    apply_change(settings_path, {"clinic": {"name": "Elm Clinic"}})
    assert load_settings(settings_path).clinic.name == "Elm Clinic"


def test_corrupt_existing_dropin_is_reported(settings_path: Path) -> None:
    dropin_path(settings_path).write_text("[clinic\nname=", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        apply_change(settings_path, {"clinic": {"name": "Oak Clinic"}})
    assert caught.value.code == "config_corrupt"


def test_bad_dropin_name_is_refused(settings_path: Path) -> None:
    with pytest.raises(ConfigError):
        apply_change(settings_path, {"clinic": {"name": "x"}}, dropin_name="../evil.toml")


@pytest.mark.parametrize(
    "text",
    ["Hello, you've reached {clinic}. How can I help?", "", "Welcome to the air clinic." * 2],
)
def test_disclosure_without_an_ai_statement_is_refused(settings_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"agent\.disclosure: .*automated system"):
        apply_change(settings_path, {"agent": {"disclosure": text}})
    assert not dropin_path(settings_path).exists()


def test_overlong_disclosure_is_refused(settings_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.disclosure: .*at most 400"):
        apply_change(settings_path, {"agent": {"disclosure": "I am an AI. " + "x" * 400}})


@pytest.mark.parametrize(
    "text",
    [
        "Hi, this is {clinic}'s AI receptionist.",
        "You are speaking with an automated assistant.",
        "I'm a virtual assistant for {clinic}.",
    ],
)
def test_disclosure_with_an_ai_statement_is_accepted(settings_path: Path, text: str) -> None:
    settings, changed = apply_change(settings_path, {"agent": {"disclosure": text}})
    assert settings.agent.disclosure == text
    assert changed == ["agent.disclosure"]
