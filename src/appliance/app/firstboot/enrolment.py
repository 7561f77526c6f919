"""First boot's one-time enrolment code for the first administrator (Argon2id hash only).

The code goes to the console and to a root-only notice file, never to the journal.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from appliance.app.firstboot.common import (
    FirstbootError,
    FirstbootReport,
    ensure_mode,
    private_dir,
    write_private,
)

_LOGGER = logging.getLogger("appliance.app.firstboot")

#: Crockford base32 without look-alikes; 16 characters = 80 bits.
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_LENGTH = 16
#: OWASP minimum for Argon2id (shared/SECURITY.md): m=19 MiB, t=2, p=1.
ARGON2_PARAMS = {"time_cost": 2, "memory_cost": 19 * 1024, "parallelism": 1}


def new_enrolment_code() -> str:
    """A random one-time code, 16 Crockford base32 characters (80 bits) in groups of four."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, _CODE_LENGTH, 4))


def ensure_enrolment(
    hash_file: Path, notice_file: Path, console: Path | None, report: FirstbootReport
) -> None:
    """Create the first admin's one-time enrolment code if no hash of one exists.

    Only the Argon2id hash is kept (``hash_file``, 0600). The code is shown once: written to the
    console and to ``notice_file`` (0600, root, in a 0700 directory), never logged.

    Raises:
        FirstbootError: An existing hash file does not hold an Argon2id hash.
    """
    from argon2 import PasswordHasher, Type
    from argon2.exceptions import InvalidHashError

    if hash_file.exists():
        text = hash_file.read_text(encoding="ascii", errors="replace").strip()
        try:
            from argon2 import extract_parameters

            if extract_parameters(text).type is not Type.ID:
                raise FirstbootError(f"{hash_file}: not an Argon2id hash")
        except InvalidHashError as exc:
            raise FirstbootError(f"{hash_file}: not an Argon2 hash") from exc
        ensure_mode(hash_file, 0o600, None)
        return
    code = new_enrolment_code()
    hasher = PasswordHasher(
        time_cost=ARGON2_PARAMS["time_cost"],
        memory_cost=ARGON2_PARAMS["memory_cost"],
        parallelism=ARGON2_PARAMS["parallelism"],
        type=Type.ID,
    )
    hashed = hasher.hash(code)
    private_dir(notice_file.parent, None)
    notice = (
        "Clinic voice appliance: one-time enrolment code for the first administrator\n"
        f"  {code}\n"
        "Enter it on the admin page (https://<this box>:8443/enrol). It works once; only its\n"
        "Argon2id hash is stored. Delete this file after enrolment.\n"
    )
    notice_file.unlink(missing_ok=True)  # a code whose hash is gone is useless
    write_private(notice_file, notice.encode())
    write_private(hash_file, (hashed + "\n").encode())
    report.created.append("enrolment code")
    if console is not None:
        try:
            with open(console, "a", encoding="utf-8") as out:
                out.write("\n" + notice + "\n")
        except OSError as exc:
            _LOGGER.warning(
                "console %s not writable (%s); the code is in %s", console, exc, notice_file
            )
