"""Admin records on their way into the agent's audit log (an outbox).

The admin process holds no audit keys. Each record (a sign-in, a role change, a PHI view...)
is first written to the ``audit_outbox`` table of ``admin.sqlite`` in the same request, then
handed to the agent over the control socket (``audit.append``), which seals and chains it. If
the agent is down, records wait in order and go once it is back: none is lost, and each keeps
the time it happened (``at`` in its meta). Kinds start with ``Admin``; meta holds no PHI.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from typing import Any

from appliance.control import ControlClient, ControlError
from appliance.migrations import apply_migrations

_LOGGER = logging.getLogger(__name__)
_KIND = re.compile(r"^Admin[A-Za-z]{2,40}$")


def _m001(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE audit_outbox (id INTEGER PRIMARY KEY, t REAL NOT NULL, kind TEXT NOT NULL,"
        " meta TEXT NOT NULL, sent_at REAL, attempts INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute("CREATE INDEX audit_outbox_pending ON audit_outbox(sent_at, id)")


MIGRATIONS = [("audit_outbox_001", _m001)]


class AdminAudit:
    """Queue admin records and deliver them to the agent's audit log.

    Args:
        conn: The admin database.
        control: The agent's control socket client.
    """

    def __init__(self, conn: sqlite3.Connection, control: ControlClient) -> None:
        self._conn = conn
        self._control = control
        self._flush_lock = threading.Lock()
        apply_migrations(conn, MIGRATIONS, conn)

    def record(self, kind: str, actor: str, **meta: str | int | float | bool | None) -> int:
        """Queue one record and try to deliver the queue at once (without waiting long).

        Args:
            kind: ``Admin...`` record kind, e.g. ``"AdminLogin"``.
            actor: Who did it: ``"user:<id>"``, or ``"anonymous"`` for a failed sign-in.
            **meta: Scalars only, never PHI (no names, transcripts, numbers).

        Returns:
            The outbox row id.

        Raises:
            ValueError: A bad kind or a non-scalar value (a programming error).
        """
        if not _KIND.match(kind):
            raise ValueError(f"admin audit kind must look like AdminSomething, not {kind!r}")
        for key, value in meta.items():
            if value is not None and not isinstance(value, str | int | float | bool):
                raise ValueError(f"audit meta {key} must be a scalar")
        now = time.time()
        body = {"actor": actor, "at": now, **meta}
        cur = self._conn.execute(
            "INSERT INTO audit_outbox (t, kind, meta) VALUES (?, ?, ?)",
            [now, kind, json.dumps(body, sort_keys=True)],
        )
        threading.Thread(target=self.flush, name="admin-audit-flush", daemon=True).start()
        return int(cur.lastrowid or 0)

    def pending(self) -> list[dict[str, Any]]:
        """Records not yet in the audit log, oldest first."""
        rows = self._conn.execute(
            "SELECT id, t, kind, meta FROM audit_outbox WHERE sent_at IS NULL ORDER BY id"
        ).fetchall()
        return [
            {"id": r["id"], "t": r["t"], "kind": r["kind"], **json.loads(r["meta"])} for r in rows
        ]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest records, delivered or not (for the users page)."""
        rows = self._conn.execute(
            "SELECT id, t, kind, meta, sent_at FROM audit_outbox ORDER BY id DESC LIMIT ?",
            [limit],
        ).fetchall()
        return [
            {"id": r["id"], "t": r["t"], "kind": r["kind"], "sent": r["sent_at"] is not None}
            | json.loads(r["meta"])
            for r in rows
        ]

    def flush(self, timeout: float = 2.0) -> int:
        """Deliver pending records in order; stop at the first failure. Returns how many went."""
        if not self._flush_lock.acquire(blocking=False):
            return 0
        sent = 0
        try:
            for row in self._conn.execute(
                "SELECT id, kind, meta FROM audit_outbox WHERE sent_at IS NULL ORDER BY id"
            ).fetchall():
                meta = json.loads(row["meta"])
                try:
                    self._control.call(
                        "audit.append",
                        {"kind": row["kind"], "meta": meta},
                        actor=str(meta.get("actor", "")),
                        timeout=timeout,
                    )
                except ControlError as exc:
                    if exc.code in ("unavailable", "unknown_op"):  # down, or not yet upgraded
                        self._conn.execute(
                            "UPDATE audit_outbox SET attempts = attempts + 1 WHERE id = ?",
                            [row["id"]],
                        )
                        break
                    # Refused (a record the agent's checks do not accept): parked with
                    # sent_at = -1 and logged, so one bad record cannot hold back the rest.
                    _LOGGER.error("the agent refused admin record %s: %s", row["kind"], exc.code)
                    self._conn.execute(
                        "UPDATE audit_outbox SET sent_at = -1, attempts = attempts + 1 "
                        "WHERE id = ?",
                        [row["id"]],
                    )
                    continue
                self._conn.execute(
                    "UPDATE audit_outbox SET sent_at = ? WHERE id = ?", [time.time(), row["id"]]
                )
                sent += 1
        finally:
            self._flush_lock.release()
        return sent
