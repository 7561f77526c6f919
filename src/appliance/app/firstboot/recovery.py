"""The data partition's recovery key: shown once on the console at first boot, never stored.

On the image, the data partition (``/var``) is LUKS2 with two ways in: the TPM2 token, sealed to
the measured boot chain (PCRs 4, 7, 9, 12), and a passphrase key slot holding the recovery key.
``appliance-recovery-key.service`` writes a fresh random key to :data:`RECOVERY_KEY` (tmpfs,
root only) before ``systemd-repart`` creates the partition with it (``Encrypt=key-file+tpm2``,
``--key-file=``). First boot then checks with ``cryptsetup open --test-passphrase`` that this
very key opens the partition, shows it once on the console for the installer to write down, and
deletes it: the box keeps no copy. On later boots the unit makes a new key that nothing enrolled;
it does not open the partition, so it is never shown, and it is deleted as well.

Use (image/README.md): when the TPM2 refuses to unseal (the firmware, boot loader, kernel,
initrd, kernel command line or root changed, or the disk moved to another machine), type the key
at the passphrase prompt, or ``cryptsetup open /dev/disk/by-partlabel/appliance-data
appliance-data`` from a rescue system.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from appliance.app.firstboot.common import FirstbootReport

_LOGGER = logging.getLogger(__name__)

#: Where appliance-recovery-key.service leaves the key (tmpfs).
RECOVERY_KEY = Path("/run/appliance-recovery/key")
#: The data partition on the box.
DATA_PARTITION = Path("/dev/disk/by-partlabel/appliance-data")


def key_opens(device: Path, key_file: Path, cryptsetup: str) -> bool:
    """Whether ``key_file`` opens a key slot of the LUKS device ``device`` (nothing is mapped).

    Runs ``cryptsetup open --test-passphrase --key-file KEY DEVICE`` (cryptsetup(8)).
    """
    done = subprocess.run(
        [cryptsetup, "open", "--test-passphrase", "--key-file", str(key_file), str(device)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return done.returncode == 0


def show_recovery_key(
    key_file: Path,
    device: Path,
    console: Path | None,
    report: FirstbootReport,
    *,
    cryptsetup: str | None = "cryptsetup",
) -> None:
    """Show the data partition's recovery key once, if ``key_file`` opens ``device``; delete it.

    Args:
        key_file: The key repart enrolled on this boot (:data:`RECOVERY_KEY`).
        device: The LUKS2 data partition (:data:`DATA_PARTITION`).
        console: Where to show it (``/dev/console``); ``None`` shows nothing, and the key is
            still deleted (nobody will ever see it: the TPM2 is then the only way in).
        report: ``recovery key`` is added to ``created`` when it was shown.
        cryptsetup: The ``cryptsetup`` executable; ``None`` or not found skips the whole step
            (a host without the image's data partition).

    Never logs the key; the journal only says that it was shown.
    """
    tool = shutil.which(cryptsetup) if cryptsetup else None
    if tool is None or not key_file.is_file():
        return
    try:
        if not device.exists() or not key_opens(device, key_file, tool):
            return  # not enrolled (a later boot): a fresh key nobody needs
        key = key_file.read_text(encoding="ascii").strip()
        notice = (
            "Clinic voice appliance: RECOVERY KEY of the encrypted data partition (/var)\n"
            f"  {key}\n"
            "Write it down and keep it away from the box: it is shown only now, and the box\n"
            "keeps no copy. It unlocks the data partition when the TPM2 refuses to (after a\n"
            "firmware, boot or disk change); see the appliance's image/README.md.\n"
        )
        if console is None:
            return
        try:
            with open(console, "a", encoding="utf-8") as out:
                out.write("\n" + notice + "\n")
        except OSError as exc:
            _LOGGER.warning("console %s not writable (%s); the recovery key is lost", console, exc)
            return
        report.created.append("recovery key (shown on the console)")
    finally:
        key_file.unlink(missing_ok=True)
