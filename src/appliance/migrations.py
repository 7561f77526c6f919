"""Named, ordered schema migrations for every SQLite store of the appliance.

Each store (audit log, call metadata, calendar) lists its migrations as ``(name, fn)`` pairs
and calls :func:`apply_migrations` when it opens its database. Applied names are recorded in
the database's ``_migrations`` table; each pending migration runs in its own
``BEGIN IMMEDIATE`` transaction (one writer at a time, SQLite's locking) and is recorded in
the same transaction, so a crash leaves it either applied and recorded or neither.

Databases written by earlier versions, whose ``_migrations`` table has a ``t REAL`` or an
``applied_at TEXT`` column besides ``name``, are read and extended as they are: only ``name``
is needed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

H = TypeVar("H")

#: One migration: a name unique in its store, and a function that applies it to the handle
#: the store passes (a ``sqlite3.Connection`` or a ``sqlite_utils.Database``).
Migration = tuple[str, Callable[[H], None]]


def apply_migrations(
    conn: sqlite3.Connection, migrations: Sequence[tuple[str, Callable[[H], None]]], handle: H
) -> list[str]:
    """Apply the pending ``migrations`` in order; return the names applied now.

    Args:
        conn: The database connection (not inside a transaction).
        migrations: ``(name, fn)`` pairs in order; ``fn(handle)`` changes the schema.
        handle: What each ``fn`` receives: ``conn`` itself or a wrapper such as
            ``sqlite_utils.Database(conn)``.

    Raises:
        sqlite3.Error: A migration failed; it was rolled back and later ones were not run.
        ValueError: Two migrations share a name.
    """
    names = [name for name, _ in migrations]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate migration names in {names}")
    if conn.in_transaction:
        conn.execute("COMMIT")
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied: list[str] = []
    for name, fn in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                conn.execute("ROLLBACK")
                continue
            fn(handle)
            if not conn.in_transaction:  # a library call inside fn committed early
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO _migrations (name) VALUES (?)", [name])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names recorded in ``_migrations`` (empty for a new database), in the order applied."""
    try:
        rows = conn.execute("SELECT name FROM _migrations ORDER BY rowid").fetchall()
    except sqlite3.OperationalError:
        return []
    return [str(r[0]) for r in rows]
