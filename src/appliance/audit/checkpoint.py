r"""Signed checkpoints: transparency-dev checkpoint bodies in Ed25519 signed notes.

A checkpoint commits to the log's Merkle tree head (see :mod:`appliance.audit.merkle`). The
body is the transparency-dev / C2SP ``tlog-checkpoint`` format::

    <origin>\n
    <decimal tree size>\n
    <base64 root hash>\n

and it is wrapped in a ``golang.org/x/mod/sumdb/note`` signed note: the body, a blank line, and
one signature line per key::

    — <key name> <base64(key_id[4] || ed25519_signature[64])>\n

``key_id`` is the first four bytes of ``SHA-256(key_name || "\n" || 0x01 || public_key)``
(0x01 is the note algorithm id for Ed25519); the signature covers the body including its final
newline but not the blank line. Notes produced here verify with Go's ``note.Open`` and vice
versa. Optional checkpoint extension lines are rejected, so a parsed checkpoint always
re-serialises to the exact bytes that were signed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ALG_ED25519",
    "Checkpoint",
    "CheckpointError",
    "KeyFileError",
    "key_id",
    "load_or_create_signing_key",
    "open_note",
    "public_key_bytes",
    "sign_note",
]

ALG_ED25519 = 0x01
"""Signed-note algorithm identifier for Ed25519 (``golang.org/x/mod/sumdb/note``)."""

_SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_SIGNATURES = 100
_HASH_SIZE = 32


class CheckpointError(ValueError):
    """A checkpoint or signed note is malformed or its signature does not verify."""


class KeyFileError(ValueError):
    """The signing key file is unsafe, unreadable or not an Ed25519 key."""


def _b64decode(text: str) -> bytes:
    """Strict standard base64 (RFC 4648 §4): padding required, no stray characters."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise CheckpointError("invalid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise CheckpointError("non-canonical base64")
    return raw


def _is_valid_name(name: str) -> bool:
    """Note key names are non-empty and contain no whitespace and no ``+``."""
    return bool(name) and not any(c.isspace() for c in name) and "+" not in name


def _check_note_text(text: str, what: str) -> None:
    """Signed notes are UTF-8 with no control characters other than newline."""
    for c in text:
        if c < " " and c != "\n":
            raise CheckpointError(f"{what} contains a control character")
        if "\ud800" <= c <= "\udfff":
            raise CheckpointError(f"{what} is not valid UTF-8")


