"""First boot's device keys: the audit log's signing key and its key-encryption key (KEK).

* the Ed25519 checkpoint signing key, owned by the service user, mode 0600, with its public
  half next to it;
* the audit KEK as a systemd credential (bound to the TPM2 when the box has one, else to the
  host key), or, where systemd-creds is missing, an owner-only key file.

Existing keys are checked, never replaced.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from pathlib import Path

from appliance.app.firstboot.common import (
    FirstbootError,
    FirstbootReport,
    Owner,
    ensure_mode,
    private_dir,
    write_private,
)
from appliance.audit import envelope
from appliance.audit.checkpoint import KeyFileError, load_or_create_signing_key, public_key_bytes

CREDENTIAL_NAME = "audit-kek"
"""The systemd credential's name (``LoadCredentialEncrypted=audit-kek:...``)."""
TPM2_PCRS = "4+7+9+12"
"""PCRs a TPM2-bound KEK credential is sealed to, as the image's data partition: the boot loader
and kernel (4), Secure Boot policy (7), initrd (9) and kernel command line with the dm-verity
root hash (12). See docs/decisions/0015-box-integrity.md."""


def ensure_signing_key(path: Path, owner: Owner | None, report: FirstbootReport) -> None:
    """Create the audit checkpoint signing key (Ed25519) if absent; check it if present.

    Raises:
        FirstbootError: An existing key is unsafe or not an Ed25519 key.
    """
    private_dir(path.parent, owner)
    existed = path.exists()
    try:
        key = load_or_create_signing_key(path)
    except KeyFileError as exc:
        raise FirstbootError(str(exc)) from exc
    ensure_mode(path, 0o600, owner)
    pub = path.with_suffix(".pub")
    # Pinned once, with the key it belongs to; never re-derived from a key found later (a
    # swapped key would re-pin itself). A start without it beside a log is refused (open_audit).
    if not existed and not pub.exists():
        write_private(pub, (public_key_bytes(key).hex() + "\n").encode(), 0o644, owner)
    if not existed:
        report.created.append("audit signing key")


def _creds_key_kind(tool: str) -> str:
    has_tpm = subprocess.run([tool, "has-tpm2", "--quiet"], check=False).returncode == 0
    return "tpm2" if has_tpm else "host"


def ensure_kek(
    credential: Path,
    key_file: Path,
    owner: Owner | None,
    creds_tool: str | None,
    report: FirstbootReport,
) -> None:
    """Create the audit KEK if absent: a systemd credential, else an owner-only key file.

    An existing credential is decrypted (to /dev/null) to prove it still opens on this box; an
    existing key file is checked for length and mode. Neither is ever replaced.

    Args:
        credential: Encrypted credential path (``LoadCredentialEncrypted=audit-kek:...``).
        key_file: Fallback key file, owned by the service user, mode 0600.
        owner: Service user for the fallback file; ``None`` keeps the caller as owner.
        creds_tool: ``systemd-creds`` executable, or ``None`` when it is not available.
        report: Receives what was created and where the KEK lives.

    Raises:
        FirstbootError: The credential cannot be made or no longer decrypts, or the key file
            is unsafe.
    """
    if creds_tool is not None:
        if credential.exists():
            check = subprocess.run(
                [creds_tool, f"--name={CREDENTIAL_NAME}", "decrypt", str(credential), "-"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
            if check.returncode != 0:
                raise FirstbootError(
                    f"{credential}: does not decrypt on this box "
                    f"({check.stderr.decode(errors='replace').strip()})"
                )
            report.kek_source = "systemd-creds"
            return
        kind = _creds_key_kind(creds_tool)
        private_dir(credential.parent, None)
        tmp = credential.with_name(f".{credential.name}.{os.getpid()}.tmp")
        made = subprocess.run(
            [
                creds_tool,
                f"--name={CREDENTIAL_NAME}",
                f"--with-key={kind}",
                *([f"--tpm2-pcrs={TPM2_PCRS}"] if kind == "tpm2" else []),
                "encrypt",
                "-",
                str(tmp),
            ],
            input=secrets.token_bytes(envelope.KEY_BYTES),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if made.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise FirstbootError(
                f"{credential}: systemd-creds encrypt failed "
                f"({made.stderr.decode(errors='replace').strip()})"
            )
        tmp.chmod(0o600)
        os.link(tmp, credential)
        tmp.unlink()
        report.created.append(f"audit KEK (systemd-creds, {kind})")
        report.kek_source = f"systemd-creds:{kind}"
        return
    private_dir(key_file.parent, owner)
    existed = key_file.exists()
    if not existed:
        write_private(key_file, secrets.token_bytes(envelope.KEY_BYTES), 0o600, owner)
        report.created.append("audit KEK (key file)")
    ensure_mode(key_file, 0o600, owner)
    try:
        envelope.load_kek(key_file)
    except envelope.EnvelopeError as exc:
        raise FirstbootError(str(exc)) from exc
    report.kek_source = "key-file"


def fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes, hex (for comparing keys across runs without printing them)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
