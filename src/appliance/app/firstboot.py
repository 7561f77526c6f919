"""First boot of the box: device keys, local TLS CA, enrolment code, PBX trunk settings.

``appliance firstboot`` runs as root from ``appliance-firstboot.service`` before the agent, on
every boot. It creates what is missing and never replaces what exists, so a second run changes
nothing (the keys themselves are checked, not only a marker):

* the PBX trunk settings of a ``trunk.toml`` (``/etc/appliance/trunk.toml``, else
  ``appliance/trunk.toml`` on the EFI system partition, where an installer can drop it from any
  PC), ``[sip]``/``[clinic]`` only, in first boot's own drop-in
  ``/etc/appliance/appliance.toml.d/10-firstboot.toml``. The base file
  ``/etc/appliance/appliance.toml`` is the Ansible ``config`` role's: first boot creates it from
  the image's template only where it does not exist, and never rewrites it;
* the audit log's Ed25519 checkpoint signing key (owned by the service user, mode 0600);
* the audit KEK as a systemd credential (``systemd-creds encrypt``, bound to the TPM2 when the
  box has one, else to the host key on the data partition) at
  ``/etc/appliance/credentials/audit-kek.cred``, or, where systemd-creds is missing, as an
  owner-only key file of the service user;
* a local TLS CA and a server certificate for the admin page (ECDSA P-256);
* a one-time enrolment code for the first admin: only its Argon2id hash is kept; the code itself
  goes to the console and to a root-only notice file, never to the journal.

It also refuses default credentials: accounts with a usable password are locked and an SSH
server, if one is installed, gets password logins switched off.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from appliance.audit import envelope
from appliance.audit.checkpoint import KeyFileError, load_or_create_signing_key, public_key_bytes
from appliance.config import dropin_dir, load_settings
from appliance.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

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
CREDENTIAL_NAME = "audit-kek"
#: Crockford base32 without look-alikes; 16 characters = 80 bits.
_CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE_LENGTH = 16
#: OWASP minimum for Argon2id (shared/SECURITY.md): m=19 MiB, t=2, p=1.
ARGON2_PARAMS = {"time_cost": 2, "memory_cost": 19 * 1024, "parallelism": 1}
SSHD_DROPIN = "etc/ssh/sshd_config.d/50-appliance.conf"
SSHD_SETTINGS = "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"


class FirstbootError(RuntimeError):
    """First boot cannot complete; the message names the file at fault."""


@dataclass
class FirstbootReport:
    """What one run did. Holds no secret.

    Attributes:
        created: Names of the things this run created (empty on a second run).
        kek_source: ``systemd-creds:tpm2``, ``systemd-creds:host`` or ``key-file``.
        trunk_file: The trunk file that was applied, if any.
        locked_accounts: Accounts whose usable password this run locked.
    """

    created: list[str] = field(default_factory=list)
    kek_source: str = ""
    trunk_file: Path | None = None
    locked_accounts: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the journal (no secrets)."""
        made = ", ".join(self.created) if self.created else "nothing (already provisioned)"
        return f"firstboot: created {made}; audit KEK from {self.kek_source}"


@dataclass(frozen=True)
class _Owner:
    uid: int
    gid: int


def _in_root(root: Path, path: Path) -> Path:
    """``path`` (absolute on the box) inside the tree at ``root``."""
    return root / path.relative_to(path.anchor) if path.is_absolute() else root / path


def _write_atomic(
    path: Path, data: bytes, mode: int, owner: _Owner | None, *, replace: bool
) -> None:
    """Write ``path`` through a fsynced temporary file with ``mode`` (and ``owner``) set.

    Args:
        path: The file to write; its directory is created if missing.
        data: The whole content.
        mode: Permission bits, e.g. ``0o600``, whatever the umask.
        owner: Owner to give the file; ``None`` keeps the caller.
        replace: Rename over an existing file; otherwise link the file in, never overwriting.

    Raises:
        FileExistsError: ``replace`` is false and the file (or the temporary one) exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), owner.uid, owner.gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_private(path: Path, data: bytes, mode: int = 0o600, owner: _Owner | None = None) -> None:
    """Create ``path`` atomically with ``mode``; never overwrite an existing file.

    Raises:
        FileExistsError: The file appeared meanwhile.
    """
    _write_atomic(path, data, mode, owner, replace=False)


def _ensure_mode(path: Path, mode: int, owner: _Owner | None) -> None:
    st = path.stat()
    if stat.S_IMODE(st.st_mode) != mode:
        path.chmod(mode)
    if owner is not None and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.chown(path, owner.uid, owner.gid)


def _private_dir(path: Path, owner: _Owner | None, mode: int = 0o700) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _ensure_mode(path, mode, owner)


# --- configuration -------------------------------------------------------------------------


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


def _find_trunk(root: Path, candidates: Iterable[Path]) -> Path | None:
    for candidate in candidates:
        path = _in_root(root, candidate)
        if path.is_file():
            return path
    return None


def _replace_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``path`` atomically (temporary file, fsync, rename over the old one)."""
    _write_atomic(path, text.encode("utf-8"), mode, None, replace=True)


