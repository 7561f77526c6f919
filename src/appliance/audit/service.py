"""Opening the audit log from settings, and the ``appliance audit`` commands."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.audit import envelope
from appliance.audit.checkpoint import KeyFileError, load_or_create_signing_key, public_key_bytes
from appliance.audit.store import AuditError, AuditLog, Entry
from appliance.audit.verify import VerifyReport, verify
from appliance.config.settings import AuditSettings

KEY_NAME = "appliance-audit"


def public_key_path(settings: AuditSettings) -> Path:
    """Where the checkpoint verification key (raw Ed25519 public key, hex) is kept."""
    return settings.signing_key_file.with_suffix(".pub")


def open_audit(settings: AuditSettings) -> AuditLog:
    """Load the keys (creating them on first boot if allowed) and open the log.

    Raises:
        AuditError: A key or the database is unusable; the message names the file.
    """
    missing = [
        name
        for name, path in (("signing", settings.signing_key_file), ("kek", settings.kek_file))
        if not path.exists()
    ]
    try:
        if not settings.create_keys and not settings.signing_key_file.exists():
            raise AuditError(f"signing key missing: {settings.signing_key_file}")
        signing = load_or_create_signing_key(settings.signing_key_file)
        kek = envelope.load_kek(settings.kek_file, create=settings.create_keys)
    except (KeyFileError, envelope.EnvelopeError, OSError) as exc:
        raise AuditError(f"audit keys: {exc}") from exc
    pub = public_key_path(settings)
    if not pub.exists():
        pub.write_text(public_key_bytes(signing).hex() + "\n")
    log = AuditLog(
        settings.db,
        kek,
        signing,
        origin=settings.origin,
        checkpoint_file=settings.checkpoint_file,
        key_name=KEY_NAME,
    )
    # Key operations are audited too. A KEK from the systemd credential was not made here (the
    # absent key file is then simply unused), so only a key file this call created counts.
    created = [n for n in missing if n != "kek" or kek.source == "key-file"]
    if created:
        meta = {"keys": created, "kek_id": kek.kek_id, "kek_source": kek.source}
        log.append([Entry(kind="KeyCreated", meta=meta)])
    return log


def verify_from_settings(
    settings: AuditSettings, public_key_file: Path | None = None, witness: Path | None = None
) -> VerifyReport:
    """Verify with the public key only (no KEK needed).

    Args:
        settings: Audit settings (database path, key locations).
        public_key_file: Hex Ed25519 public key; defaults to the one beside the signing key.
        witness: A checkpoint file collected off the box, checked as well.
    """
    pub_file = public_key_file or public_key_path(settings)
    try:
        raw = bytes.fromhex(pub_file.read_text().strip())
        public = Ed25519PublicKey.from_public_bytes(raw)
    except (OSError, ValueError) as exc:
        return VerifyReport(ok=False, problem=f"cannot read public key {pub_file}: {exc}")
    notes: list[str] = []
    if witness is not None and witness.exists():
        lines = witness.read_text().splitlines()
        notes = [json.loads(line)["note"] for line in lines if line.strip()]
    return verify(settings.db, public, key_name=KEY_NAME, origin=settings.origin, extra_notes=notes)


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


def retention_sweep(log: AuditLog, retention_days: float, now: float | None = None) -> int:
    """Crypto-shred every data key older than the retention period and record the sweep.

    Records are never deleted (the log stays append-only and verifiable); destroying a call's
    DEK makes its sealed content unrecoverable.

    Returns:
        How many data keys were destroyed.
    """
    cutoff = (now if now is not None else time.time()) - retention_days * 86400
    count = log.shred(before=cutoff)
    log.append([Entry(kind="RetentionSweep", meta={"cutoff": cutoff, "shredded_keys": count})])
    return count