@dataclass(frozen=True)
class Checkpoint:
    """A log's commitment to its tree head.

    Attributes:
        origin: Unique identity of the log, e.g. ``"appliance.example/audit"``.
        size: Number of leaves in the tree.
        root: The 32-byte RFC 6962 Merkle Tree Hash at ``size``.
    """

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or self.origin != self.origin.strip():
            raise CheckpointError("origin must be a non-empty single line without edge spaces")
        _check_note_text(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise CheckpointError(f"size must be a non-negative int, got {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != _HASH_SIZE:
            raise CheckpointError(f"root must be {_HASH_SIZE} bytes")

    def body(self) -> str:
        r"""Serialise to the checkpoint note body.

        Returns:
            ``origin\n`` + decimal ``size\n`` + ``base64(root)\n``.
        """
        root64 = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root64}\n"

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse a checkpoint note body.

        Args:
            body: Exactly three newline-terminated lines: origin, decimal size, base64 root.

        Returns:
            The checkpoint, whose :meth:`body` equals ``body``.

        Raises:
            CheckpointError: If the body is malformed or not in canonical form.
        """
        if not isinstance(body, str):
            raise CheckpointError("checkpoint body must be str")
        if not body.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) != 3:
            raise CheckpointError(f"checkpoint body must have 3 lines, got {len(lines)}")
        origin, size_text, root_text = lines
        if not size_text.isascii() or not size_text.isdigit():
            raise CheckpointError("checkpoint size is not a decimal number")
        if size_text != "0" and size_text.startswith("0"):
            raise CheckpointError("checkpoint size has leading zeros")
        try:
            root = _b64decode(root_text)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint root: {exc}") from exc
        checkpoint = cls(origin=origin, size=int(size_text), root=root)
        if checkpoint.body() != body:  # defensive: only canonical bodies are accepted
            raise CheckpointError("checkpoint body is not canonical")
        return checkpoint


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Return the raw 32-byte Ed25519 public key.

    Args:
        key: A private or public Ed25519 key.

    Returns:
        The public key in raw encoding (RFC 8032).
    """
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key_name: str, public_key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    r"""Compute the signed-note key hash for a named Ed25519 key.

    Args:
        key_name: The signer name shown in the signature line.
        public_key: The key (a private key is reduced to its public half).

    Returns:
        First 4 bytes of ``SHA-256(key_name || "\n" || 0x01 || public_key)``.
    """
    data = key_name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key_bytes(public_key)
    return hashlib.sha256(data).digest()[:4]


def sign_note(body: str, key: Ed25519PrivateKey, key_name: str) -> str:
    r"""Sign a note body with Ed25519 in the ``sumdb/note`` format.

    Args:
        body: Note text; must end with a newline (a checkpoint :meth:`Checkpoint.body`).
        key: The signing key.
        key_name: Signer name (non-empty, no whitespace, no ``+``), usually the log origin.

    Returns:
        ``body + "\n" + "— " + key_name + " " + base64(key_id + signature) + "\n"``.

    Raises:
        CheckpointError: If the body or key name is not valid for a signed note.
    """
    if not body.endswith("\n"):
        raise CheckpointError("note body must end with a newline")
    if "\n\n" in body or body.startswith("\n"):
        raise CheckpointError("note body must not contain blank lines")
    _check_note_text(body, "note body")
    if not _is_valid_name(key_name):
        raise CheckpointError("key name must be non-empty without spaces or '+'")
    _check_note_text(key_name, "key name")
    signature = key.sign(body.encode("utf-8"))
    sig64 = base64.b64encode(key_id(key_name, key) + signature).decode("ascii")
    return f"{body}\n{_SIG_PREFIX}{key_name} {sig64}\n"


def _verified_body(text: str, public_key: Ed25519PublicKey, key_name: str) -> str:
    """Check the note envelope and the named key's signature; return the signed body."""
    if not isinstance(text, str):
        raise CheckpointError("malformed note: not text")
    _check_note_text(text, "note")
    split = text.rfind("\n\n")
    if split < 0:
        raise CheckpointError("no signature line: missing blank line before signatures")
    body, sig_block = text[: split + 1], text[split + 2 :]
    if not sig_block:
        raise CheckpointError("no signature line")
    if not sig_block.endswith("\n"):
        raise CheckpointError("malformed note: signature block must end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise CheckpointError("malformed note: too many signature lines")
    want_id = key_id(key_name, public_key)
    matched = None
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError("malformed note: signature line must start with an em dash")
        name, sep, sig64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _is_valid_name(name) or not sig64:
            raise CheckpointError("malformed note: bad signature line")
        try:
            raw = _b64decode(sig64)
        except CheckpointError as exc:
            raise CheckpointError(f"malformed note: signature {exc}") from exc
        if len(raw) < 5:
            raise CheckpointError("malformed note: signature too short")
        if name == key_name and raw[:4] == want_id:
            matched = raw[4:]
            break
    if matched is None:
        raise CheckpointError(f"unknown key: no signature by {key_name!r} with this public key")
    try:
        public_key.verify(matched, body.encode("utf-8"))
    except InvalidSignature as exc:
        raise CheckpointError(f"bad signature by {key_name!r}") from exc
    return body


def open_note(text: str, public_key: Ed25519PublicKey, key_name: str) -> Checkpoint:
    """Verify a signed checkpoint note and parse its body.

    Signatures by other keys are ignored (a witness may have cosigned); the note must carry a
    valid signature by ``key_name`` with ``public_key``.

    Args:
        text: The complete signed note.
        public_key: The log's Ed25519 public key.
        key_name: The name the log signs with.

    Returns:
        The verified checkpoint.

    Raises:
        CheckpointError: Naming the failure: no signature line, unknown key, bad signature,
            malformed note or malformed body.
    """
    body = _verified_body(text, public_key, key_name)
    try:
        return Checkpoint.parse(body)
    except CheckpointError as exc:
        raise CheckpointError(f"malformed body: {exc}") from exc


def _load_key_bytes(data: bytes, path: Path) -> Ed25519PrivateKey:
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: PEM key is not Ed25519")
        return key
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    raise KeyFileError(f"{path}: expected a PEM PKCS#8 key or 32 raw bytes, got {len(data)} bytes")


def _read_existing(path: Path) -> Ed25519PrivateKey:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open signing key: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: signing key is not a regular file")
        if st.st_mode & 0o007:
            raise KeyFileError(
                f"{path}: signing key is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 on it"
            )
        data = f.read()
    return _load_key_bytes(data, path)


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the checkpoint signing key, creating it on first use.

    An existing file may hold a PEM PKCS#8 key or the raw 32-byte Ed25519 seed. A new key is
    written as unencrypted PEM PKCS#8 with mode 0600: it goes to a temporary file in the same
    directory, is fsynced, then hard-linked into place, so the path never holds a partial key
    and a concurrent creator cannot be overwritten (the loser loads the winner's key).

    Args:
        path: Location of the key file.

    Returns:
        The Ed25519 signing key.

    Raises:
        KeyFileError: If the file is readable or writable by other users, is not a regular
            file, or does not hold an Ed25519 private key.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        return _read_existing(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_existing(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return key