def _text_or_none(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def ensure_config(
    root: Path, config: Path, template: Path, trunk_files: Iterable[Path], report: FirstbootReport
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

    What would be written is validated first, together with ``config`` and every other
    drop-in, by the agent's own settings loader; nothing is written when that fails.

    Returns:
        The settings file inside ``root`` (load it with ``load_settings`` to get the drop-ins).

    Raises:
        FirstbootError: Template missing, trunk file invalid or setting keys outside
            [sip]/[clinic], or the merged settings fail validation (the message names the file
            and key at fault).
    """
    target = _in_root(root, config)
    pending: dict[Path, str] = {}
    if not target.exists():
        source = _in_root(root, template)
        seed = _text_or_none(source) if source.is_file() else None
        if seed is None:
            raise FirstbootError(f"{source}: settings template missing from the image")
        pending[target] = seed
    dropin = dropin_dir(target) / DROPIN_NAME
    trunk = _find_trunk(root, trunk_files)
    if trunk is not None:
        updates = _read_toml(trunk)
        unknown = sorted(set(updates) - set(TRUNK_SECTIONS))
        if unknown:
            raise FirstbootError(f"{trunk}: only [sip] and [clinic] may be set here, not {unknown}")
        on_box = Path("/") / trunk.relative_to(root)
        text = dump_settings_toml(
            updates,
            f"PBX trunk settings from {on_box}, written by `appliance firstboot`\n"
            f"(src/appliance/app/firstboot.py) whenever that file changes. They override the\n"
            f"same keys of {config.name}; edit the trunk file, not this one.",
        )
        report.trunk_file = trunk
        if _text_or_none(dropin) != text:
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
            _write_private(target, pending[target].encode("utf-8"), 0o644)
            report.created.append("settings")
        except FileExistsError:  # deployed meanwhile: it is not first boot's file
            pass
    if dropin in pending:
        # The agent (not root) lists the directory: 0755 whatever the umask (the unit's is 0077).
        _private_dir(dropin.parent, None, 0o755)
        _replace_text(dropin, pending[dropin])
        report.created.append("trunk settings")
    return target


# --- keys ------------------------------------------------------------------------------------


def ensure_signing_key(path: Path, owner: _Owner | None, report: FirstbootReport) -> None:
    """Create the audit checkpoint signing key (Ed25519) if absent; check it if present.

    Raises:
        FirstbootError: An existing key is unsafe or not an Ed25519 key.
    """
    _private_dir(path.parent, owner)
    existed = path.exists()
    try:
        key = load_or_create_signing_key(path)
    except KeyFileError as exc:
        raise FirstbootError(str(exc)) from exc
    _ensure_mode(path, 0o600, owner)
    pub = path.with_suffix(".pub")
    if not pub.exists():
        _write_private(pub, (public_key_bytes(key).hex() + "\n").encode(), 0o644, owner)
    if not existed:
        report.created.append("audit signing key")


def _creds_key_kind(tool: str) -> str:
    has_tpm = subprocess.run([tool, "has-tpm2", "--quiet"], check=False).returncode == 0
    return "tpm2" if has_tpm else "host"


def ensure_kek(
    credential: Path,
    key_file: Path,
    owner: _Owner | None,
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
        _private_dir(credential.parent, None)
        tmp = credential.with_name(f".{credential.name}.{os.getpid()}.tmp")
        made = subprocess.run(
            [
                creds_tool,
                f"--name={CREDENTIAL_NAME}",
                f"--with-key={kind}",
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
    _private_dir(key_file.parent, owner)
    existed = key_file.exists()
    if not existed:
        _write_private(key_file, secrets.token_bytes(envelope.KEY_BYTES), 0o600, owner)
        report.created.append("audit KEK (key file)")
    _ensure_mode(key_file, 0o600, owner)
    try:
        envelope.load_kek(key_file)
    except envelope.EnvelopeError as exc:
        raise FirstbootError(str(exc)) from exc
    report.kek_source = "key-file"


def _san_names() -> list[str]:
    names = {socket.gethostname(), "localhost"}
    names |= {f"{name}.local" for name in list(names) if "." not in name}
    return sorted(n for n in names if n)


def ensure_tls(
    tls_dir: Path, report: FirstbootReport, now: datetime.datetime | None = None
) -> None:
    """Create the local CA and the admin page's server certificate if absent.

    ECDSA P-256 keys (mode 0600, root), a CA valid for 20 years and a server certificate valid
    for 825 days naming the host name, ``<host>.local``, ``localhost`` and 127.0.0.1.

    Raises:
        FirstbootError: An existing certificate or key cannot be read.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    _private_dir(tls_dir, None, 0o755)
    paths = {n: tls_dir / n for n in ("ca.key", "ca.crt", "server.key", "server.crt")}
    if all(p.exists() for p in paths.values()):
        try:
            ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
            server = x509.load_pem_x509_certificate(paths["server.crt"].read_bytes())
            server.verify_directly_issued_by(ca)
        except (ValueError, TypeError) as exc:
            raise FirstbootError(f"{tls_dir}: existing TLS files are broken ({exc})") from exc
        for name in ("ca.key", "server.key"):
            _ensure_mode(paths[name], 0o600, None)
        return
    if any(p.exists() for p in paths.values()):
        raise FirstbootError(f"{tls_dir}: incomplete TLS files; move them away to regenerate")
    now = now or datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Clinic voice appliance"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Appliance local CA {secrets.token_hex(4)}"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=20 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = _san_names()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    none = serialization.NoEncryption()
    _write_private(paths["ca.key"], ca_key.private_bytes(pem, pkcs8, none))
    _write_private(paths["server.key"], server_key.private_bytes(pem, pkcs8, none))
    _write_private(paths["server.crt"], server_cert.public_bytes(pem), 0o644)
    _write_private(paths["ca.crt"], ca_cert.public_bytes(pem), 0o644)
    report.created.append("TLS CA and server certificate")


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
        _ensure_mode(hash_file, 0o600, None)
        return
    code = new_enrolment_code()
    hasher = PasswordHasher(
        time_cost=ARGON2_PARAMS["time_cost"],
        memory_cost=ARGON2_PARAMS["memory_cost"],
        parallelism=ARGON2_PARAMS["parallelism"],
        type=Type.ID,
    )
    hashed = hasher.hash(code)
    _private_dir(notice_file.parent, None)
    notice = (
        "Clinic voice appliance: one-time enrolment code for the first administrator\n"
        f"  {code}\n"
        "Enter it on the admin page (https://<this box>/enrol). It works once; only its\n"
        "Argon2id hash is stored. Delete this file after enrolment.\n"
    )
    notice_file.unlink(missing_ok=True)  # a code whose hash is gone is useless
    _write_private(notice_file, notice.encode())
    _write_private(hash_file, (hashed + "\n").encode())
    report.created.append("enrolment code")
    if console is not None:
        try:
            with open(console, "a", encoding="utf-8") as out:
                out.write("\n" + notice + "\n")
        except OSError as exc:
            _LOGGER.warning(
                "console %s not writable (%s); the code is in %s", console, exc, notice_file
            )


# --- default credentials -------------------------------------------------------------------


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


# --- the whole run -------------------------------------------------------------------------


def _service_owner(user: str | None, root: Path) -> _Owner | None:
    if not user:
        return None
    if root == Path("/"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError as exc:
            raise FirstbootError(f"service user {user!r} does not exist") from exc
        return _Owner(entry.pw_uid, entry.pw_gid)
    for line in (root / "etc/passwd").read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return _Owner(int(fields[2]), int(fields[3]))
    raise FirstbootError(f"service user {user!r} does not exist in {root}/etc/passwd")


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
    owner = _service_owner(user, root)
    tool = shutil.which(creds_tool) if creds_tool else None
    etc = _in_root(root, config).parent
    ensure_signing_key(_in_root(root, settings.signing_key_file), owner, report)
    ensure_kek(
        etc / "credentials" / f"{CREDENTIAL_NAME}.cred",
        _in_root(root, settings.kek_file),
        owner,
        tool,
        report,
    )
    for path in (settings.db, settings.checkpoint_file):
        _private_dir(_in_root(root, path).parent, owner)
    ensure_tls(etc / "tls", report)
    ensure_enrolment(
        etc / "enrolment.argon2", etc / "firstboot" / "enrolment-code.txt", console, report
    )
    lock_default_credentials(root, report)
    marker = etc / ".firstboot-done"
    if not marker.exists():
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        _write_private(marker, f"{stamp}\n".encode(), 0o644)
    return report


def fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes, hex (for comparing keys across runs without printing them)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


__all__ = [
    "FirstbootError",
    "FirstbootReport",
    "dump_settings_toml",
    "fingerprint",
    "new_enrolment_code",
    "run_firstboot",
]
