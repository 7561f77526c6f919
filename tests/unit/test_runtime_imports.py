"""Every runtime module imports with the runtime dependencies alone (no ``test`` extra).

The production image installs ``[project] dependencies`` of pyproject.toml and nothing of the
``test`` extra. This test imports every module under ``src/appliance`` in a fresh interpreter
in which the top-level import names that only the ``test`` extra provides raise
``ModuleNotFoundError``, so a runtime module that imports ``dpkt``, ``jiwer``, ``pytest`` (or
anything else only the tests need) fails here rather than on the appliance.

Blocked names: the top-level import names of every distribution reachable from the ``test``
extra (its requirements and theirs, per ``importlib.metadata.requires``), less those of every
distribution reachable from the runtime ``dependencies``: ``rapidfuzz`` comes with ``jiwer``
but is a runtime dependency too, so it stays importable.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
SRC = REPO / "src"


def _canon(name: str) -> str:
    """PEP 503 normalised distribution name (``Import_Linter`` -> ``import-linter``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: Iterable[str], *, strict: bool) -> set[str]:
    """Canonical names of the installed distributions reachable from ``roots``.

    Args:
        roots: Requirement strings (PEP 508), e.g. ``"pytest>=8"``; markers are evaluated for
            this interpreter and extras (``"pkg[extra]"``) are followed.
        strict: Raise if a root is not installed (the test extra must be installed to know
            what it provides); missing distributions further down are skipped (a marker this
            function cannot see through, or an optional dependency).

    Raises:
        AssertionError: ``strict`` and a root distribution is not installed.
    """
    visited: set[tuple[str, str]] = set()  # (distribution, extra or "" for the base)
    todo = [(Requirement(r), True) for r in roots]
    while todo:
        req, is_root = todo.pop()
        name = _canon(req.name)
        wanted = [("", {"extra": ""})] + [(e, {"extra": e}) for e in sorted(req.extras)]
        wanted = [(e, env) for e, env in wanted if (name, e) not in visited]
        if not wanted:
            continue
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            assert not (strict and is_root), f"{req.name} (from pyproject.toml) is not installed"
            continue
        for extra, env in wanted:
            visited.add((name, extra))
            for spec in requires:
                sub = Requirement(spec)
                if sub.marker is None or sub.marker.evaluate(env):
                    todo.append((sub, False))
    return {name for name, _ in visited}


def _applicable(reqs: Iterable[str]) -> list[str]:
    """The requirement strings whose environment marker holds on this interpreter."""
    out = []
    for r in reqs:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(r)
    return out


def blocked_top_level_names() -> set[str]:
    """Top-level import names provided only by the ``test`` extra's distribution tree.

    Raises:
        AssertionError: pyproject.toml has no ``test`` extra, a test-extra distribution is not
            installed, or one maps to no top-level import name (the block would be hollow).
    """
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    test_extra = _applicable(project["optional-dependencies"]["test"])
    assert test_extra, "pyproject.toml has no [project.optional-dependencies] test"
    runtime = _applicable(project["dependencies"])

    tops_of: dict[str, set[str]] = {}
    for top, dists in md.packages_distributions().items():
        for dist in dists:
            tops_of.setdefault(_canon(dist), set()).add(top)

    for r in test_extra:
        name = _canon(Requirement(r).name)
        assert tops_of.get(name), (
            f"test-extra distribution {name!r} maps to no top-level import name "
            "(importlib.metadata.packages_distributions); cannot block it"
        )

    test_tops = {t for d in _closure(test_extra, strict=True) for t in tops_of.get(d, ())}
    runtime_tops = {t for d in _closure(runtime, strict=False) for t in tops_of.get(d, ())}
    # Never block the project itself (an editable install maps 'appliance' to it).
    runtime_tops |= tops_of.get(_canon(project["name"]), set())
    return test_tops - runtime_tops


_CHILD = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys, traceback

    blocked = frozenset(json.loads(sys.argv[1]))
    src = sys.argv[2]

    class BlockTestExtra(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] in blocked:
                raise ModuleNotFoundError(
                    f"{fullname} is provided only by the test extra", name=fullname
                )
            return None

    preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
    sys.meta_path.insert(0, BlockTestExtra())
    sys.path.insert(0, src)

    import appliance

    failures = {}
    imported = []

    def onerror(name):
        failures[name] = traceback.format_exc(limit=-3)

    for info in pkgutil.walk_packages(appliance.__path__, "appliance.", onerror=onerror):
        if info.name in failures:
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except BaseException:
            failures[info.name] = traceback.format_exc(limit=-3)

    print(json.dumps({
        "file": appliance.__file__,
        "imported": imported,
        "failures": failures,
        "preloaded": preloaded,
    }))
    """
)


def import_all_runtime_modules(blocked: set[str]) -> dict[str, object]:
    """Import every ``appliance`` module in a child interpreter with ``blocked`` unimportable.

    Returns:
        ``file`` (the ``appliance/__init__.py`` imported), ``imported`` (module names),
        ``failures`` (module name -> traceback tail) and ``preloaded`` (blocked modules the
        interpreter had imported at start-up, before the block was in place).

    Raises:
        AssertionError: The child interpreter crashed or printed no result.
    """
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(sorted(blocked)), str(SRC)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_test_extra_names_are_blocked() -> None:
    blocked = blocked_top_level_names()
    for name in ("dpkt", "jiwer", "pytest", "_pytest", "importlinter", "ansible", "sipvicious"):
        assert name in blocked, name
    # Also in the runtime tree: jiwer -> rapidfuzz, and kokoro-onnx's tree brings num2words.
    for name in ("rapidfuzz", "num2words", "numpy", "appliance"):
        assert name not in blocked, name


def test_every_runtime_module_imports_without_the_test_extra() -> None:
    result = import_all_runtime_modules(blocked_top_level_names())
    assert Path(str(result["file"])).resolve().is_relative_to(SRC.resolve()), result["file"]
    assert not result["preloaded"], f"blocked modules imported at start-up: {result['preloaded']}"
    failures = result["failures"]
    assert isinstance(failures, dict)
    assert not failures, "\n".join(f"{name}:\n{tb}" for name, tb in failures.items())
    imported = result["imported"]
    assert isinstance(imported, list)
    for module in ("appliance.cli", "appliance.app.server", "appliance.models.manifest"):
        assert module in imported, module
