"""What the system page shows that the admin process reads itself (no agent needed).

* Update history: the ``ServiceStarted`` records of the audit log (version, the version before
  it when it changed, whether the last run ended uncleanly), read from the audit database
  opened read-only. Those records are clear metadata: no key is needed, nothing is decrypted.
* Model digests: the manifest copy kept in the model store (``<store>/manifest.toml``, with
  its ``manifest.lock.toml``), parsed with :mod:`tomllib`; the admin never imports
  :mod:`appliance.models` (privilege separation).
* The last signed checkpoint (the last line of ``[audit] checkpoint_file``), its signature
  checked with the public key beside the signing key.
* Disk use of the data directory and the size of each database (with its WAL).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.audit.checkpoint import CheckpointError, open_note
from appliance.audit.record import RecordError, decode
from appliance.audit.service import KEY_NAME, public_key_path
from appliance.audit.store import CALL_ID_SQL
from appliance.config.settings import ApplianceSettings, AuditSettings

#: How much of the end of the checkpoint file is read to find its last line (bytes).
CHECKPOINT_TAIL = 64 * 1024


@dataclass(frozen=True)
class ServiceStart:
    """One start of the agent, from a ``ServiceStarted`` audit record.

    Attributes:
        index: The record's index in the audit log.
        t: When it started (seconds since the epoch).
        version: The version that started.
        previous_version: The version of the start before, when it differed (an update or a
            rollback); ``""`` otherwise.
        previous_exit: ``"unclean"`` when the run before ended without a clean stop.
    """

    index: int
    t: float
    version: str
    previous_version: str
    previous_exit: str


class Unreadable(RuntimeError):
    """A file the system page reads is missing or unreadable; the message names it."""


def update_history(audit_db: Path, limit: int = 50) -> list[ServiceStart]:
    """The agent's starts, newest first, from the audit database (opened read-only).

    Only records outside calls are looked at (the database indexes records by call id), so
    this does not scan every call's records.

    Args:
        audit_db: ``[audit] db``.
        limit: Most starts returned.

    Raises:
        Unreadable: The database is missing, unreadable or not an audit database.
    """
    if not audit_db.is_file():
        raise Unreadable(f"{audit_db}: no audit database")
    try:
        conn = sqlite3.connect(f"{audit_db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise Unreadable(f"{audit_db}: {exc}") from exc
    try:
        rows = conn.execute(
            f"SELECT idx, data FROM records WHERE {CALL_ID_SQL} = '' "
            'AND instr(data, CAST(\'"kind":"ServiceStarted"\' AS BLOB)) > 0 '
            "ORDER BY idx DESC LIMIT ?",
            [limit],
        ).fetchall()
    except sqlite3.Error as exc:
        raise Unreadable(f"{audit_db}: {exc}") from exc
    finally:
        conn.close()
    starts = []
    for idx, data in rows:
        try:
            record = decode(bytes(data))
        except RecordError:
            continue  # a damaged record: verification reports it
        if record.kind != "ServiceStarted":
            continue
        starts.append(
            ServiceStart(
                index=int(idx),
                t=record.t,
                version=str(record.meta.get("version", "")),
                previous_version=str(record.meta.get("previous_version", "")),
                previous_exit=str(record.meta.get("previous_exit", "")),
            )
        )
    return starts


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its path within the model, SHA-256 (hex) and size in bytes."""

    path: str
    sha256: str
    size: int | None


