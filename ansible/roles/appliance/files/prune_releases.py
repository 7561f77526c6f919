#!/usr/bin/env python3
"""Keep the newest N release directories besides the current one; drop unused runtimes.

Usage: ``prune_releases.py PREFIX KEEP``. A release directory is ``PREFIX/releases/<version>``;
the current release (``PREFIX/current``) and the ``KEEP`` most recently installed others (by the
time of their ``.installed`` marker) stay. Incomplete directories (no marker) older than an hour
are removed too. A runtime ``PREFIX/runtimes/<id>`` and a model store ``PREFIX/models/<id>``
stay while any kept release refers to it (``release.json``). Prints JSON: what was removed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    """Entry point."""
    prefix, keep = Path(sys.argv[1]), int(sys.argv[2])
    releases = prefix / "releases"
    current = (prefix / "current").resolve() if (prefix / "current").exists() else None
    installed, removed = [], []
    for d in sorted(releases.iterdir()) if releases.is_dir() else []:
        if not d.is_dir() or d.name.startswith("."):
            continue
        marker = d / ".installed"
        if marker.exists():
            installed.append((marker.stat().st_mtime, d))
        elif time.time() - d.stat().st_mtime > 3600:
            shutil.rmtree(d)
            removed.append(str(d))
    others = sorted((p for p in installed if p[1].resolve() != current), reverse=True)
    kept = [d for _, d in installed if d.resolve() == current] + [d for _, d in others[:keep]]
    for _, d in others[keep:]:
        shutil.rmtree(d)
        removed.append(str(d))
    used: dict[str, set[str]] = {"runtime_id": set(), "models_id": set()}
    for d in kept:
        info = json.loads((d / "release.json").read_text())
        for key, ids in used.items():
            ids.add(str(info.get(key)))
    for sub, key in (("runtimes", "runtime_id"), ("models", "models_id")):
        base = prefix / sub
        for d in sorted(base.iterdir()) if base.is_dir() else []:
            if d.is_dir() and not d.name.startswith(".") and d.name not in used[key]:
                shutil.rmtree(d)
                removed.append(str(d))
    report = {"changed": bool(removed), "removed": removed, "kept": [str(d) for d in kept]}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
