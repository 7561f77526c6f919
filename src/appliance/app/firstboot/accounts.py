"""First boot's accounts: the service user that owns the agent's keys; no default credentials.

Accounts with a usable password are locked and an SSH server, if one is installed, gets
password logins switched off.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from appliance.app.firstboot.common import FirstbootError, FirstbootReport, Owner

SSHD_DROPIN = "etc/ssh/sshd_config.d/50-appliance.conf"
SSHD_SETTINGS = "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"


def _usable_password(hash_field: str) -> bool:
    return hash_field == "" or not hash_field.startswith(("!", "*"))


def lock_default_credentials(root: Path, report: FirstbootReport) -> None:
    """Lock every account that has a usable (or empty) password; switch off SSH passwords.

    On the box the root file system is read-only and the image ships every account locked, so
    this finds nothing to do; if it does find a usable password on a read-only root it fails.

    Raises:
        FirstbootError: A usable password exists and /etc/shadow cannot be changed, or sshd is
            installed and its drop-in cannot be written.
    """
    shadow = root / "etc/shadow"
    if shadow.exists():
        lines = shadow.read_text(encoding="utf-8").splitlines(keepends=True)
        changed = False
        for i, line in enumerate(lines):
            fields = line.rstrip("\n").split(":")
            if len(fields) < 2 or not _usable_password(fields[1]):
                continue
            fields[1] = "!*" if fields[1] == "" else "!" + fields[1]
            lines[i] = ":".join(fields) + "\n"
            report.locked_accounts.append(fields[0])
            changed = True
        if changed:
            try:
                mode = stat.S_IMODE(shadow.stat().st_mode)
                tmp = shadow.with_name(".shadow.firstboot.tmp")
                tmp.write_text("".join(lines), encoding="utf-8")
                tmp.chmod(mode)
                os.replace(tmp, shadow)
            except OSError as exc:
                raise FirstbootError(
                    f"{shadow}: accounts {report.locked_accounts} have usable passwords and "
                    f"cannot be locked ({exc.strerror or exc})"
                ) from exc
            report.created.append("locked passwords")
    if (root / "usr/sbin/sshd").exists():
        dropin = root / SSHD_DROPIN
        if not dropin.exists() or dropin.read_text(encoding="utf-8") != SSHD_SETTINGS:
            try:
                dropin.parent.mkdir(parents=True, exist_ok=True)
                dropin.write_text(SSHD_SETTINGS, encoding="utf-8")
            except OSError as exc:
                raise FirstbootError(f"{dropin}: cannot switch off SSH passwords ({exc})") from exc
            report.created.append("sshd without passwords")


def service_owner(user: str | None, root: Path) -> Owner | None:
    """The IDs of the service ``user`` in the tree at ``root`` (``None`` for no user).

    Raises:
        FirstbootError: No such user (in ``/etc/passwd`` under ``root``).
    """
    if not user:
        return None
    if root == Path("/"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError as exc:
            raise FirstbootError(f"service user {user!r} does not exist") from exc
        return Owner(entry.pw_uid, entry.pw_gid)
    for line in (root / "etc/passwd").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return Owner(int(fields[2]), int(fields[3]))
    raise FirstbootError(f"service user {user!r} does not exist in {root}/etc/passwd")
