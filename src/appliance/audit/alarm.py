"""The audit-verification alarm: a marker file the admin page's alert rules read.

``appliance audit verify --alarm-file PATH`` writes the marker when verification fails and
removes it when verification passes; ``appliance-audit-alarm.service`` (the verify unit's
``OnFailure=``) writes it too, for a verify run that died before it could. The admin page's
``audit_verify_failed`` rule (:mod:`appliance.admin.alerts`) fires while the marker exists. On the
box the marker is ``/var/lib/appliance/alarms/audit-verify.json``: :data:`ALARM_RELPATH` under the
state directory, the directory of ``[store] metadata_db``, which the admin page can read.

The marker holds a JSON object ``{"t": <s since the epoch>, "source": str, "problem": str}``;
the problem is the verifier's one-line summary (record indexes and sizes, never content).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

ALARM_RELPATH = Path("alarms") / "audit-verify.json"
"""Marker path relative to the agent's state directory (the parent of ``metadata_db``)."""


def alarm_path(state_dir: Path) -> Path:
    """The marker under ``state_dir`` (the directory holding ``[store] metadata_db``)."""
    return Path(state_dir) / ALARM_RELPATH


def raise_alarm(path: Path, problem: str, source: str, *, keep_existing: bool = False) -> bool:
    """Write the marker atomically, mode 0640 (group ``appliance``: the admin page reads it).

    Args:
        path: The marker file.
        problem: One line saying what failed (no content, no PHI).
        source: What raised it, e.g. ``"appliance audit verify"``.
        keep_existing: Leave an existing marker (and its more precise problem) as it is.

    Returns:
        Whether a marker was written.

    Raises:
        OSError: The marker cannot be written.
    """
    if keep_existing and path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"t": time.time(), "source": source, "problem": problem}) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o640)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o640)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def clear_alarm(path: Path) -> bool:
    """Remove the marker; returns whether there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def read_alarm(path: Path) -> dict[str, Any] | None:
    """The marker's content, ``None`` when there is none.

    An unreadable or damaged marker still counts as an alarm (``{"problem": "..."}``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"t": None, "source": "", "problem": f"alarm marker unreadable: {exc.strerror}"}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {"t": None, "source": "", "problem": "alarm marker damaged"}
    return data
