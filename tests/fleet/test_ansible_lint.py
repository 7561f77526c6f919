"""The fleet collection is ansible-lint clean (production profile) and its playbooks parse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COLLECTION = Path(__file__).resolve().parents[2] / "ansible"
BIN = Path(sys.executable).parent


def _env(tmp_path: Path) -> dict[str, str]:
    """An environment where ``clinicvoice.appliance`` resolves to the working tree."""
    link = tmp_path / "collections" / "ansible_collections" / "clinicvoice" / "appliance"
    link.parent.mkdir(parents=True)
    link.symlink_to(COLLECTION)
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "collections"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
    }


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (pip install -e '.[test]')")
    return str(path)


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    out = subprocess.run(
        [_tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=COLLECTION,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in out.stdout + out.stderr


@pytest.mark.parametrize(
    "playbook", sorted(p.name for p in (COLLECTION / "playbooks").glob("*.yml"))
)
def test_playbook_syntax(tmp_path: Path, playbook: str) -> None:
    out = subprocess.run(
        [
            _tool("ansible-playbook"),
            "-i",
            str(COLLECTION / "inventory" / "example"),
            "--syntax-check",
            str(COLLECTION / "playbooks" / playbook),
        ],
        cwd=COLLECTION,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_role_has_typed_argument_specs() -> None:
    import yaml

    roles = sorted(p for p in (COLLECTION / "roles").iterdir() if p.is_dir())
    assert {r.name for r in roles} >= {
        "appliance",
        "models",
        "config",
        "key_rotation",
        "checkpoints",
    }
    for role in roles:
        assert (role / "defaults" / "main.yml").exists(), role
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        options = specs["argument_specs"]["main"]["options"]
        defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
        for name, spec in options.items():
            assert spec.get("type"), f"{role.name}: {name} has no type"
            assert spec.get("description"), f"{role.name}: {name} has no description"
        untyped = set(defaults) - set(options)
        assert not untyped, f"{role.name}: untyped defaults {untyped}"
