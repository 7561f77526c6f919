"""The append-only audit store: SQLite (sqlite-utils), one writer, durable appends.

* ``append`` returns record indexes only after the transaction committed with
  ``PRAGMA synchronous=FULL`` in WAL mode, i.e. after the WAL was fsynced.
* One writer per database: every write goes through one connection under one lock; the
  call path never writes directly, it enqueues through :class:`~appliance.audit.observer`.
* Named migrations (:mod:`appliance.migrations`), each in its own transaction.
* Temporary tables and indexes stay in memory (``temp_store=MEMORY``); content is sealed before
  it reaches SQLite, so neither the database, its WAL nor any temporary file holds it in clear.
* Signed checkpoints (origin, size, root) are stored and appended to a file the fleet tooling
  collects off the box.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.audit import envelope
from appliance.audit.checkpoint import Checkpoint, sign_note
from appliance.audit.merkle import TreeBuilder, leaf_hash
from appliance.audit.record import Record, decode, encode
from appliance.migrations import apply_migrations


class AuditError(RuntimeError):
    """The audit log cannot be written (disk full, I/O error, lost key). Fail closed."""


def _m001(db: sqlite_utils.Database) -> None:
    # root: RFC 6962 root of records 0..idx inclusive, kept outside the leaf to locate tampering.
    db.execute(
        "CREATE TABLE records (idx INTEGER PRIMARY KEY, data BLOB NOT NULL, root BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE deks (dek_id TEXT PRIMARY KEY, call_id TEXT NOT NULL, kek_id TEXT NOT NULL,"
        " wrapped BLOB, created REAL NOT NULL, shredded REAL)"
    )
    db.execute("CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL, t REAL)")


#: The call id of a record, read from its canonical JSON (``0x01`` + JSON, see ``record``);
#: NULL for bytes that are not JSON, so a damaged row still stores and verification finds it.
CALL_ID_SQL = (
    "(CASE WHEN json_valid(CAST(substr(data, 2) AS TEXT))"
    " THEN json_extract(CAST(substr(data, 2) AS TEXT), '$.call_id') END)"
)


def _m002(db: sqlite_utils.Database) -> None:
    # One call's records without a scan of the whole log (call timelines, exports).
    db.execute(f"CREATE INDEX records_call_id ON records ({CALL_ID_SQL}, idx)")


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_audit", _m001),
    ("002_records_call_id", _m002),
]


class ContentShredded(AuditError):
    """A call's sealed content cannot be opened: its data key was destroyed (shredded)."""


@dataclass(frozen=True)
class Entry:
    """One record to append: ``content`` (may hold PHI) is sealed, ``meta`` stays clear."""

    kind: str
    call_id: str = ""
    meta: dict[str, Any] | None = None
    content: dict[str, Any] | None = None
    t: float | None = None


def connect(path: Path, synchronous: str = "FULL") -> sqlite_utils.Database:
    """Open an audit database with the durability and temp-file settings."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA temp_store=MEMORY")
    return db


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the pending :data:`MIGRATIONS` (:func:`appliance.migrations.apply_migrations`).

    Each runs in its own ``BEGIN IMMEDIATE`` transaction and is recorded in ``_migrations``;
    databases whose ``_migrations`` table has the earlier ``(name, t REAL)`` shape are read and
    extended as they are.

    Returns:
        The names applied now, in order (empty for an up-to-date database).

    Raises:
        sqlite3.Error: A migration failed; it was rolled back and later ones were not run.
    """
    return apply_migrations(db.conn, MIGRATIONS, db)


def iter_records(db: sqlite_utils.Database) -> Iterator[tuple[int, bytes]]:
    """All (index, leaf bytes) rows in index order."""
    yield from db.execute("SELECT idx, data FROM records ORDER BY idx")


