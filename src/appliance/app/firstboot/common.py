"""What every first-boot step shares: the error, the report, the service owner, safe writes.

Files are written atomically through a fsynced temporary file with their mode (and owner) set
before they appear; paths absolute on the box are resolved inside the tree being provisioned.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


class FirstbootError(RuntimeError):
    """First boot cannot complete; the message names the file at fault."""


@dataclass
class FirstbootReport:
    """What one run did. Holds no secret.

    Attributes:
        created: Names of the things this run created (empty on a second run).
        kek_source: ``systemd-creds:tpm2``, ``systemd-creds:host`` or ``key-file``.
        trunk_file: The trunk file (path on the box) that would change the trunk settings this
            run, applied or refused; ``None`` when none would.
        trunk_sha256: Its SHA-256 (hex), for the record.
        trunk_applied: Whether it was applied; ``None`` when no trunk file would change anything.
        trunk_reason: Why it was applied or refused (no content).
        locked_accounts: Accounts whose usable password this run locked.
    """

    created: list[str] = field(default_factory=list)
    kek_source: str = ""
    trunk_file: Path | None = None
    trunk_sha256: str = ""
    trunk_applied: bool | None = None
    trunk_reason: str = ""
    locked_accounts: list[str] = field(default_factory=list)

    def trunk_detail(self) -> str:
        """The trunk decision in one line without content (``""`` when there was none)."""
        if self.trunk_applied is None:
            return ""
        verb = "applied" if self.trunk_applied else "REFUSED, settings unchanged"
        return (
            f"trunk file {self.trunk_file} (sha256 {self.trunk_sha256 or 'unreadable'}) "
            f"{verb}: {self.trunk_reason}"
        )

    def summary(self) -> str:
        """One line for the journal (no secrets)."""
        made = ", ".join(self.created) if self.created else "nothing (already provisioned)"
        line = f"firstboot: created {made}; audit KEK from {self.kek_source}"
        trunk = self.trunk_detail()
        return f"{line}; {trunk}" if trunk else line


@dataclass(frozen=True)
class Owner:
    """A service user's numeric IDs, for files it must own."""

    uid: int
    gid: int


def in_root(root: Path, path: Path) -> Path:
    """``path`` (absolute on the box) inside the tree at ``root``."""
    return root / path.relative_to(path.anchor) if path.is_absolute() else root / path


def _write_atomic(
    path: Path, data: bytes, mode: int, owner: Owner | None, *, replace: bool
) -> None:
    """Write ``path`` through a fsynced temporary file with ``mode`` (and ``owner``) set.

    Args:
        path: The file to write; its directory is created if missing.
        data: The whole content.
        mode: Permission bits, e.g. ``0o600``, whatever the umask.
        owner: Owner to give the file; ``None`` keeps the caller.
        replace: Rename over an existing file; otherwise link the file in, never overwriting.

    Raises:
        FileExistsError: ``replace`` is false and the file (or the temporary one) exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), owner.uid, owner.gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_private(path: Path, data: bytes, mode: int = 0o600, owner: Owner | None = None) -> None:
    """Create ``path`` atomically with ``mode``; never overwrite an existing file.

    Raises:
        FileExistsError: The file appeared meanwhile.
    """
    _write_atomic(path, data, mode, owner, replace=False)


def ensure_mode(path: Path, mode: int, owner: Owner | None) -> None:
    """Give an existing ``path`` permission bits ``mode`` (and ``owner``), where they differ.

    Raises:
        OSError: ``path`` is missing or cannot be changed.
    """
    st = path.stat()
    if stat.S_IMODE(st.st_mode) != mode:
        path.chmod(mode)
    if owner is not None and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.chown(path, owner.uid, owner.gid)


def private_dir(path: Path, owner: Owner | None, mode: int = 0o700) -> None:
    """Create the directory ``path`` (and its parents) if missing; give it ``mode`` and ``owner``.

    Raises:
        OSError: The directory cannot be made or changed.
    """
    path.mkdir(parents=True, exist_ok=True)
    ensure_mode(path, mode, owner)


def replace_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``path`` atomically (temporary file, fsync, rename over the old one)."""
    _write_atomic(path, text.encode("utf-8"), mode, None, replace=True)


def text_or_none(path: Path) -> str | None:
    """The UTF-8 text of ``path``, or ``None`` when it is missing or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
