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
* Crypto-shredding leaves no copy of the key: ``PRAGMA secure_delete=ON`` zeroes deleted and
  overwritten cell bytes, a shred ends with ``PRAGMA wal_checkpoint(TRUNCATE)`` so neither
  ``-wal`` nor the database keeps the old page, and each shred starts a new KEK epoch
  (:class:`~appliance.audit.envelope.KekStore`): the live DEKs are re-wrapped under a fresh
  KEK and the old KEK is destroyed, so backups taken before the shred cannot be opened either.
* Each data key has a scope with its own retention: ``call`` (what was said and keyed in a
  call), ``consent`` (TCPA consent evidence) and ``system`` (records outside calls and admin
  records); see :func:`key_scope`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import secrets
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

_LOGGER = logging.getLogger(__name__)


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


def _m003(db: sqlite_utils.Database) -> None:
    # Key scopes with their own retention, and the KEK epoch each shred starts.
    db.execute("ALTER TABLE deks ADD COLUMN scope TEXT NOT NULL DEFAULT 'call'")
    db.execute(f"UPDATE deks SET scope = '{SCOPE_SYSTEM}' WHERE call_id = ''")
    db.execute(
        "CREATE TABLE kek_epochs (epoch INTEGER PRIMARY KEY, kek_id TEXT NOT NULL,"
        " t REAL NOT NULL, reason TEXT NOT NULL)"
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_audit", _m001),
    ("002_records_call_id", _m002),
    ("003_key_scopes_kek_epochs", _m003),
]

SCOPE_CALL = "call"
"""Data keys of a call's content (transcripts, digits, agent speech): transcript retention."""
SCOPE_CONSENT = "consent"
"""Data keys of consent evidence (``ConsentRecorded``): consent retention."""
SCOPE_SYSTEM = "system"
"""Data keys of records outside calls and of admin records: consent retention."""
SCOPES = (SCOPE_CALL, SCOPE_CONSENT, SCOPE_SYSTEM)

#: Record kinds whose content is consent evidence, kept for the consent retention period
#: (``DialRefused``: a dial the TCPA gates refused, the proof that the gates held).
CONSENT_KINDS = frozenset({"ConsentRecorded", "ConsentRevoked", "DialRefused"})
#: Record kinds made by administration, not by a call, even when they name a call id.
SYSTEM_KINDS = frozenset({"AuditExport", "RetentionSweep", "KekEpoch", "KeyRotation"})


DEK_MAX_AGE_S = 86400.0
"""A data key seals new content for at most a day. Retention shreds keys by their creation
time, so a long-lived scope (the ``system`` key outside calls, consent outside calls) must not
keep one key for years: its newest content would go with its oldest."""