@dataclass(frozen=True)
class ModelDigest:
    """One model of the store's manifest and whether the settings use it.

    Attributes:
        name: The manifest's model name.
        role: ``stt``, ``llm``, ``tts``, ``tts-voices``, ``vad``, ``turn`` or ``embedding``.
        dest: Its path in the store.
        in_use: A ``[models]`` setting points at it.
        files: Its files with their digests (the lock file's digest for an unpinned file).
    """

    name: str
    role: str
    dest: str
    in_use: bool
    files: list[ModelFile] = field(default_factory=list)


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise Unreadable(f"{path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise Unreadable(f"{path}: not valid TOML ({exc})") from exc


def model_digests(settings: ApplianceSettings) -> list[ModelDigest]:
    """The models of the store's manifest with their file digests, those in use first.

    Raises:
        Unreadable: The store's manifest (or its lock file) is missing or not TOML.
    """
    m = settings.models
    store = Path(m.store)
    manifest = _read_toml(store / "manifest.toml")
    lock_file = store / "manifest.lock.toml"
    pins: dict[tuple[str, str], str] = {}
    if lock_file.exists():
        entries = _read_toml(lock_file).get("file")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                pins[(str(entry.get("model")), str(entry.get("path")))] = str(entry.get("sha256"))
    used = {m.stt, m.llm, m.tts, m.tts_voices, m.vad, m.turn, m.embedding}
    out = []
    models = manifest.get("model", [])
    for model in models if isinstance(models, list) else []:
        if not isinstance(model, dict):
            continue
        name, dest = str(model.get("name", "")), str(model.get("dest", ""))
        files = []
        raw_files = model.get("files", [])
        for f in raw_files if isinstance(raw_files, list) else []:
            if not isinstance(f, dict):
                continue
            path = str(f.get("path", ""))
            digest = str(f.get("sha256", ""))
            if digest == "unpinned":
                digest = pins.get((name, path), "unpinned")
            size = f.get("size")
            files.append(ModelFile(path, digest, size if isinstance(size, int) else None))
        in_use = dest in used or any(dest.startswith(u.rstrip("/") + "/") for u in used)
        out.append(ModelDigest(name, str(model.get("role", "")), dest, in_use, files))
    return sorted(out, key=lambda d: (not d.in_use, d.role, d.name))


@dataclass(frozen=True)
class CheckpointInfo:
    """The last signed checkpoint of the audit log.

    Attributes:
        size: Records it commits to.
        origin: The log's origin line.
        root: Base64 Merkle root (RFC 6962) it commits to.
        written_at: The checkpoint file's modification time (seconds since the epoch).
        signature_ok: The signature verifies with the box's public key; ``None``: the public
            key could not be read.
        problem: Why it does not verify (or why the key could not be read).
    """

    size: int
    origin: str
    root: str
    written_at: float
    signature_ok: bool | None
    problem: str = ""


def _public_key(settings: AuditSettings) -> Ed25519PublicKey:
    raw = bytes.fromhex(public_key_path(settings).read_text(encoding="ascii").strip())
    return Ed25519PublicKey.from_public_bytes(raw)


def last_checkpoint(settings: AuditSettings) -> CheckpointInfo | None:
    """The last line of the checkpoint file, its signature checked; ``None``: no checkpoint.

    Raises:
        Unreadable: The file cannot be read or its last line is not a checkpoint record.
    """
    path = settings.checkpoint_file
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            end = handle.tell()
            handle.seek(max(0, end - CHECKPOINT_TAIL))
            tail = handle.read()
            mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unreadable(f"{path}: {exc.strerror or exc}") from exc
    lines = [line for line in tail.split(b"\n") if line.strip()]
    if not lines:
        return None
    try:
        entry = json.loads(lines[-1])
        note = str(entry["note"])
        body = note.split("\n\n", 1)[0].split("\n")
        origin, size, root = body[0], int(body[1]), body[2]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise Unreadable(f"{path}: the last line is not a checkpoint ({exc})") from exc
    try:
        public = _public_key(settings)
    except (OSError, ValueError) as exc:
        return CheckpointInfo(size, origin, root, mtime, None, f"no public key: {exc}")
    try:
        open_note(note, public, KEY_NAME)
    except CheckpointError as exc:
        return CheckpointInfo(size, origin, root, mtime, False, str(exc))
    return CheckpointInfo(size, origin, root, mtime, True)


@dataclass(frozen=True)
class DiskInfo:
    """Disk use of the data directory and the databases in it.

    Attributes:
        directory: The data directory (the parent of ``[store] metadata_db``).
        total: Bytes of its file system; ``used`` and ``free`` likewise (``free``: available to
            unprivileged processes).
        files: ``(label, path, bytes)`` of each database, its WAL included; ``None``: missing.
    """

    directory: Path
    total: int
    used: int
    free: int
    files: list[tuple[str, Path, int | None]]

    @property
    def used_percent(self) -> float:
        """Used share of the file system, 0-100."""
        return 100.0 * self.used / self.total if self.total else 0.0


def _size(path: Path) -> int | None:
    total: int | None = None
    for candidate in (path, path.with_name(path.name + "-wal")):
        try:
            total = (total or 0) + candidate.stat().st_size
        except OSError:
            continue
    return total


def disk_use(settings: ApplianceSettings) -> DiskInfo:
    """Disk use of the data directory and the size of each database.

    Raises:
        Unreadable: The data directory does not exist or cannot be examined.
    """
    directory = Path(settings.store.metadata_db).parent
    try:
        usage = shutil.disk_usage(directory)
    except OSError as exc:
        raise Unreadable(f"{directory}: {exc.strerror or exc}") from exc
    files: list[tuple[str, Path, int | None]] = [
        (label, Path(path), _size(Path(path)))
        for label, path in (
            ("Call metadata", settings.store.metadata_db),
            ("Audit log", settings.audit.db),
            ("Calendar", settings.scheduling.db),
            ("Admin", settings.admin.db),
        )
    ]
    return DiskInfo(directory, usage.total, usage.used, usage.free, files)
