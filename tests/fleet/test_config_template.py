"""The fleet's appliance.toml: Ansible renders the config role's template, the appliance loads it.

Rendered by Ansible itself (the `template` module on localhost, with the role's defaults as
variables), so the filters and conditionals are the ones the fleet runs; loaded by the
appliance's own settings loader, so a key the template spells wrong or a value out of range
fails here and not on a box at 2 a.m.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_settings

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible/roles/config"


def render(tmp_path: Path, extra: dict[str, object]) -> Path:
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.exists() and shutil.which("ansible") is None:
        pytest.skip("ansible-core is not installed (./build.sh setup installs it)")
    dest = tmp_path / "appliance.toml"
    out = subprocess.run(
        [
            str(ansible if ansible.exists() else "ansible"),
            "localhost", "-c", "local", "-i", "localhost,",
            "-e", f"ansible_python_interpreter={sys.executable}",
            "-m", "ansible.builtin.template",
            "-a", f"src={ROLE / 'templates/appliance.toml.j2'} dest={dest}",
            "-e", f"@{ROLE / 'defaults/main.yml'}",
            "-e", json.dumps(extra),
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return dest


def test_the_role_defaults_render_to_settings_the_appliance_accepts(tmp_path: Path) -> None:
    settings = load_settings(render(tmp_path, {"config_trunk_peers": ["192.0.2.10/32"]}))
    audit = settings.audit
    assert audit.create_keys is False
    assert audit.consent_retention_days == 2557
    assert (audit.checkpoint_interval_s, audit.checkpoint_max_age_s) == (300, 3600)
    assert audit.witness_url == ""
    assert "witness_url" not in (tmp_path / "appliance.toml").read_text()


def test_a_witness_and_tighter_checkpoints_reach_the_box(tmp_path: Path) -> None:
    url = "https://witness.clinic.lan/checkpoints"
    settings = load_settings(
        render(
            tmp_path,
            {
                "config_trunk_peers": ["192.0.2.10/32"],
                "config_audit_witness_url": url,
                "config_audit_checkpoint_interval_s": 60,
                "config_audit_checkpoint_max_age_s": 600,
            },
        )
    )
    assert settings.audit.witness_url == url
    assert (settings.audit.checkpoint_interval_s, settings.audit.checkpoint_max_age_s) == (60, 600)


def test_a_max_age_under_twice_the_interval_is_refused_by_the_loader(tmp_path: Path) -> None:
    """The template does not hide a bad value: the settings loader refuses it, naming the rule."""
    path = render(
        tmp_path,
        {
            "config_trunk_peers": ["192.0.2.10/32"],
            "config_audit_checkpoint_interval_s": 600,
            "config_audit_checkpoint_max_age_s": 900,
        },
    )
    with pytest.raises(Exception, match="twice checkpoint_interval_s"):
        load_settings(path)
