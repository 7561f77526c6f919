#!/usr/bin/env python3
r"""Signed releases: Ed25519 detached signatures (minisign format) and signed file lists.

Every artefact the fleet installs (``releases/appliance-<v>.tar.gz``, ``runtimes/runtime-<id>.tar``,
``models/models-<id>.tar``, the release metadata and the release's file list) is signed with the
release key by ``ansible/scripts/build_release.py``. Boxes and the Ansible roles verify each one
against a public key pinned off the artefact repository (the role's ``appliance_release_pubkey``
and ``/usr/share/appliance/release-signing.pub`` in the image), before anything is unpacked; a
``.sha256`` file recomputed next to a changed artefact does not help, because the signature is
checked, not the hash file. See docs/decisions/0017-signed-releases.md.

Formats (compatible with minisign 0.11, https://jedisct1.github.io/minisign/, so an operator can
check an artefact with ``minisign -Vm FILE -p release-signing.pub``):

* public key: ``untrusted comment: ...`` then base64 of ``"Ed" || key_id (8 bytes) || A (32)``;
* signature ``FILE.minisig``: ``untrusted comment: ...``, base64 of ``"ED" || key_id ||
  Ed25519(BLAKE2b-512(FILE))`` (RFC 8032 section 5.1; BLAKE2b per RFC 7693), ``trusted comment:
  timestamp:<unix s>\tfile:<name>\thashed`` and base64 of the global signature
  ``Ed25519(signature || trusted comment)``. Verification also requires the trusted comment's
  ``file:`` to name the artefact, so a signature cannot be moved to another artefact (e.g. an old
  release renamed as a new one);
* secret key: unencrypted PKCS#8 PEM (``cryptography``), mode 0600, never in the repository;
  the key id is the first 8 bytes of BLAKE2b-512 of the public key.

A release directory on a box carries ``appliance-<version>.files`` (``sha256sum`` format: every
file of the release tarball and every file the appliance wheel installs into ``.venv``) and its
signature. :func:`verify_tree` checks the list's signature, every listed file, that no unlisted
file could run code (a stray ``.pth``, ``sitecustomize.py`` or module), that the environment is
layered on the runtime the release names, and that the model store holds what the release's
manifest pins; ``purge_caches`` removes bytecode caches, which no signature covers.

This module imports only the standard library and ``cryptography`` so that the same file runs as
``ansible/roles/appliance/files/verify_release.py`` with the box's system Python
(``tests/unit/test_release_signing.py`` checks the two are identical).

Command line (``appliance release ...`` or ``python3 verify_release.py ...``)::

    keygen --secret KEY --public KEY.pub     generate a release key pair
    sign --key KEY FILE...                   write FILE.minisig for each FILE
    verify [--pubkey P] FILE [--sig S] [--name NAME]
    verify-tree [--pubkey P] [--purge-caches] RELEASE_DIR

Exit status: 0 verified; 1 refused (one ``release: ...`` line per problem on stderr); 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import configparser
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DEFAULT_PUBKEY = Path("/usr/share/appliance/release-signing.pub")
"""The release public key pinned in the image."""

SIG_SUFFIX = ".minisig"
_PK_ALG = b"Ed"
_SIG_HASHED = b"ED"
_SIG_LEGACY = b"Ed"
_CHUNK = 1 << 20
_LEGACY_MAX = 64 << 20


class SignatureError(Exception):
    """A key or signature is malformed, or a signature does not verify."""


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 release public key with its 8-byte minisign key id."""

    key_id: bytes
    key: Ed25519PublicKey

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse a minisign public key: the whole file, or just its base64 line.

        Raises:
            SignatureError: Not a minisign Ed25519 public key.
        """
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("untrusted comment:")]
        if len(lines) != 1:
            raise SignatureError("a public key is one base64 line (after an optional comment)")
        raw = _b64(lines[0], "public key")
        if len(raw) != 42 or raw[:2] != _PK_ALG:
            raise SignatureError("not a minisign Ed25519 public key")
        return cls(raw[2:10], Ed25519PublicKey.from_public_bytes(raw[10:]))

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        """Read and parse a public key file (raises SignatureError, naming the file)."""
        try:
            return cls.parse(Path(path).read_text(encoding="ascii"))
        except (OSError, UnicodeDecodeError) as e:
            raise SignatureError(f"{path}: cannot read the public key: {e}") from e
        except SignatureError as e:
            raise SignatureError(f"{path}: {e}") from e

    @property
    def key_id_hex(self) -> str:
        """The key id as minisign prints it (16 upper-case hex digits)."""
        return self.key_id[::-1].hex().upper()

    def to_text(self) -> str:
        """The public key file's text (two lines)."""
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        line = base64.b64encode(_PK_ALG + self.key_id + raw).decode()
        return f"untrusted comment: appliance release public key {self.key_id_hex}\n{line}\n"


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise SignatureError(f"{what}: invalid base64") from e


