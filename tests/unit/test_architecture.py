"""The module map's import rules (shared/ARCHITECTURE.md section 4), enforced by import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists() and shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (test extra)")
    out = subprocess.run(
        [str(exe) if exe.exists() else "lint-imports"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
    assert "0 broken" in out.stdout
