"""The admin page's own database (``admin.sqlite``): accounts, sessions, the audit outbox.

Feature stores keep their tables in the same file, each with its own migration names
(``alerts_...``, ``quality_...``), applied by :func:`appliance.migrations.apply_migrations`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating it with mode 0600) the admin database in WAL mode.

    The connection may be used from several threads (callers serialise writes with
    ``BEGIN IMMEDIATE``); rows come back as :class:`sqlite3.Row`.

    Raises:
        sqlite3.Error: The file is not a database or cannot be opened.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn
