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
from appliance.app.firstboot.settings import CONFIG, TEMPLATE, TRUNK_FILES, ensure_config
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

    Returns:
        What was created (nothing on a second run).

    Raises:
        FirstbootError: A step failed; the message names the file.
    """
    root = Path(root)
    report = FirstbootReport()
    settings_file = ensure_config(root, config, template, trunk_files, report)
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
    ensure_tls(etc / "tls", report)
    ensure_enrolment(
        etc / "enrolment.argon2", etc / "firstboot" / "enrolment-code.txt", console, report
    )
    lock_default_credentials(root, report)
    marker = etc / ".firstboot-done"
    if not marker.exists():
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        write_private(marker, f"{stamp}\n".encode(), 0o644)
    return report
