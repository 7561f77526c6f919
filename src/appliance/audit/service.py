"""Opening the audit log from settings, and the ``appliance audit`` commands."""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.audit import envelope
from appliance.audit.checkpoint import KeyFileError, load_or_create_signing_key, public_key_bytes
from appliance.audit.store import (
    SCOPE_CALL,
    SCOPE_CONSENT,
    SCOPE_SYSTEM,
    AuditError,
    AuditLog,
    Entry,
)
from appliance.audit.verify import VerifyReport, verify
from appliance.config.settings import AuditSettings

KEY_NAME = "appliance-audit"


def public_key_path(settings: AuditSettings) -> Path:
    """Where the checkpoint verification key (raw Ed25519 public key, hex) is kept."""
    return settings.signing_key_file.with_suffix(".pub")


def open_audit(settings: AuditSettings) -> AuditLog:
    """Load the keys and open the log; keys are created only for a brand-new log.

    A missing key is created when the log does not exist yet (first start), or when
    ``[audit] create_keys`` asks for it explicitly. Beside an existing log a missing key is an
    error, never a silent new key: a new KEK would leave every sealed record unreadable and a
    new signing key would break the chain of signed checkpoints.

    Raises:
        AuditError: A key is missing beside an existing log, or a key or the database is
            unusable; the message names the file.
    """
    missing = [
        name
        for name, path in (("signing", settings.signing_key_file), ("kek", settings.kek_file))
        if not path.exists()
    ]
    create = settings.create_keys or not settings.db.exists()
    try:
        if not create and not settings.signing_key_file.exists():
            raise AuditError(
                f"audit signing key missing: {settings.signing_key_file} (the log "
                f"{settings.db} exists; set [audit] create_keys = true to make a new key)"
            )
        signing = load_or_create_signing_key(settings.signing_key_file)
        kek = envelope.load_kek(settings.kek_file, create=create)
    except envelope.EnvelopeError as exc:
        if not create and not settings.kek_file.exists():
            raise AuditError(
                f"audit KEK missing: {settings.kek_file} (and no systemd credential "
                f"{envelope.CREDENTIAL_NAME}); the log {settings.db} exists, so no new key is "
                "made: restore the key, or set [audit] create_keys = true to lose its content"
            ) from exc
        raise AuditError(f"audit keys: {exc}") from exc
    except (KeyFileError, OSError) as exc:
        raise AuditError(f"audit keys: {exc}") from exc
    pin_public_key(settings, public_key_bytes(signing))
    log = AuditLog(
        settings.db,
        kek,
        signing,
        origin=settings.origin,
        checkpoint_file=settings.checkpoint_file,
        key_name=KEY_NAME,
        replace_lost_kek="kek" in missing and settings.db.exists() and settings.create_keys,
    )
    # Key operations are audited too. A KEK from the systemd credential was not made here (the
    # absent key file is then simply unused), so only a key file this call created counts.
    created = [n for n in missing if n != "kek" or kek.source == "key-file"]
    if created:
        meta = {"keys": created, "kek_id": kek.kek_id, "kek_source": kek.source}
        log.append([Entry(kind="KeyCreated", meta=meta)])
    return log


def read_public_key(path: Path) -> Ed25519PublicKey:
    """Read a raw Ed25519 public key written as hex (one line), as first boot writes it.

    Raises:
        OSError: The file cannot be read.
        ValueError: It does not hold 32 bytes of hex.
    """
    raw = bytes.fromhex(path.read_text(encoding="ascii").strip())
    return Ed25519PublicKey.from_public_bytes(raw)


