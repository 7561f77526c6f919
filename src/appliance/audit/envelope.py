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
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
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
    """A key-encryption key: 32 bytes plus a public id (first 8 bytes of its SHA-256, hex)."""

    key: bytes
    source: str

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


def load_kek(key_file: Path, *, create: bool = False) -> Kek:
    """Load the KEK: systemd credential first, then the owner-only key file.

    Args:
        key_file: Fallback key file (32 raw bytes or 64 hex characters, mode 0600).
        create: Create the key file with a random key if it does not exist (first boot).

    Raises:
        EnvelopeError: No usable key; the message names the file.
    """
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / "audit-kek").exists():
        return Kek(
            _read_key_file(Path(cred_dir) / "audit-kek", require_private=False),
            "systemd-credential",
        )
    if not key_file.exists() and create:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
    return Kek(_read_key_file(key_file, require_private=True), "key-file")
