"""appliance.migrations: named, ordered, transactional migrations shared by every SQLite store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.audit import envelope
from appliance.audit import store as audit_store
from appliance.metrics import store as metrics_store
from appliance.migrations import applied_migrations, apply_migrations


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), isolation_level=None)


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def _create(table: str) -> Callable[[sqlite3.Connection], None]:
    def fn(conn: sqlite3.Connection) -> None:
        conn.execute(f"CREATE TABLE {table} (x INTEGER)")

    return fn


def test_applies_in_order_once(tmp_path: Path) -> None:
    seen: list[str] = []

    def step(name: str) -> Callable[[sqlite3.Connection], None]:
        def fn(conn: sqlite3.Connection) -> None:
            seen.append(name)
            conn.execute(f"CREATE TABLE t_{name} (x)")

        return fn

    migrations = [(name, step(name)) for name in ("003_c", "001_a", "002_b")]
    conn = _connect(tmp_path / "db.sqlite")
    assert apply_migrations(conn, migrations, conn) == ["003_c", "001_a", "002_b"]
    assert seen == ["003_c", "001_a", "002_b"]  # list order, not name order
    assert applied_migrations(conn) == ["003_c", "001_a", "002_b"]

    # Idempotent: a second run (also from a new connection) applies nothing.
    assert apply_migrations(conn, migrations, conn) == []
    conn.close()
    conn = _connect(tmp_path / "db.sqlite")
    assert apply_migrations(conn, migrations, conn) == []
    assert seen == ["003_c", "001_a", "002_b"]

    # A migration added later runs alone.
    migrations.append(("004_d", step("004_d")))
    assert apply_migrations(conn, migrations, conn) == ["004_d"]
    assert applied_migrations(conn)[-1] == "004_d"


def test_failing_migration_is_rolled_back_and_stops_the_run(tmp_path: Path) -> None:
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x)")
        conn.execute("INSERT INTO half VALUES (1)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    later = []
    migrations = [
        ("001_ok", _create("ok")),
        ("002_bad", half_then_fail),
        ("003_later", lambda conn: later.append(conn)),
    ]
    conn = _connect(tmp_path / "db.sqlite")
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        apply_migrations(conn, migrations, conn)
    assert not conn.in_transaction
    assert "ok" in _tables(conn) and "half" not in _tables(conn)
    assert applied_migrations(conn) == ["001_ok"]
    assert later == []

    # Fixed, it is applied on the next run, and the ones after it too.
    migrations[1] = ("002_bad", _create("half"))
    assert apply_migrations(conn, migrations, conn) == ["002_bad", "003_later"]
    assert len(later) == 1


def test_failure_in_a_sqlite_utils_migration_rolls_back_its_tables(tmp_path: Path) -> None:
    """The stores pass a sqlite_utils.Database; its writes stay in the migration's transaction."""

    def create_then_fail(db: sqlite_utils.Database) -> None:
        db["calls"].create({"call_id": str, "t": float}, pk="call_id")
        db["calls"].create_index(["t"])  # type: ignore[union-attr]
        db["calls"].insert({"call_id": "a", "t": 1.0})  # type: ignore[union-attr]
        raise RuntimeError("migration bug")

    conn = sqlite3.connect(str(tmp_path / "db.sqlite"))  # the metadata store's default mode
    db = sqlite_utils.Database(conn)
    with pytest.raises(RuntimeError, match="migration bug"):
        apply_migrations(conn, [("001_calls", create_then_fail)], db)
    assert "calls" not in _tables(conn)
    assert applied_migrations(conn) == []


