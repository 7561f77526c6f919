"""Encryption at rest: AES-256-GCM envelopes with a data key (DEK) per call, wrapped by a KEK.

* Content is sealed as ``nonce (12 bytes) || AES-256-GCM ciphertext+tag`` (NIST SP 800-38D)
  with associated data binding it to its record (call id and kind), so ciphertext cannot be
  moved to another record unnoticed.
* Each call gets a fresh random 256-bit DEK; the DEK is stored only wrapped with the KEK using
  AES key wrap (RFC 3394). Destroying a wrapped DEK makes that call's content unrecoverable
  (crypto-shredding) while the log, which holds only ciphertext, still verifies.
* The KEK comes, in order of preference, from a systemd credential
  (``$CREDENTIALS_DIRECTORY/audit-kek``, see ``LoadCredentialEncrypted=``), a TPM2-sealed blob
  (not available on this build host; see docs), or a key file readable only by its owner.
* KEK epochs (:class:`KekStore`): a shred re-wraps the live DEKs under a fresh KEK and destroys
  the old one, so a backup taken before the shred holds only DEKs wrapped under a KEK that no
  longer exists (docs/decisions/0014-kek-epochs-and-forensic-shred.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

NONCE_BYTES = 12
KEY_BYTES = 32


class EnvelopeError(ValueError):
    """A key is missing, malformed or wrong, or a ciphertext failed authentication."""


@dataclass(frozen=True)
class Kek:
    """A key-encryption key: 32 bytes plus a public id (first 8 bytes of its SHA-256, hex).

    Attributes:
        key: The 32 key bytes (never in ``repr``).
        source: ``"key-file"``, ``"systemd-credential"`` (the credential itself, epoch 0) or
            ``"systemd-credential+epoch"`` (an epoch KEK wrapped under the credential).
        store: Where the KEK lives and how a new epoch replaces it; ``None`` for a KEK held
            only in memory, which cannot be replaced.
    """

    key: bytes = field(repr=False)
    source: str
    store: KekStore | None = field(default=None, repr=False, compare=False)

    @property
    def kek_id(self) -> str:
        """Stable, non-secret identifier of this KEK."""
        return hashlib.sha256(b"appliance-kek-id\x00" + self.key).hexdigest()[:16]


def new_dek() -> bytes:
    """A fresh random 256-bit data key."""
    return secrets.token_bytes(KEY_BYTES)


def wrap(kek: Kek, dek: bytes) -> bytes:
    """Wrap a DEK with the KEK (AES key wrap, RFC 3394)."""
    return aes_key_wrap(kek.key, dek)


def unwrap(kek: Kek, wrapped: bytes) -> bytes:
    """Unwrap a DEK.

    Raises:
        EnvelopeError: Wrong KEK or corrupted wrapped key.
    """
    try:
        return aes_key_unwrap(kek.key, wrapped)
    except InvalidUnwrap as exc:
        raise EnvelopeError("data key does not unwrap with this KEK") from exc


def seal(dek: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` bound to ``aad``: ``nonce || ciphertext+tag``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(dek).encrypt(nonce, plaintext, aad)


def open_sealed(dek: bytes, blob: bytes, aad: bytes) -> bytes:
    """Decrypt a sealed blob.

    Raises:
        EnvelopeError: Wrong key, wrong associated data, or tampered ciphertext.
    """
    if len(blob) < NONCE_BYTES + 16:
        raise EnvelopeError("sealed blob too short")
    try:
        return AESGCM(dek).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise EnvelopeError("ciphertext failed authentication") from exc


def aad_for(call_id: str, kind: str) -> bytes:
    """Associated data binding a sealed blob to its record."""
    return f"appliance-audit-v1\x00{call_id}\x00{kind}".encode()


def _read_key_file(path: Path, *, require_private: bool) -> bytes:
    try:
        st = path.stat()
    except OSError as exc:
        raise EnvelopeError(f"{path}: {exc.strerror or exc}") from exc
    if require_private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EnvelopeError(f"{path}: key file must be readable by its owner only (chmod 600)")
    data = path.read_bytes()
    if len(data) != KEY_BYTES:  # raw keys may contain any byte: strip only hex text
        try:
            data = bytes.fromhex(data.decode("ascii").strip())
        except ValueError as exc:
            raise EnvelopeError(f"{path}: not a 32-byte key (raw or hex)") from exc
    if len(data) != KEY_BYTES:
        raise EnvelopeError(f"{path}: not a 32-byte key (raw or hex)")
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_private(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600, must not exist) with ``data``, durably (file and directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _overwrite_and_unlink(path: Path) -> None:
    """Overwrite a key file's bytes with zeros in place, then unlink it (best effort erase)."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        os.write(fd, b"\0" * max(os.fstat(fd).st_size, KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