def _key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.blake2b(raw, digest_size=64).digest()[:8]


def generate_key(secret: Path, public: Path) -> PublicKey:
    """Generate a release key pair: ``secret`` (PKCS#8 PEM, mode 0600) and ``public`` (minisign).

    Raises:
        FileExistsError: ``secret`` exists (a key is never overwritten).
    """
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    pub = PublicKey(_key_id(private.public_key()), private.public_key())
    Path(public).write_text(pub.to_text(), encoding="ascii")
    return pub


def load_secret_key(path: Path) -> Ed25519PrivateKey:
    """Read a PKCS#8 PEM Ed25519 private key.

    Raises:
        SignatureError: The file is unreadable, readable by others, or not an Ed25519 key.
    """
    try:
        mode = Path(path).stat().st_mode
        data = Path(path).read_bytes()
    except OSError as e:
        raise SignatureError(f"{path}: cannot read the signing key: {e.strerror or e}") from e
    if mode & 0o077:
        raise SignatureError(f"{path}: the signing key must not be readable by others (chmod 600)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: not a PEM private key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key")
    return key


def _blake2b_file(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=64)
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def sha256_file(path: Path) -> str:
    """Lowercase hex SHA-256 of a file (FIPS 180-4)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sign_file(path: Path, key: Ed25519PrivateKey, *, name: str | None = None) -> Path:
    """Write ``<path>.minisig``: a prehashed minisign signature naming ``name`` (default: basename).

    Returns:
        The signature file.
    """
    path = Path(path)
    key_id = _key_id(key.public_key())
    signature = key.sign(_blake2b_file(path))
    name = name or path.name
    if "\t" in name or "\n" in name:
        raise SignatureError(f"{name!r}: an artefact name may not contain tabs or newlines")
    trusted = f"timestamp:{int(time.time())}\tfile:{name}\thashed"
    global_sig = key.sign(signature + trusted.encode())
    text = (
        f"untrusted comment: signature from appliance release key {key_id[::-1].hex().upper()}\n"
        f"{base64.b64encode(_SIG_HASHED + key_id + signature).decode()}\n"
        f"trusted comment: {trusted}\n"
        f"{base64.b64encode(global_sig).decode()}\n"
    )
    out = path.with_name(path.name + SIG_SUFFIX)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="ascii")
    tmp.replace(out)
    return out


def verify_file(
    path: Path, public: PublicKey, *, sig: Path | None = None, name: str | None = None
) -> str:
    """Check ``path`` against its minisign signature and the pinned ``public`` key.

    Args:
        path: The artefact.
        public: The pinned release key.
        sig: The signature file (default ``<path>.minisig``).
        name: The artefact name the trusted comment must give (default: ``path``'s basename).

    Returns:
        The trusted comment.

    Raises:
        SignatureError: The signature is missing, malformed, by another key, does not match the
            bytes, or names another artefact.
    """
    path = Path(path)
    sig = Path(sig) if sig is not None else path.with_name(path.name + SIG_SUFFIX)
    name = name or path.name
    try:
        lines = sig.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SignatureError(f"{sig}: no readable signature: {e}") from e
    if len(lines) < 4 or not lines[0].startswith("untrusted comment:"):
        raise SignatureError(f"{sig}: not a minisign signature")
    if not lines[2].startswith("trusted comment: "):
        raise SignatureError(f"{sig}: no trusted comment")
    raw = _b64(lines[1], str(sig))
    trusted = lines[2][len("trusted comment: ") :]
    global_sig = _b64(lines[3], str(sig))
    if len(raw) != 74 or len(global_sig) != 64:
        raise SignatureError(f"{sig}: not a minisign Ed25519 signature")
    alg, key_id, signature = raw[:2], raw[2:10], raw[10:]
    if key_id != public.key_id:
        raise SignatureError(
            f"{sig}: signed by key {key_id[::-1].hex().upper()}, not the pinned release key "
            f"{public.key_id_hex}"
        )
    try:
        if alg == _SIG_HASHED:
            public.key.verify(signature, _blake2b_file(path))
        elif alg == _SIG_LEGACY:
            if path.stat().st_size > _LEGACY_MAX:
                raise SignatureError(f"{sig}: legacy (unhashed) signature on a large file")
            public.key.verify(signature, path.read_bytes())
        else:
            raise SignatureError(f"{sig}: unknown signature algorithm {alg!r}")
    except InvalidSignature as e:
        raise SignatureError(f"{path}: the signature does not match its content") from e
    except OSError as e:
        raise SignatureError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        public.key.verify(global_sig, signature + trusted.encode())
    except InvalidSignature as e:
        raise SignatureError(f"{sig}: the trusted comment was altered") from e
    fields = dict(f.split(":", 1) for f in trusted.split("\t") if ":" in f)
    if fields.get("file") != name:
        raise SignatureError(
            f"{sig}: the signature is for {fields.get('file')!r}, not {name!r} "
            "(a signature moved to another artefact)"
        )
    return trusted


# --------------------------------------------------------------------------------------------
# Signed file lists of release directories
# --------------------------------------------------------------------------------------------

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def format_file_list(entries: Iterable[tuple[str, str]]) -> str:
    """``sha256  path`` lines (``sha256sum`` format), sorted by path."""
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(entries))


def parse_file_list(text: str, where: str) -> dict[str, str]:
    """Parse a file list into ``{relative path: sha256}``.

    Raises:
        SignatureError: A line is malformed, a path is unsafe or listed twice.
    """
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        pure = PurePosixPath(rel)
        if not sep or not _HEX64.match(digest) or not rel:
            raise SignatureError(f"{where}:{i}: not 'sha256  path'")
        if pure.is_absolute() or ".." in pure.parts or str(pure) != rel:
            raise SignatureError(f"{where}:{i}: unsafe path {rel!r}")
        if rel in out:
            raise SignatureError(f"{where}:{i}: {rel!r} listed twice")
        out[rel] = digest
    return out


def file_list_name(version: str) -> str:
    """The signed file list of release ``version`` (in the repository and the release dir)."""
    return f"appliance-{version}.files"


def _allowed_unlisted(rel: str, version: str) -> bool:
    parts = PurePosixPath(rel).parts
    if rel in (file_list_name(version), file_list_name(version) + SIG_SUFFIX, ".installed"):
        return True
    if rel in (".venv/lib64", "models/store"):
        return True  # links that venv and the role make (models/store: _check_links)
    if (len(parts) == 3 and parts[:2] == (".venv", "bin")) or rel == ".venv/pyvenv.cfg":
        return True  # written on the box: _check_venv
    dist_info = f"appliance-{version}.dist-info"
    return (
        len(parts) == 6
        and parts[:2] == (".venv", "lib")
        and parts[3] == "site-packages"
        and parts[4] == dist_info
        and parts[5] in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
    )


_ACTIVATE = frozenset({"activate", "activate.csh", "activate.fish", "Activate.ps1"})
_PYVENV_KEYS = frozenset(
    {"home", "include-system-site-packages", "version", "executable", "command"}
)
_INTERPRETER = re.compile(r"python(3(\.\d+)?)?")


def _console_scripts(python: str, module: str, func: str) -> tuple[str, str]:
    """The texts pip (distlib's ScriptMaker) writes for a console script: short, long shebang."""
    body = (
        "# -*- coding: utf-8 -*-\n"
        "import re\n"
        "import sys\n"
        f"from {module} import {func}\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({func}())\n"
    )
    quotes = "'" * 3
    long_shebang = f'#!/bin/sh\n{quotes}exec\' "{python}" "$0" "$@"\n\' {quotes}\n'
    return f"#!{python}\n{body}", long_shebang + body


def _entry_points(path: Path) -> dict[str, tuple[str, str]]:
    """``{script name: (module, function)}`` of a wheel's ``entry_points.txt``."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"))
    if not parser.has_section("console_scripts"):
        return {}
    out = {}
    for name, target in parser.items("console_scripts"):
        module, _, func = target.strip().partition(":")
        out[name] = (module.strip(), func.strip())
    return out


def _check_venv(root: Path, entry_points: Path) -> list[str]:
    """Check the parts of ``.venv`` that are written on the box, so not in the signed list.

    ``pyvenv.cfg`` may only name the base interpreter (no system site-packages); ``bin/`` may hold
    the interpreter links (to ``home`` or to each other), venv's activate scripts (sourced by a
    person, never run by a service), and pip's console scripts for the signed wheel's entry
    points, byte for byte as pip writes them (the services run ``.venv/bin/appliance``).
    """
    venv = root / ".venv"
    problems: list[str] = []
    cfg: dict[str, str] = {}
    try:
        lines = (venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines()
    except OSError:
        return [".venv/pyvenv.cfg: missing"]
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            cfg[key.strip()] = value.strip()
        elif line.strip():
            problems.append(".venv/pyvenv.cfg: an unexpected line")
    if set(cfg) - _PYVENV_KEYS or cfg.get("include-system-site-packages", "false") != "false":
        problems.append(".venv/pyvenv.cfg: more than the base interpreter")
    home = cfg.get("home", "")
    try:
        scripts = _entry_points(entry_points)
    except (OSError, configparser.Error):
        scripts = {}
        problems.append("the wheel's entry_points.txt is unreadable")
    # The shebang names the release as the installer spelt its path (absolute, maybe via links).
    pythons = {f"{base}/.venv/bin/python" for base in (root.absolute(), root.resolve())}
    bin_dir = venv / "bin"
    for entry in sorted(bin_dir.iterdir()) if bin_dir.is_dir() else []:
        rel = f".venv/bin/{entry.name}"
        plain = entry.is_file() and not entry.is_symlink()
        if _INTERPRETER.fullmatch(entry.name):
            target = os.readlink(entry) if entry.is_symlink() else ""
            sibling = bool(_INTERPRETER.fullmatch(target))
            if not (sibling or (home and os.path.dirname(target) == home)):
                problems.append(f"{rel}: not a link to the base interpreter in {home!r}")
        elif entry.name in _ACTIVATE and plain:
            continue
        elif entry.name in scripts and plain:
            text = entry.read_text(encoding="utf-8", errors="replace")
            if not any(text in _console_scripts(py, *scripts[entry.name]) for py in pythons):
                problems.append(f"{rel}: not the console script pip writes for the release")
        else:
            problems.append(f"{rel}: not part of the signed release")
    return problems


def _runtime_pth_ok(path: Path, runtime_id: str) -> bool:
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.fullmatch(r'import site; site\.addsitedir\("([^"\\]+)"\)\n', text)
    return m is not None and m.group(1).endswith(f"/runtimes/{runtime_id}/site-packages")


def verify_tree(
    root: Path, public: PublicKey, *, purge_caches: bool = False, check_models: bool = True
) -> list[str]:
    """Check an installed release directory against its signed file list.

    Args:
        root: ``<prefix>/releases/<version>``; ``version`` is its name.
        public: The pinned release key.
        purge_caches: Remove every ``__pycache__`` directory in the release first (bytecode is
            written on the box, so no signature covers it and a planted ``.pyc`` would run).
        check_models: Also hash the model store (``models/store``) against the default-profile
            digests of the release's (signed) ``models/manifest.toml``.

    Returns:
        The problems found; empty when the release is intact.

    Raises:
        SignatureError: The file list's signature is missing or does not verify.
    """
    root = Path(root)
    version = root.name
    listing = root / file_list_name(version)
    verify_file(listing, public)
    wanted = parse_file_list(listing.read_text(encoding="utf-8"), str(listing))
    problems: list[str] = []
    if purge_caches:
        for cache in sorted(root.rglob("__pycache__"), reverse=True):
            if cache.is_dir() and not cache.is_symlink():
                shutil.rmtree(cache)
    for rel, digest in sorted(wanted.items()):
        path = root / rel
        try:
            st = path.lstat()
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{rel}: not a regular file")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: changed since it was signed")
    info = _release_info(root, wanted, problems)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        entries = list(filenames) + [d for d in dirnames if (here / d).is_symlink()]
        for name in entries:
            rel = (here / name).relative_to(root).as_posix()
            if rel in wanted or _allowed_unlisted(rel, version):
                continue
            if "__pycache__" in PurePosixPath(rel).parts and name.endswith(".pyc"):
                continue
            if name == "appliance-runtime.pth" and info is not None:
                if _runtime_pth_ok(here / name, str(info.get("runtime_id", ""))):
                    continue
                problems.append(f"{rel}: does not layer the release on its runtime")
                continue
            problems.append(f"{rel}: not part of the signed release")
    suffix = f"appliance-{version}.dist-info/entry_points.txt"
    entry_points = [rel for rel in wanted if rel.endswith(suffix)]
    if (root / ".venv").exists():
        if entry_points:
            problems += _check_venv(root, root / entry_points[0])
        else:
            problems.append(f".venv: the signed list has no {suffix}")
    if info is not None:
        problems += _check_links(root, info)
        if check_models and (root / "models" / "store").exists():
            problems += check_model_store(root / "models" / "manifest.toml", root / "models/store")
    return problems


def _release_info(
    root: Path, wanted: dict[str, str], problems: list[str]
) -> dict[str, object] | None:
    if "release.json" not in wanted or any(p.startswith("release.json:") for p in problems):
        problems.append("release.json: not covered by the signed list")
        return None
    try:
        info = json.loads((root / "release.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        problems.append("release.json: unreadable")
        return None
    if not isinstance(info, dict) or info.get("version") != root.name:
        problems.append(f"release.json: names another version than {root.name}")
        return None
    return info


def _check_links(root: Path, info: dict[str, object]) -> list[str]:
    store = root / "models" / "store"
    if store.is_symlink() and os.readlink(store) != f"../../../models/{info.get('models_id')}":
        return [f"models/store: points at {os.readlink(store)}, not the release's model store"]
    if store.exists() and not store.is_symlink():
        return ["models/store: not a link to the release's model store"]
    return []


def _default_files(manifest: dict[str, object]) -> dict[str, tuple[str, int]]:
    """``{store path: (sha256, size)}`` of the default profile of a parsed manifest."""
    out: dict[str, tuple[str, int]] = {}
    models = manifest.get("model", [])
    for model in models if isinstance(models, list) else []:
        if not isinstance(model, dict) or model.get("profile") != "default":
            continue
        for entry in model.get("files", []):
            rel = str(model["dest"]) if entry["path"] == "." else f"{model['dest']}/{entry['path']}"
            out[rel] = (str(entry["sha256"]), int(entry["size"]))
    return out


def check_model_store(manifest_path: Path, store: Path) -> list[str]:
    """Hash every default-profile file of ``store`` against ``manifest_path`` (SHA-256, size).

    The store's own ``manifest.toml`` (which :func:`appliance.models.store.model_path` resolves
    names with) must describe the same default-profile files.

    Returns:
        The problems found; empty when the store matches.
    """
    try:
        with Path(manifest_path).open("rb") as f:
            wanted = _default_files(tomllib.load(f))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        return [f"{manifest_path}: unreadable model manifest: {e}"]
    problems: list[str] = []
    try:
        with (Path(store) / "manifest.toml").open("rb") as f:
            if _default_files(tomllib.load(f)) != wanted:
                problems.append("models/store/manifest.toml: differs from the release's manifest")
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError):
        problems.append("models/store/manifest.toml: missing or unreadable")
    for rel, (digest, size) in sorted(wanted.items()):
        path = Path(store) / rel
        if not path.is_file():
            problems.append(f"models/store/{rel}: missing")
        elif path.stat().st_size != size or sha256_file(path) != digest:
            problems.append(f"models/store/{rel}: changed (SHA-256 or size)")
    return problems


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _pubkeys(args: argparse.Namespace) -> list[PublicKey]:
    first = PublicKey.parse(args.pubkey_text) if args.pubkey_text else PublicKey.load(args.pubkey)
    return [first, *(PublicKey.load(p) for p in args.also_pubkey)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance release", description="Sign and verify release artefacts (Ed25519)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    key = argparse.ArgumentParser(add_help=False)
    key.add_argument(
        "--pubkey", type=Path, default=DEFAULT_PUBKEY, help="pinned public key (%(default)s)"
    )
    key.add_argument("--pubkey-text", default="", help="the public key itself (base64 line)")
    key.add_argument(
        "--also-pubkey",
        type=Path,
        action="append",
        default=[],
        help="a further pinned key file (e.g. the image's) that must verify too; repeatable",
    )
    gen = sub.add_parser("keygen", help="generate a release key pair")
    gen.add_argument("--secret", type=Path, required=True, help="secret key file (created 0600)")
    gen.add_argument("--public", type=Path, required=True, help="public key file")
    sign = sub.add_parser("sign", help="write FILE.minisig for each FILE")
    sign.add_argument("--key", type=Path, required=True, help="secret key file")
    sign.add_argument("files", type=Path, nargs="+")
    ver = sub.add_parser("verify", parents=[key], help="verify one artefact's signature")
    ver.add_argument("file", type=Path)
    ver.add_argument("--sig", type=Path, default=None, help="signature (FILE.minisig)")
    ver.add_argument("--name", default=None, help="artefact name the signature must give")
    tree = sub.add_parser("verify-tree", parents=[key], help="verify an installed release dir")
    tree.add_argument("root", type=Path)
    tree.add_argument("--purge-caches", action="store_true", help="remove __pycache__ first")
    tree.add_argument("--no-models", action="store_true", help="do not hash the model store")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 verified, 1 refused, 2 usage)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "keygen":
            pub = generate_key(args.secret, args.public)
            print(f"release key {pub.key_id_hex}: secret {args.secret}, public {args.public}")
        elif args.command == "sign":
            secret = load_secret_key(args.key)
            for path in args.files:
                print(sign_file(path, secret))
        elif args.command == "verify":
            for public in _pubkeys(args):
                verify_file(args.file, public, sig=args.sig, name=args.name)
            print(f"ok: {args.file} is signed by the release key")
        else:
            keys = _pubkeys(args)
            for public in keys[1:]:
                verify_file(args.root / file_list_name(args.root.name), public)
            problems = verify_tree(
                args.root,
                keys[0],
                purge_caches=args.purge_caches,
                check_models=not args.no_models,
            )
            for problem in problems:
                print(f"release: {args.root}: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"ok: {args.root} matches its signed file list")
    except SignatureError as e:
        print(f"release: refused: {e}", file=sys.stderr)
        return 1
    except (OSError, FileExistsError) as e:
        print(f"release: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
