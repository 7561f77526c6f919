"""First boot's settings: the base settings file from the image's template, the trunk drop-in.

The base file (:data:`CONFIG`) is the Ansible ``config`` role's; first boot only creates it from
the image's :data:`TEMPLATE` where it does not exist. The ``[sip]``/``[clinic]`` keys of a
trunk file (:data:`TRUNK_FILES`) go to first boot's own drop-in :data:`DROPIN_NAME`.

Who may change the trunk settings (issue 14): the EFI system partition is FAT, unencrypted and
unauthenticated, so anyone holding the disk can write ``appliance/trunk.toml`` there (and open
``[sip] allowed_peers`` to the world). A trunk file on the ESP is therefore applied

* on the first boot only (the box is not provisioned yet: no ``.firstboot-done`` marker), or
* on any boot when it carries a valid detached signature by the release key pinned in the image
  (``trunk.toml.minisig``, minisign format, :mod:`appliance.release`; make it with
  ``appliance release sign --key KEY trunk.toml``).

Any other change is refused: the drop-in, and so the running settings, stay as they were, and
the journal says why (no content). ``/etc/appliance/trunk.toml`` lives on the encrypted data
partition and only root can write it, so it is applied as before. Every application and every
refusal is also put on the audit log (:mod:`.records`, through the agent's next start).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from appliance.app.firstboot.common import (
    FirstbootError,
    FirstbootReport,
    in_root,
    private_dir,
    replace_text,
    text_or_none,
    write_private,
)
from appliance.config import dropin_dir, load_settings
from appliance.errors import ConfigError
from appliance.release import DEFAULT_PUBKEY, SIG_SUFFIX, PublicKey, SignatureError, verify_file

CONFIG = Path("/etc/appliance/appliance.toml")
TEMPLATE = Path("/usr/share/appliance/appliance.toml")
TRUNK_FILES = (
    Path("/etc/appliance/trunk.toml"),
    Path("/efi/appliance/trunk.toml"),
    Path("/boot/efi/appliance/trunk.toml"),
)
#: Sections a trunk file may set; anything else is refused (the rest is the image's business).
TRUNK_SECTIONS = ("sip", "clinic")
#: First boot's own drop-in in ``<config>.d/``: the trunk file's settings, nothing else.
DROPIN_NAME = "10-firstboot.toml"
#: Trunk files here are on the encrypted data partition, writable by root only: always applied.
TRUSTED_TRUNK_DIR = Path("/etc/appliance")
#: The release public key pinned in the image (minisign format), for signed trunk files.
RELEASE_KEY = DEFAULT_PUBKEY


@dataclass(frozen=True)
class TrunkDecision:
    """Whether a trunk file may change the settings, and why (no content).

    Attributes:
        apply: The file may be applied.
        reason: Why, in words for the journal and the audit log.
    """

    apply: bool
    reason: str


def judge_trunk(trunk: Path, on_box: Path, *, first_boot: bool, release_key: Path) -> TrunkDecision:
    """Decide whether the trunk file ``trunk`` (``on_box`` on the running box) may be applied.

    Args:
        trunk: The file as read (inside the tree being provisioned).
        on_box: Its absolute path on the box (decides whether it is on the ESP).
        first_boot: The box is not provisioned yet.
        release_key: The pinned release public key file (minisign format).

    Returns:
        Apply it when it is in :data:`TRUSTED_TRUNK_DIR`, carries a valid release signature
        (``<file>.minisig``, :func:`appliance.release.verify_file`, Ed25519 per RFC 8032), or
        this is the first boot and it carries no signature; refuse it otherwise. A signature
        that does not verify is refused even on the first boot.
    """
    if on_box.is_relative_to(TRUSTED_TRUNK_DIR):
        return TrunkDecision(True, "on the encrypted data partition (root only)")
    sig = trunk.with_name(trunk.name + SIG_SUFFIX)
    if sig.exists():
        try:
            key = PublicKey.load(release_key)
            verify_file(trunk, key, sig=sig, name=trunk.name)
        except SignatureError as exc:
            return TrunkDecision(False, f"release signature refused: {exc}")
        return TrunkDecision(True, f"signed by the release key {key.key_id_hex}")
    if first_boot:
        return TrunkDecision(True, "first boot (unsigned)")
    return TrunkDecision(
        False,
        f"unsigned, and the box is already provisioned: after the first boot a trunk file on the "
        f"EFI partition needs a release signature ({on_box.name}{SIG_SUFFIX})",
    )


def dump_settings_toml(data: dict[str, dict[str, object]], header: str) -> str:
    """Serialise a two-level settings mapping (sections of scalars and lists) as TOML.

    Written with tomlkit, so strings, numbers, booleans, dates and lists of those are quoted
    and escaped the TOML way; ``header`` becomes ``#`` comment lines at the top.

    Raises:
        FirstbootError: A value has no TOML form (e.g. ``None`` or an arbitrary object).
    """
    doc = tomlkit.document()
    for line in header.splitlines():
        doc.add(tomlkit.comment(line))
    for section, values in data.items():
        table = tomlkit.table()
        for key, value in values.items():
            try:
                table.add(key, value)
            except (TypeError, ValueError) as exc:  # tomlkit's ConvertError is both
                raise FirstbootError(
                    f"cannot write [{section}] {key} ({type(value).__name__}) as TOML"
                ) from exc
        doc.add(tomlkit.nl())
        doc.add(section, table)
    return tomlkit.dumps(doc)


def _read_toml(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FirstbootError(f"{path}: unreadable or not valid TOML ({exc})") from exc
    for section, values in data.items():
        if not isinstance(values, dict):
            raise FirstbootError(f"{path}: {section} is not a [section]")
    return data


def _sha256(path: Path) -> str:
    """Lowercase hex SHA-256 (FIPS 180-4) of ``path``, or ``""`` when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _find_trunk(root: Path, candidates: Iterable[Path]) -> Path | None:
    for candidate in candidates:
        path = in_root(root, candidate)
        if path.is_file():
            return path
    return None