CREDENTIAL_NAME = "audit-kek"
"""The systemd credential's name (``LoadCredentialEncrypted=audit-kek:...``)."""

WRAPPED_KEY_BYTES = KEY_BYTES + 8
"""An epoch KEK wrapped under the credential with AES key wrap (RFC 3394): 40 bytes."""


class KekStore:
    """Where the audit KEK lives, and how a new KEK epoch replaces it.

    Crypto-shredding destroys a call's wrapped DEK; a KEK epoch makes that hold for backups
    too. On a shred the live DEKs are re-wrapped under a fresh KEK (the next epoch), and the
    old KEK is destroyed, so a copy of the database taken before the shred holds only DEKs
    wrapped under a KEK that exists nowhere any more.

    Two sources:

    * **Key file** (no systemd credential): ``key_file`` holds the epoch KEK itself. A new
      epoch is staged in ``<key_file>.next``, the database commits the re-wrapped DEKs, then the
      staged file replaces ``key_file`` (``rename(2)``) and the old file's blocks are
      overwritten with zeros through a descriptor kept open across the rename.
    * **systemd credential** ``audit-kek``: the credential (TPM2- or host-key-sealed, handed
      to the service read-only in ``$CREDENTIALS_DIRECTORY``) cannot be replaced from the
      service. It is the *root*: each epoch KEK is random and is stored wrapped under it
      (RFC 3394) in ``<key_file>.epoch`` (staged in ``<key_file>.epoch.next``). Destroying an
      epoch file destroys that epoch's KEK. Limit: a backup that holds both the audit database
      *and* the key directory from before a shred can still be opened by whoever can also
      decrypt the credential, i.e. on this box's TPM (or with its host key); keep the key
      directory out of backups.

    Crash safety: the staged file is written (and fsynced) before the database commits, and
    it replaces the current one only after the commit. The log's ``kek_epochs`` table names
    the KEK id of the current epoch, so on the next open the staged KEK is promoted when the
    database committed it, and discarded when it did not (see ``AuditLog``).

    Erasure is at the file level: on copy-on-write file systems or flash with wear levelling
    the old blocks may survive physically; the data partition's LUKS encryption covers that.

    Args:
        key_file: The ``[audit] kek_file`` path (the KEK itself, or the base name of the
            epoch files when the credential is used).
        credential: The decrypted credential file, or ``None`` for the key-file source.
    """

    def __init__(self, key_file: Path, credential: Path | None = None) -> None:
        self.key_file = key_file
        self.credential = credential

    @property
    def current_file(self) -> Path:
        """The file holding the current epoch's KEK (wrapped when the credential is used)."""
        if self.credential is None:
            return self.key_file
        return self.key_file.with_name(self.key_file.name + ".epoch")

    @property
    def pending_file(self) -> Path:
        """Where a new epoch is staged until the database has committed it."""
        current = self.current_file
        return current.with_name(current.name + ".next")

    def _root(self) -> bytes:
        assert self.credential is not None
        return _read_key_file(self.credential, require_private=False)

    def _read(self, path: Path) -> bytes:
        if self.credential is None:
            return _read_key_file(path, require_private=True)
        try:
            st = path.stat()
            wrapped = path.read_bytes()
        except OSError as exc:
            raise EnvelopeError(f"{path}: {exc.strerror or exc}") from exc
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EnvelopeError(f"{path}: key file must be readable by its owner only (chmod 600)")
        if len(wrapped) != WRAPPED_KEY_BYTES:
            raise EnvelopeError(f"{path}: not a wrapped {KEY_BYTES}-byte key")
        try:
            return aes_key_unwrap(self._root(), wrapped)
        except InvalidUnwrap as exc:
            raise EnvelopeError(f"{path}: does not unwrap with the audit-kek credential") from exc

    def _kek(self, key: bytes) -> Kek:
        source = "key-file" if self.credential is None else "systemd-credential+epoch"
        return Kek(key, source, self)

    def load(self) -> Kek:
        """The current KEK.

        Raises:
            EnvelopeError: The key file (or credential) is missing, unsafe or malformed; the
                message names the file.
        """
        if self.credential is not None and not self.current_file.exists():
            return Kek(self._root(), "systemd-credential", self)  # epoch 0: the credential
        return self._kek(self._read(self.current_file))

    def pending(self) -> Kek | None:
        """The staged next-epoch KEK, or ``None`` when none is staged.

        Raises:
            EnvelopeError: A staged file exists but is unreadable or malformed.
        """
        if not self.pending_file.exists():
            return None
        return self._kek(self._read(self.pending_file))

    def stage(self) -> Kek:
        """Make a fresh random KEK and store it durably as the pending epoch.

        Raises:
            EnvelopeError: The staged file cannot be written.
        """
        key = secrets.token_bytes(KEY_BYTES)
        data = key if self.credential is None else aes_key_wrap(self._root(), key)
        try:
            _overwrite_and_unlink(self.pending_file)  # a stale, never committed stage
            _write_new_private(self.pending_file, data)
        except OSError as exc:
            raise EnvelopeError(f"{self.pending_file}: {exc.strerror or exc}") from exc
        return self._kek(key)

    def promote(self) -> None:
        """Make the staged KEK current and destroy the old one (after the database commit).

        The old file is opened first, the staged file renamed over it, and the old inode's
        bytes overwritten with zeros and fsynced through the open descriptor (skipped when the
        old file is not writable; the rename needs only the directory, as staging did).

        Raises:
            EnvelopeError: Nothing is staged, or the rename failed.
        """
        current, pending = self.current_file, self.pending_file
        try:
            old_fd: int | None = os.open(current, os.O_WRONLY)
        except OSError:  # absent (epoch 0 of the credential) or read-only: the rename still goes
            old_fd = None
        try:
            try:
                os.replace(pending, current)
            except FileNotFoundError:
                if pending.exists():
                    raise
                return  # another process promoted it first
            _fsync_dir(current.parent)
            if old_fd is not None:
                os.write(old_fd, b"\0" * max(os.fstat(old_fd).st_size, KEY_BYTES))
                os.fsync(old_fd)
        except OSError as exc:
            raise EnvelopeError(f"{pending}: cannot replace {current}: {exc}") from exc
        finally:
            if old_fd is not None:
                os.close(old_fd)

    def abort(self) -> None:
        """Destroy a staged KEK the database never committed."""
        try:
            _overwrite_and_unlink(self.pending_file)
        except OSError:
            pass

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (``flock`` on ``<current file>.lock``) across processes.

        A shred holds it from staging to promotion, and a process following another's epoch
        holds it while it looks at (and may promote) the staged file, so no process renames a
        KEK another is still staging. Not re-entrant.

        Raises:
            EnvelopeError: The lock file cannot be opened.
        """
        path = self.current_file.with_name(self.current_file.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EnvelopeError(f"{path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def load_kek(key_file: Path, *, create: bool = False) -> Kek:
    """Load the current KEK: systemd credential (with its epoch file) first, else the key file.

    Args:
        key_file: Fallback key file (32 raw bytes or 64 hex characters, mode 0600); with the
            credential, the base name of its epoch files (see :class:`KekStore`).
        create: Create the key file with a random key if it does not exist (first boot).

    Returns:
        The KEK, with the :class:`KekStore` that replaces it at each epoch.

    Raises:
        EnvelopeError: No usable key; the message names the file.
    """
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).exists():
        return KekStore(key_file, Path(cred_dir) / CREDENTIAL_NAME).load()
    if not key_file.exists() and create:
        try:
            _write_new_private(key_file, secrets.token_bytes(KEY_BYTES))
        except OSError as exc:
            raise EnvelopeError(f"{key_file}: {exc.strerror or exc}") from exc
    return KekStore(key_file).load()