def key_scope(kind: str, call_id: str) -> str:
    """The data-key scope of a record: ``consent``, ``system`` or ``call``.

    Consent evidence must outlive transcripts (TCPA, see ``AuditSettings.consent_retention_days``)
    and admin records (``Admin*`` kinds, exports) are the access log, not call content.
    """
    if kind in CONSENT_KINDS:
        return SCOPE_CONSENT
    if not call_id or kind in SYSTEM_KINDS or kind.startswith("Admin"):
        return SCOPE_SYSTEM
    return SCOPE_CALL


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
    db.execute("PRAGMA secure_delete=ON")  # deleted/overwritten cells are zeroed on their page
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
        kek: Key-encryption key for per-call data keys. With a ``store`` (as
            :func:`~appliance.audit.envelope.load_kek` returns it) each shred starts a new KEK
            epoch; a KEK held only in memory cannot be replaced, so a shred then destroys the
            wrapped DEK only.
        signing_key: Ed25519 key for checkpoints (separate from the KEK).
        origin: Checkpoint origin line, e.g. ``"clinic-voice-appliance/<box id>/audit"``.
        checkpoint_file: File the signed checkpoints are appended to (collected off the box).
        synchronous: SQLite ``synchronous`` level, ``"FULL"`` (default) or ``"NORMAL"``.
        replace_lost_kek: ``kek`` is a new key made because the log's KEK was lost (an
            operator's explicit choice): the data keys it cannot open are marked shredded and
            a ``KekEpoch`` record (reason ``kek-lost``) starts its epoch. Otherwise a KEK that
            is not the current epoch's is refused.

    Raises:
        AuditError: The database cannot be opened or its records are unreadable, or ``kek``
            is not the KEK of the log's current epoch (the key was replaced or lost).
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
        replace_lost_kek: bool = False,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.kek = kek
        self.origin = origin
        self.key_name = key_name
        self.checkpoint_file = checkpoint_file
        self._signing_key = signing_key
        self._lock = threading.Lock()
        self._deks: dict[tuple[str, str], tuple[str, bytes, float]] = {}
        self._replace_lost_kek = replace_lost_kek
        try:
            self._db = connect(path, synchronous)
            migrate(self._db)
            self._tree = TreeBuilder()
            for _idx, data in iter_records(self._db):
                self._tree.append(leaf_hash(data))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._open_epoch_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, envelope.EnvelopeError) as exc:
            if hasattr(self, "_db"):
                self._db.conn.close()
            raise AuditError(f"audit log {path} cannot be opened: {exc}") from exc
        if self.kek.store is not None and self.kek.source == "systemd-credential":
            # The credential cannot be destroyed, so it never wraps a DEK itself: move to an
            # epoch KEK (wrapped under it) that a later shred can destroy.
            try:
                self.shred_where({}, epoch_reason="credential-root")
            except AuditError:
                self._db.conn.close()
                raise

    def _current_epoch(self) -> tuple[int, str] | None:
        row = self._db.execute(
            "SELECT epoch, kek_id FROM kek_epochs ORDER BY epoch DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _open_epoch_locked(self) -> None:
        """Match the KEK with the log's current epoch; finish or discard a staged epoch."""
        current = self._current_epoch()
        if current is None:  # a new log, or one written before KEK epochs
            live = {
                r[0] for r in self._db.execute("SELECT kek_id FROM deks WHERE wrapped IS NOT NULL")
            }
            if live and self.kek.kek_id not in live:
                if not self._replace_lost_kek:
                    raise envelope.EnvelopeError(self._kek_mismatch(sorted(live)[0]))
                self._adopt_new_kek_locked(sorted(live)[0])
                return
            self._db.execute(
                "INSERT INTO kek_epochs VALUES (0, ?, ?, 'initial')", [self.kek.kek_id, time.time()]
            )
            return
        if current[1] != self.kek.kek_id and self._replace_lost_kek:
            self._adopt_new_kek_locked(current[1])
            return
        self._sync_kek_locked(current[1])
        store = self.kek.store
        if store is not None and store.pending_file.exists():
            with store.locked():  # the write lock is ours: no shred is staging right now
                store.abort()  # staged by a shred whose transaction never committed

    def _adopt_new_kek_locked(self, lost_kek_id: str) -> None:
        """The log's KEK is gone: its keys are unreadable, so record them as shredded."""
        now = time.time()
        cur = self._db.execute(
            "UPDATE deks SET wrapped = NULL, shredded = ? WHERE kek_id != ? AND shredded IS NULL",
            [now, self.kek.kek_id],
        )
        epoch = self._new_epoch_locked(self.kek, "kek-lost")
        meta = {
            "epoch": epoch,
            "from_kek": lost_kek_id,
            "to_kek": self.kek.kek_id,
            "rewrapped": 0,
            "shredded_keys": cur.rowcount,
            "reason": "kek-lost",
        }
        _, hashes = self._write_locked([Entry(kind="KekEpoch", meta=meta)])
        for h in hashes:  # the caller commits; a rollback closes the log, so no drift
            self._tree.append(h)

    def _kek_mismatch(self, kek_id: str) -> str:
        where = "" if self.kek.store is None else f" from {self.kek.store.current_file}"
        return (
            f"the KEK{where} (id {self.kek.kek_id}, {self.kek.source}) is not the log's "
            f"current KEK (id {kek_id}): it was replaced or lost; the content cannot be opened"
        )

    def _sync_kek_locked(self, kek_id: str) -> None:
        """Follow a KEK epoch another process (or a crash before the rename) left behind."""
        if kek_id == self.kek.kek_id:
            return
        store = self.kek.store
        if store is not None:
            with store.locked():  # not while another process renames the staged KEK
                current = store.load()
                if current.kek_id == kek_id:
                    self.kek = current
                    self._deks.clear()
                    return
                pending = store.pending()
                if pending is not None and pending.kek_id == kek_id:
                    store.promote()  # the database committed this epoch: finish it
                    self.kek = pending
                    self._deks.clear()
                    return
        raise envelope.EnvelopeError(self._kek_mismatch(kek_id))

    @property
    def size(self) -> int:
        """Number of records committed."""
        return self._tree.size

    def _dek(self, call_id: str, scope: str) -> tuple[str, bytes]:
        """The live data key of ``(call_id, scope)`` younger than a day, or a new one."""
        now = time.time()
        cached = self._deks.get((call_id, scope))
        if cached is not None and now - cached[2] < DEK_MAX_AGE_S:
            return cached[0], cached[1]
        row = self._db.execute(
            "SELECT dek_id, wrapped, created FROM deks WHERE call_id = ? AND scope = ?"
            " AND shredded IS NULL AND created > ? ORDER BY created DESC LIMIT 1",
            [call_id, scope, now - DEK_MAX_AGE_S],
        ).fetchone()
        if row is not None:
            dek = envelope.unwrap(self.kek, row[1])
            self._deks[(call_id, scope)] = (row[0], dek, float(row[2]))
            return row[0], dek
        dek = envelope.new_dek()
        dek_id = f"{call_id or 'system'}-{scope}-{int(now * 1000)}-{secrets.token_hex(4)}"
        self._db.execute(
            "INSERT INTO deks (dek_id, call_id, kek_id, wrapped, created, scope)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [dek_id, call_id, self.kek.kek_id, envelope.wrap(self.kek, dek), now, scope],
        )
        self._deks[(call_id, scope)] = (dek_id, dek, now)
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
                indexes, hashes = self._write_locked(entries)
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
            return indexes

    def _write_locked(self, entries: Sequence[Entry]) -> tuple[list[int], list[bytes]]:
        """Seal and insert ``entries`` inside the caller's transaction; the tree is not moved.

        Returns:
            The new records' indexes and leaf hashes, to add to the tree after the commit.
        """
        start = self._tree.size
        rows: list[tuple[int, bytes, bytes]] = []
        hashes = []
        tree = copy.deepcopy(self._tree)  # O(log n) state; committed only on success
        for entry in entries:
            sealed = dek_id = None
            if entry.content is not None:
                dek_id, dek = self._dek(entry.call_id, key_scope(entry.kind, entry.call_id))
                plaintext = json.dumps(entry.content, sort_keys=True).encode()
                sealed = envelope.seal(dek, plaintext, envelope.aad_for(entry.call_id, entry.kind))
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
        self._db.conn.executemany("INSERT INTO records (idx, data, root) VALUES (?, ?, ?)", rows)
        return [row[0] for row in rows], hashes

    def _sync_locked(self) -> None:
        """Catch up with records appended by another process (e.g. ``audit export``).

        Called inside ``BEGIN IMMEDIATE``, so SQLite's write lock keeps writers serialised;
        the in-memory compact range then extends over the rows this process did not write,
        and a KEK epoch another process started is followed (never a DEK under a dead KEK).
        """
        epoch = self._current_epoch()
        if epoch is not None:
            self._sync_kek_locked(epoch[1])
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
                self._sync_locked()
                count = self._rewrap_locked(new_kek)
                self._new_epoch_locked(new_kek, "rotation")
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
                    meta={"from_kek": old, "to_kek": new_kek.kek_id, "rewrapped": count},
                )
            ]
        )
        return count

    def _rewrap_locked(self, new_kek: envelope.Kek) -> int:
        rows = self._db.execute(
            "SELECT dek_id, wrapped FROM deks WHERE wrapped IS NOT NULL"
        ).fetchall()
        for dek_id, wrapped in rows:
            dek = envelope.unwrap(self.kek, wrapped)
            self._db.execute(
                "UPDATE deks SET wrapped = ?, kek_id = ? WHERE dek_id = ?",
                [envelope.wrap(new_kek, dek), new_kek.kek_id, dek_id],
            )
        return len(rows)

    def _new_epoch_locked(self, new_kek: envelope.Kek, reason: str) -> int:
        current = self._current_epoch()
        epoch = 0 if current is None else current[0] + 1
        self._db.execute(
            "INSERT INTO kek_epochs VALUES (?, ?, ?, ?)",
            [epoch, new_kek.kek_id, time.time(), reason],
        )
        return epoch

    def truncate_wal(self, attempts: int = 3) -> bool:
        """Copy the WAL into the database and truncate it to zero bytes.

        ``PRAGMA wal_checkpoint(TRUNCATE)`` waits (busy timeout) for readers that still use
        old frames; it is tried ``attempts`` times.

        Returns:
            ``True`` when the WAL is now empty; ``False`` when readers kept it busy (the old
            frames stay until the next checkpoint; a warning is logged).
        """
        for attempt in range(attempts):
            with self._lock:
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return True
            time.sleep(0.05 * (attempt + 1))
        _LOGGER.warning("audit WAL not truncated: readers kept it busy; retried at the next shred")
        return False

    def shred(
        self,
        *,
        call_id: str | None = None,
        before: float | None = None,
        scopes: Sequence[str] = (SCOPE_CALL,),
    ) -> int:
        """Destroy data keys (crypto-shredding) of one call, or those created before a time.

        Args:
            call_id: Shred this call's keys; else those created before ``before``.
            before: Seconds since the epoch (default: now); ignored with ``call_id``.
            scopes: Key scopes to shred (default: call content only, so consent evidence and
                admin records stay).

        Returns:
            How many data keys were destroyed.

        Raises:
            AuditError: The shred could not be committed (nothing was destroyed).
        """
        if call_id is not None:
            return self.shred_where({scope: ("call_id = ?", [call_id]) for scope in scopes})
        cutoff = before if before is not None else time.time()
        return self.shred_where({scope: ("created < ?", [cutoff]) for scope in scopes})

    def shred_expired(self, cutoffs: dict[str, float]) -> int:
        """Destroy the keys of each scope created before its cutoff (s since the epoch).

        Returns:
            How many data keys were destroyed, all scopes together (one KEK epoch).
        """
        return self.shred_where({scope: ("created < ?", [t]) for scope, t in cutoffs.items()})

    def shred_where(
        self, conditions: dict[str, tuple[str, list[Any]]], *, epoch_reason: str | None = None
    ) -> int:
        """Destroy the live data keys matching a SQL condition per scope, in one transaction.

        The wrapped DEKs are set to NULL (``secure_delete`` zeroes the old cell bytes). When
        any key was destroyed and the KEK has a store, a new KEK epoch starts in the same
        transaction: a fresh KEK is staged, the live DEKs are re-wrapped under it, the epoch is
        recorded in ``kek_epochs`` and as a ``KekEpoch`` record (meta only: epoch, KEK ids,
        counts), and after the commit the old KEK is destroyed. Then the WAL is checkpointed
        and truncated, so ``-wal`` keeps no old page.

        Args:
            conditions: ``{scope: (SQL over deks columns, parameters)}``; scopes outside
                :data:`SCOPES` are refused.
            epoch_reason: Start a new KEK epoch even when no key is destroyed (the reason is
                recorded), e.g. to move off the systemd credential as the direct KEK.

        Returns:
            How many data keys were destroyed.

        Raises:
            AuditError: Unknown scope, or the shred could not be committed; the old KEK and
                every key are then unchanged.
        """
        unknown = set(conditions) - set(SCOPES)
        if unknown:
            raise AuditError(f"unknown key scope(s): {sorted(unknown)}")
        staged: envelope.Kek | None = None
        with self._lock:
            with contextlib.ExitStack() as held:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._sync_locked()
                    ids: list[str] = []
                    for scope, (where, args) in conditions.items():
                        ids += [
                            r[0]
                            for r in self._db.execute(
                                f"SELECT dek_id FROM deks WHERE scope = ? AND ({where})"
                                " AND shredded IS NULL",
                                [scope, *args],
                            )
                        ]
                    now = time.time()
                    self._db.conn.executemany(
                        "UPDATE deks SET wrapped = NULL, shredded = ? WHERE dek_id = ?",
                        [(now, dek_id) for dek_id in ids],
                    )
                    hashes: list[bytes] = []
                    store = self.kek.store
                    if (ids or epoch_reason) and store is not None:
                        held.enter_context(store.locked())  # until the staged KEK is promoted
                        staged = store.stage()
                        rewrapped = self._rewrap_locked(staged)
                        epoch = self._new_epoch_locked(staged, epoch_reason or "shred")
                        meta = {
                            "epoch": epoch,
                            "from_kek": self.kek.kek_id,
                            "to_kek": staged.kek_id,
                            "rewrapped": rewrapped,
                            "shredded_keys": len(ids),
                            "scopes": sorted(conditions),
                            "reason": epoch_reason or "shred",
                        }
                        _, hashes = self._write_locked([Entry(kind="KekEpoch", meta=meta)])
                    self._db.execute("COMMIT")
                except (sqlite3.Error, OSError, envelope.EnvelopeError) as exc:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    if staged is not None and staged.store is not None:
                        staged.store.abort()
                    self._deks.clear()
                    raise AuditError(f"shred failed, nothing destroyed: {exc}") from exc
                for h in hashes:
                    self._tree.append(h)
                self._deks.clear()
                if staged is not None:
                    try:
                        assert staged.store is not None
                        staged.store.promote()
                    except envelope.EnvelopeError:
                        # Committed: the next open or append promotes the staged KEK.
                        _LOGGER.exception("KEK epoch committed; the old KEK file stays for now")
                    self.kek = staged
        if ids:
            self.truncate_wal()
        return len(ids)

    def export_call(self, call_id: str) -> list[dict[str, Any]]:
        """Decrypt one call's records (for an authorised user; the caller logs the export).

        Raises:
            ContentShredded: The call's data key was shredded.
        """
        return self.call_records(call_id, decrypt=True)

    def call_records(
        self, call_id: str, *, decrypt: bool = False, allow_shredded: bool = False
    ) -> list[dict[str, Any]]:
        """One call's records in index order, found through the ``records_call_id`` index.

        Args:
            call_id: The call.
            decrypt: Open sealed content.
            allow_shredded: With ``decrypt``, mark records whose key was shredded with
                ``"shredded": True`` instead of failing (e.g. consent evidence that outlives
                the call's transcript).

        Returns:
            ``{"index", "t" (s since the epoch), "kind", "meta"}`` per record, plus the opened
            ``"content"`` of sealed records when ``decrypt`` is true.

        Raises:
            ContentShredded: ``decrypt``, not ``allow_shredded``, and a data key of the call
                was shredded.
            appliance.audit.envelope.EnvelopeError: ``decrypt`` and the KEK is not the log's.
        """
        with self._lock:
            keys: dict[str, bytes | None] = {}
            if decrypt:
                epoch = self._current_epoch()
                if epoch is not None:  # another process may have started a new KEK epoch
                    self._sync_kek_locked(epoch[1])
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
                    if allow_shredded:
                        item["shredded"] = True
                        out.append(item)
                        continue
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
        """Close the database connection (SQLite checkpoints the WAL when it is the last)."""
        with self._lock:
            self._db.conn.close()