def ensure_config(
    root: Path,
    config: Path,
    template: Path,
    trunk_files: Iterable[Path],
    report: FirstbootReport,
    *,
    first_boot: bool = True,
    release_key: Path = RELEASE_KEY,
) -> Path:
    """Write the trunk file's settings to first boot's own drop-in; never rewrite ``config``.

    * ``config`` (``/etc/appliance/appliance.toml``) belongs to whoever deploys the box: the
      Ansible ``config`` role renders it. Only where it does not exist at all (a box installed
      from the image alone) is it created, once, as a byte-for-byte copy of the image's
      template; it is never compared with anything or rewritten afterwards.
    * The ``[sip]``/``[clinic]`` keys of the trunk file go to ``<config>.d/10-firstboot.toml``
      (:data:`DROPIN_NAME`), written with tomlkit; it is rewritten only when they changed, and
      left as it is when no trunk file is found. It overrides those keys of ``config``
      (:func:`appliance.config.load_settings` merges drop-ins key by key).
    * A change from a trunk file on the EFI partition is applied only on the first boot
      (``first_boot``) or with a valid release signature (:func:`judge_trunk`, key file
      ``release_key`` absolute on the box). A refused file changes nothing and raises nothing.
      Whenever the drop-in would change, applied or not, ``report`` gets the file, its SHA-256,
      the decision and its reason (``trunk_*``, for the journal and the audit log).

    What would be written is validated first, together with ``config`` and every other
    drop-in, by the agent's own settings loader; nothing is written when that fails.

    Returns:
        The settings file inside ``root`` (load it with ``load_settings`` to get the drop-ins).

    Raises:
        FirstbootError: Template missing, an applicable trunk file invalid or setting keys
            outside [sip]/[clinic], or the merged settings fail validation (the message names
            the file and key at fault).
    """
    target = in_root(root, config)
    pending: dict[Path, str] = {}
    if not target.exists():
        source = in_root(root, template)
        seed = text_or_none(source) if source.is_file() else None
        if seed is None:
            raise FirstbootError(f"{source}: settings template missing from the image")
        pending[target] = seed
    dropin = dropin_dir(target) / DROPIN_NAME
    trunk = _find_trunk(root, trunk_files)
    if trunk is not None:
        on_box = Path("/") / trunk.relative_to(root)
        decision = judge_trunk(
            trunk, on_box, first_boot=first_boot, release_key=in_root(root, release_key)
        )
        try:
            updates = _read_toml(trunk)
            unknown = sorted(set(updates) - set(TRUNK_SECTIONS))
            if unknown:
                raise FirstbootError(
                    f"{trunk}: only [sip] and [clinic] may be set here, not {unknown}"
                )
            # The header is compared with the drop-in on disk: a new wording (even of the module
            # path, now the firstboot package) would rewrite every box's drop-in once.
            text: str | None = dump_settings_toml(
                updates,
                f"PBX trunk settings from {on_box}, written by `appliance firstboot`\n"
                f"(src/appliance/app/firstboot.py) whenever that file changes. They override the\n"
                f"same keys of {config.name}; edit the trunk file, not this one.",
            )
        except FirstbootError:
            if decision.apply:
                raise
            text = None  # refused anyway: an unreadable file changes nothing either
        if text_or_none(dropin) != text:
            report.trunk_file = on_box
            report.trunk_sha256 = _sha256(trunk)
            report.trunk_applied = decision.apply
            report.trunk_reason = decision.reason
            if decision.apply:
                assert text is not None
                pending[dropin] = text
    if not pending:
        return target
    try:
        load_settings(target, pending=pending)
    except ConfigError as exc:
        raise FirstbootError(
            f"settings from {trunk or template} are invalid: {exc.message}"
        ) from exc
    if target in pending:
        try:
            write_private(target, pending[target].encode("utf-8"), 0o644)
            report.created.append("settings")
        except FileExistsError:  # deployed meanwhile: it is not first boot's file
            pass
    if dropin in pending:
        # The agent (not root) lists the directory: 0755 whatever the umask (the unit's is 0077).
        private_dir(dropin.parent, None, 0o755)
        replace_text(dropin, pending[dropin])
        report.created.append("trunk settings")
    return target
