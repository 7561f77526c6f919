"""The whole first-boot run, step by step: :func:`run_firstboot`."""

from __future__ import annotations

import datetime
import shutil
from collections.abc import Iterable
from pathlib import Path

from appliance.app.firstboot.accounts import lock_default_credentials, service_owner
from appliance.app.firstboot.common import (
    FirstbootError,
    FirstbootReport,
    in_root,
    private_dir,
    write_private,
)
from appliance.app.firstboot.enrolment import ensure_enrolment
from appliance.app.firstboot.keys import CREDENTIAL_NAME, ensure_kek, ensure_signing_key
from appliance.app.firstboot.records import PENDING_NAME, append_pending
from appliance.app.firstboot.recovery import DATA_PARTITION, RECOVERY_KEY, show_recovery_key
from appliance.app.firstboot.settings import (
    CONFIG,
    RELEASE_KEY,
    TEMPLATE,
    TRUNK_FILES,
    ensure_config,
)
from appliance.app.firstboot.tls import ensure_tls
from appliance.config import load_settings
from appliance.errors import ConfigError


def run_firstboot(
    root: Path = Path("/"),
    config: Path = CONFIG,
    *,
    user: str | None = "appliance",
    creds_tool: str | None = "systemd-creds",
    console: Path | None = Path("/dev/console"),
    template: Path = TEMPLATE,
    trunk_files: Iterable[Path] = TRUNK_FILES,
    release_key: Path = RELEASE_KEY,
    recovery_key: Path = RECOVERY_KEY,
    data_partition: Path = DATA_PARTITION,
) -> FirstbootReport:
    """Provision the box; safe to run on every boot.

    Args:
        root: Tree to provision (``/`` on the box; a temporary directory in tests).
        config: Settings file, absolute as on the box.
        user: Service user that owns the agent's keys; ``None`` or ``""`` keeps the caller.
        creds_tool: ``systemd-creds`` name or path; ``None`` (or not found on PATH) stores the
            KEK as an owner-only key file instead.
        console: Where the enrolment code is shown; ``None`` for the notice file only.
        template: The image's settings template, absolute as on the box.
        trunk_files: Trunk settings files to look for, in order, absolute as on the box.
        release_key: The pinned release public key (minisign format), absolute as on the box:
            a trunk file on the EFI partition changes the settings after the first boot only
            with a valid signature by it (:func:`.settings.judge_trunk`). The decision is left
            for the audit log in the pending file :data:`.records.PENDING_NAME`.
        recovery_key: Where the image left the data partition's recovery key (tmpfs); it is
            shown on ``console`` once if it opens ``data_partition``, then deleted
            (:func:`.recovery.show_recovery_key`).
        data_partition: The LUKS2 data partition, absolute as on the box.

    Returns:
        What was created (nothing on a second run).

    Raises:
        FirstbootError: A step failed; the message names the file.
    """
    root = Path(root)
    report = FirstbootReport()
    marker = in_root(root, config).parent / ".firstboot-done"
    settings_file = ensure_config(
        root,
        config,
        template,
        trunk_files,
        report,
        first_boot=not marker.exists(),
        release_key=release_key,
    )
    try:
        settings = load_settings(settings_file).audit
    except ConfigError as exc:
        raise FirstbootError(exc.message) from exc
    owner = service_owner(user, root)
    tool = shutil.which(creds_tool) if creds_tool else None
    etc = in_root(root, config).parent
    ensure_signing_key(in_root(root, settings.signing_key_file), owner, report)
    ensure_kek(
        etc / "credentials" / f"{CREDENTIAL_NAME}.cred",
        in_root(root, settings.kek_file),
        owner,
        tool,
        report,
    )
    for path in (settings.db, settings.checkpoint_file):
        private_dir(in_root(root, path).parent, owner)
    if report.trunk_applied is not None:
        # On the audit log at the agent's next start (first boot cannot open the log).
        pending = in_root(root, settings.db).parent / PENDING_NAME
        append_pending(pending, report.trunk_applied, report.trunk_detail(), owner)
    ensure_tls(etc / "tls", report)
    ensure_enrolment(
        etc / "enrolment.argon2", etc / "firstboot" / "enrolment-code.txt", console, report
    )
    show_recovery_key(in_root(root, recovery_key), in_root(root, data_partition), console, report)
    lock_default_credentials(root, report)
    if not marker.exists():
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        write_private(marker, f"{stamp}\n".encode(), 0o644)
    return report