def test_migration_that_commits_early_is_still_recorded(tmp_path: Path) -> None:
    def commits(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE a (x)")
        conn.execute("COMMIT")  # as a library call inside a migration might

    conn = _connect(tmp_path / "db.sqlite")
    assert apply_migrations(conn, [("001_a", commits)], conn) == ["001_a"]
    assert applied_migrations(conn) == ["001_a"] and not conn.in_transaction


def test_an_open_transaction_of_the_caller_is_committed_first(tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "db.sqlite"))
    conn.execute("CREATE TABLE pre (x)")
    conn.execute("INSERT INTO pre VALUES (1)")  # opens an implicit transaction
    assert conn.in_transaction
    apply_migrations(conn, [("001_a", _create("a"))], conn)
    other = _connect(tmp_path / "db.sqlite")
    assert other.execute("SELECT x FROM pre").fetchall() == [(1,)]
    assert "a" in _tables(other)


def test_duplicate_names_are_refused_before_anything_runs(tmp_path: Path) -> None:
    conn = _connect(tmp_path / "db.sqlite")
    migrations = [("001_a", _create("a")), ("002_b", _create("b")), ("001_a", _create("c"))]
    with pytest.raises(ValueError, match="duplicate"):
        apply_migrations(conn, migrations, conn)
    assert _tables(conn) == set()


@pytest.mark.parametrize(
    ("shape", "row"),
    [
        ("name TEXT PRIMARY KEY, t REAL", "('001_a', 1700000000.5)"),  # the audit log's
        ("name TEXT PRIMARY KEY, applied_at TEXT", "('001_a', datetime('now'))"),  # metadata's
    ],
)
def test_old_migrations_tables_are_read_as_they_are(tmp_path: Path, shape: str, row: str) -> None:
    conn = _connect(tmp_path / "db.sqlite")
    conn.execute(f"CREATE TABLE _migrations ({shape})")
    conn.execute("CREATE TABLE a (x)")
    conn.execute(f"INSERT INTO _migrations VALUES {row}")
    migrations = [("001_a", _create("a")), ("002_b", _create("b"))]
    assert applied_migrations(conn) == ["001_a"]
    assert apply_migrations(conn, migrations, conn) == ["002_b"]  # 001_a is not run again
    assert applied_migrations(conn) == ["001_a", "002_b"]
    columns = [r[1] for r in conn.execute("PRAGMA table_info(_migrations)")]
    assert columns == [c.split()[0] for c in shape.split(", ")]  # the table is kept as it was


def test_applied_migrations_of_a_new_database_is_empty(tmp_path: Path) -> None:
    assert applied_migrations(_connect(tmp_path / "db.sqlite")) == []


# --- the stores that use it -------------------------------------------------------------------


def test_audit_log_opens_a_database_of_the_old_runner(tmp_path: Path) -> None:
    """An audit database whose _migrations (name, t REAL) the old runner wrote keeps working."""
    path = tmp_path / "audit.sqlite"
    db = audit_store.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, t REAL)")
    audit_store.MIGRATIONS[0][1](db)
    db.execute("INSERT INTO _migrations VALUES (?, ?)", ["001_audit", time.time()])
    db.conn.close()

    kek = envelope.load_kek(tmp_path / "kek", create=True)
    log = audit_store.AuditLog(
        path, kek, Ed25519PrivateKey.generate(), origin="t", checkpoint_file=tmp_path / "cp"
    )
    try:
        assert log.append([audit_store.Entry(kind="Test", meta={"n": 1})]) == [0]
    finally:
        log.close()
    conn = _connect(path)
    assert applied_migrations(conn) == [name for name, _ in audit_store.MIGRATIONS]


def test_both_stores_record_their_migrations_once(tmp_path: Path) -> None:
    audit_db = audit_store.connect(tmp_path / "audit.sqlite")
    assert audit_store.migrate(audit_db) == [name for name, _ in audit_store.MIGRATIONS]
    assert audit_store.migrate(audit_db) == []

    metrics_db = sqlite_utils.Database(sqlite3.connect(str(tmp_path / "calls.sqlite")))
    names = [name for name, _ in metrics_store.MIGRATIONS]
    assert metrics_store.migrate(metrics_db) == names
    assert metrics_store.migrate(metrics_db) == []
    assert applied_migrations(metrics_db.conn) == names
    assert {"calls", "call_scores", "call_media"} <= _tables(metrics_db.conn)
