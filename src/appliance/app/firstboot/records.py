"""Records first boot leaves for the audit log, which only the agent can write.

First boot runs before the agent, as root, and cannot open the audit log: the KEK is a
credential systemd hands to the agent alone. What first boot must put on the record (a
``trunk.toml`` applied or refused) goes to a small pending file next to the audit database
(:data:`PENDING_NAME`, owned by the service user, mode 0600, one JSON object per line). The
agent reads it when it starts, puts each entry on the audit log as a ``ConfigChanged`` record
and then removes the file (:func:`read_pending`, :func:`clear_pending`). Entries hold no content:
a file name, a SHA-256 digest, the decision and its reason.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path

from appliance.app.firstboot.common import Owner

#: The pending file's name, in the audit database's directory.
PENDING_NAME = "firstboot-records.jsonl"


@dataclass(frozen=True)
class PendingRecord:
    """One decision of first boot, waiting for the audit log.

    Attributes:
        at: When first boot decided (ISO 8601, UTC, seconds).
        accepted: Whether the settings were applied.
        detail: What and why, without content (file, SHA-256, reason).
    """

    at: str
    accepted: bool
    detail: str


def append_pending(path: Path, accepted: bool, detail: str, owner: Owner | None) -> None:
    """Append one record to the pending file ``path`` (created 0600, owned by ``owner``).

    Raises:
        OSError: The file cannot be written.
    """
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    line = json.dumps({"at": at, "accepted": accepted, "detail": detail}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, owner.uid, owner.gid)
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_pending(path: Path) -> list[PendingRecord]:
    """The records waiting in ``path``, oldest first; ``[]`` when there is no such file.

    A line that is not a record (a torn write, an edit) becomes a refused record saying so,
    so that nothing in the file vanishes without a trace.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            records.append(
                PendingRecord(str(data["at"]), bool(data["accepted"]), str(data["detail"]))
            )
        except (ValueError, KeyError, TypeError):
            records.append(
                PendingRecord("", False, f"{path.name} line {number}: not a first-boot record")
            )
    return records


def clear_pending(path: Path) -> None:
    """Remove the pending file once its records are on the audit log."""
    path.unlink(missing_ok=True)