class AuditLog:
    """Append-only, encrypted, Merkle-tree audit log (the single writer of its database).

    Args:
        path: SQLite file.
        kek: Key-encryption key for per-call data keys.
        signing_key: Ed25519 key for checkpoints (separate from the KEK).
        origin: Checkpoint origin line, e.g. ``"clinic-voice-appliance/<box id>/audit"``.
        checkpoint_file: File the signed checkpoints are appended to (collected off the box).
        synchronous: SQLite ``synchronous`` level, ``"FULL"`` (default) or ``"NORMAL"``.

    Raises:
        AuditError: The database cannot be opened or its records are unreadable.
    """

    def __init__(
        self,
        path: Path,
        kek: envelope.Kek,
        signing_key: Ed25519PrivateKey,
        *,
        origin: str,
        checkpoint_file: Path,
        key_name: str = "appliance-audit",
        synchronous: str = "FULL",
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.kek = kek
        self.origin = origin
        self.key_name = key_name
        self.checkpoint_file = checkpoint_file
        self._signing_key = signing_key
        self._lock = threading.Lock()
        self._deks: dict[str, tuple[str, bytes]] = {}
        try:
            self._db = connect(path, synchronous)
            migrate(self._db)
            self._tree = TreeBuilder()
            for _idx, data in iter_records(self._db):
                self._tree.append(leaf_hash(data))
        except (sqlite3.Error, OSError) as exc:
            raise AuditError(f"audit log {path} cannot be opened: {exc}") from exc

    @property
    def size(self) -> int:
        """Number of records committed."""
        return self._tree.size

    def _dek(self, call_id: str) -> tuple[str, bytes]:
        if call_id in self._deks:
            return self._deks[call_id]
        row = self._db.execute(
            "SELECT dek_id, wrapped FROM deks WHERE call_id = ? AND shredded IS NULL "
            "ORDER BY created DESC LIMIT 1",
            [call_id],
        ).fetchone()
        if row is not None:
            dek = envelope.unwrap(self.kek, row[1])
            self._deks[call_id] = (row[0], dek)
            return row[0], dek
        dek = envelope.new_dek()
        dek_id = f"{call_id or 'system'}-{int(time.time() * 1000)}"
        self._db.execute(
            "INSERT INTO deks (dek_id, call_id, kek_id, wrapped, created) VALUES (?, ?, ?, ?, ?)",
            [dek_id, call_id, self.kek.kek_id, envelope.wrap(self.kek, dek), time.time()],
        )
        self._deks[call_id] = (dek_id, dek)
        return dek_id, dek

    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Append entries in one durable transaction; returns their indexes after commit.

        Raises:
            AuditError: The write failed (disk full, I/O error, key problem). Nothing of the
                batch is acknowledged, and everything acknowledged before stays intact.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._sync_locked()
                start = self._tree.size
                rows: list[tuple[int, bytes, bytes]] = []
                hashes = []
                tree = copy.deepcopy(self._tree)  # O(log n) state; committed only on success
                for entry in entries:
                    sealed = dek_id = None
                    if entry.content is not None:
                        dek_id, dek = self._dek(entry.call_id)
                        plaintext = json.dumps(entry.content, sort_keys=True).encode()
                        sealed = envelope.seal(
                            dek, plaintext, envelope.aad_for(entry.call_id, entry.kind)
                        )
                    record = Record(
                        t=entry.t if entry.t is not None else time.time(),
                        kind=entry.kind,
                        call_id=entry.call_id,
                        meta=entry.meta or {},
                        sealed=sealed,
                        dek_id=dek_id,
                    )
                    data = encode(record)
                    h = leaf_hash(data)
                    tree.append(h)
                    hashes.append(h)
                    rows.append((start + len(rows), data, tree.root()))
                self._db.conn.executemany(
                    "INSERT INTO records (idx, data, root) VALUES (?, ?, ?)", rows
                )
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError, envelope.EnvelopeError) as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                self._deks.clear()  # a DEK row may have been rolled back
                raise AuditError(f"audit append failed: {exc}") from exc
            for h in hashes:
                self._tree.append(h)
            return [row[0] for row in rows]

    def _sync_locked(self) -> None:
        """Catch up with records appended by another process (e.g. ``audit export``).

        Called inside ``BEGIN IMMEDIATE``, so SQLite's write lock keeps writers serialised;
        the in-memory compact range then extends over the rows this process did not write.
        """
        rows = self._db.execute(
            "SELECT idx, data FROM records WHERE idx >= ? ORDER BY idx", [self._tree.size]
        ).fetchall()
        for idx, data in rows:
            if idx != self._tree.size:
                raise sqlite3.IntegrityError(f"audit record {self._tree.size} is missing")
            self._tree.append(leaf_hash(data))

    def checkpoint(self) -> Checkpoint:
        """Sign (origin, size, root), store it and append it to the checkpoint file.

        Raises:
            AuditError: The checkpoint could not be written.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._sync_locked()
                    cp = Checkpoint(self.origin, self._tree.size, self._tree.root())
                    note = sign_note(cp.body(), self._signing_key, self.key_name)
                    self._db.execute(
                        "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                        [cp.size, note, time.time()],
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self.checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
                with self.checkpoint_file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"size": cp.size, "note": note}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except (sqlite3.Error, OSError) as exc:
                raise AuditError(f"checkpoint failed: {exc}") from exc
            return cp

    def rotate_kek(self, new_kek: envelope.Kek) -> int:
        """Re-wrap every live data key under ``new_kek`` in one transaction (no downtime).

        Records are untouched (they hold DEK-sealed content only). The rotation itself is
        appended to the log. Returns the number of keys re-wrapped.

        Raises:
            AuditError: A key did not unwrap with the current KEK, or the write failed.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                rows = self._db.execute(
                    "SELECT dek_id, wrapped FROM deks WHERE wrapped IS NOT NULL"
                ).fetchall()
                for dek_id, wrapped in rows:
                    dek = envelope.unwrap(self.kek, wrapped)
                    self._db.execute(
                        "UPDATE deks SET wrapped = ?, kek_id = ? WHERE dek_id = ?",
                        [envelope.wrap(new_kek, dek), new_kek.kek_id, dek_id],
                    )
                self._db.execute("COMMIT")
            except (sqlite3.Error, envelope.EnvelopeError) as exc:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise AuditError(f"KEK rotation failed, old KEK still in use: {exc}") from exc
            old = self.kek.kek_id
            self.kek = new_kek
            self._deks.clear()
        self.append(
            [
                Entry(
                    kind="KeyRotation",
                    meta={"from_kek": old, "to_kek": new_kek.kek_id, "rewrapped": len(rows)},
                )
            ]
        )
        return len(rows)

    def shred(self, *, call_id: str | None = None, before: float | None = None) -> int:
        """Destroy data keys (crypto-shredding); returns how many were destroyed."""
        with self._lock:
            where, args = (
                ("call_id = ?", [call_id])
                if call_id is not None
                else ("created < ?", [before if before is not None else time.time()])
            )
            cur = self._db.execute(
                f"UPDATE deks SET wrapped = NULL, shredded = ? WHERE {where} AND shredded IS NULL",
                [time.time(), *args],
            )
            self._deks.clear()
            return cur.rowcount

    def export_call(self, call_id: str) -> list[dict[str, Any]]:
        """Decrypt one call's records (for an authorised user; the caller logs the export).

        Raises:
            ContentShredded: The call's data key was shredded.
        """
        return self.call_records(call_id, decrypt=True)

    def call_records(self, call_id: str, *, decrypt: bool = False) -> list[dict[str, Any]]:
        """One call's records in index order, found through the ``records_call_id`` index.

        Returns:
            ``{"index", "t" (s since the epoch), "kind", "meta"}`` per record, plus the opened
            ``"content"`` of sealed records when ``decrypt`` is true.

        Raises:
            ContentShredded: ``decrypt`` and the call's data key was shredded.
        """
        with self._lock:
            keys: dict[str, bytes | None] = {}
            if decrypt:
                for dek_id, wrapped in self._db.execute(
                    "SELECT dek_id, wrapped FROM deks WHERE call_id = ?", [call_id]
                ):
                    keys[dek_id] = None if wrapped is None else envelope.unwrap(self.kek, wrapped)
            rows = self._db.execute(
                f"SELECT idx, data FROM records WHERE {CALL_ID_SQL} = ? ORDER BY idx", [call_id]
            ).fetchall()
        out = []
        for idx, data in rows:
            record = decode(data)
            if record.call_id != call_id:
                continue
            item: dict[str, Any] = {
                "index": idx,
                "t": record.t,
                "kind": record.kind,
                "meta": record.meta,
            }
            if decrypt and record.sealed is not None:
                dek = keys.get(record.dek_id or "")
                if dek is None:
                    raise ContentShredded(f"call {call_id}: content was shredded")
                item["content"] = json.loads(
                    envelope.open_sealed(
                        dek, record.sealed, envelope.aad_for(record.call_id, record.kind)
                    )
                )
            out.append(item)
        return out

    def last_checkpoint(self) -> tuple[int, float] | None:
        """``(size, t)`` of the latest stored checkpoint (t: s since the epoch), or ``None``."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, t FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (int(row[0]), float(row[1] or 0.0))

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.conn.close()