def pin_public_key(settings: AuditSettings, signing_public: bytes) -> None:
    """Check the signing key against the public key pinned at enrolment; pin it on first boot.

    The ``.pub`` beside the signing key is written once, when there is no audit log yet, and
    never rewritten from whatever signing key is present afterwards: a swapped signing key would
    otherwise re-pin itself. Witnesses keep their own copy of it (the trust anchor off the box).

    Args:
        settings: Audit settings (key and database paths).
        signing_public: The raw 32-byte public half of the loaded signing key.

    Raises:
        AuditError: The pinned key is unreadable, differs from the signing key, or is missing
            beside an existing log.
    """
    pub = public_key_path(settings)
    if pub.exists():
        try:
            pinned = public_key_bytes(read_public_key(pub))
        except (OSError, ValueError) as exc:
            raise AuditError(f"pinned public key {pub} is unreadable: {exc}") from exc
        if pinned != signing_public:
            raise AuditError(
                f"the signing key {settings.signing_key_file} does not match the public key "
                f"pinned at enrolment ({pub}); refusing to sign checkpoints with it"
            )
        return
    if settings.db.exists():
        raise AuditError(
            f"pinned public key {pub} is missing beside an existing audit log; restore it from "
            "a witness's copy (it is never re-derived from the signing key)"
        )
    pub.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(pub, flags, 0o644)
    except FileExistsError:
        pin_public_key(settings, signing_public)  # a concurrent first start pinned it
        return
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(signing_public.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_notes(path: Path, *, torn_tail_ok: bool = False) -> list[str]:
    """The signed notes of a checkpoint file (JSON lines ``{"size", "note"}``).

    Args:
        path: The box's ``[audit] checkpoint_file`` or a witness copy.
        torn_tail_ok: Skip a last line without its newline (a write cut short by a crash).

    Raises:
        OSError: The file cannot be read.
        ValueError: A line is not a checkpoint line.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    tail = lines.pop()  # after the last newline: "" for a complete file
    if tail and not torn_tail_ok:
        raise ValueError(f"{path}: the last line is incomplete")
    notes = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            note = json.loads(line)["note"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: line {n} is not a checkpoint line") from exc
        if not isinstance(note, str):
            raise ValueError(f"{path}: line {n} is not a checkpoint line")
        notes.append(note)
    return notes


def verify_from_settings(
    settings: AuditSettings,
    public_key_file: Path | None = None,
    witness: Path | None = None,
    *,
    now: float | None = None,
) -> VerifyReport:
    """Verify with the pinned public key only (no KEK needed).

    The notes checked are the database's, the box's checkpoint file's and the witness copy's;
    every record older than ``[audit] checkpoint_max_age_s`` must be under one of them.

    Args:
        settings: Audit settings (database path, key locations, coverage limit).
        public_key_file: Hex Ed25519 public key pinned off the box (a witness's copy); when
            given, nothing on the box is trusted for the key. Default: the box's enrolment copy
            beside the signing key (only as good as the box's own integrity).
        witness: A checkpoint file collected off the box, checked as well (skipped if absent).
        now: Reference time for the coverage check (default: the clock).
    """
    pub_file = public_key_file or public_key_path(settings)
    try:
        public = read_public_key(pub_file)
    except (OSError, ValueError) as exc:
        return VerifyReport(ok=False, problem=f"cannot read public key {pub_file}: {exc}")
    notes: list[str] = []
    sources = [(settings.checkpoint_file, True)]
    if witness is not None:
        sources.append((witness, False))
    for path, own in sources:
        if not path.exists():
            continue
        try:
            notes += read_notes(path, torn_tail_ok=own)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            return VerifyReport(ok=False, problem=f"checkpoint file unusable: {exc}")
    return verify(
        settings.db,
        public,
        key_name=KEY_NAME,
        origin=settings.origin,
        extra_notes=notes,
        max_age_s=settings.checkpoint_max_age_s,
        now=now,
    )


def export_call(
    settings: AuditSettings, call_id: str, user: str | None = None, *, redacted: bool = False
) -> str:
    """Decrypt one call for an authorised user and record the export in the log.

    ``redacted`` is recorded with the export: the caller of this function applies PHI
    redaction (``appliance.policy.redaction.redact_content``) for users without PHI access.

    Raises:
        AuditError: Keys unusable, content shredded, or the export could not be recorded.
    """
    log = open_audit(settings)
    try:
        records = log.export_call(call_id)
        log.append(
            [
                Entry(
                    kind="AuditExport",
                    meta={
                        "call_id": call_id,
                        "user": user or getpass.getuser(),
                        "redacted": redacted,
                    },
                )
            ]
        )
        log.checkpoint()
    finally:
        log.close()
    return json.dumps(records, indent=2)


def retention_sweep(
    log: AuditLog,
    retention_days: float,
    now: float | None = None,
    *,
    consent_retention_days: float | None = None,
) -> int:
    """Crypto-shred the data keys past their retention period and record the sweep.

    Call content (``call`` scope: transcripts, digits, agent speech) goes after
    ``retention_days``. Consent evidence and records outside calls (``consent`` and ``system``
    scopes, see :func:`appliance.audit.store.key_scope`) go only after
    ``consent_retention_days``, and never when it is ``None``. Records are never deleted (the
    log stays append-only and verifiable); destroying a key makes its sealed content
    unrecoverable, and the shred starts a new KEK epoch (:meth:`AuditLog.shred_where`).

    Args:
        log: The open audit log.
        retention_days: Days call content is kept.
        now: Seconds since the epoch (default: the clock).
        consent_retention_days: Days consent and system content is kept, or ``None``.

    Returns:
        How many data keys were destroyed.

    Raises:
        AuditError: The shred or its record could not be written.
    """
    t = now if now is not None else time.time()
    cutoff = t - retention_days * 86400
    cutoffs = {SCOPE_CALL: cutoff}
    meta: dict[str, float | int] = {"cutoff": cutoff}
    if consent_retention_days is not None:
        consent_cutoff = t - consent_retention_days * 86400
        cutoffs[SCOPE_CONSENT] = cutoffs[SCOPE_SYSTEM] = consent_cutoff
        meta["consent_cutoff"] = consent_cutoff
    count = log.shred_expired(cutoffs)
    meta["shredded_keys"] = count
    log.append([Entry(kind="RetentionSweep", meta=meta)])
    return count
