#!/usr/bin/env python3
"""Build the artefacts the fleet collection installs, into a local artefact repository.

Run it with the project's virtual environment (it imports ``appliance.models.manifest`` and
``appliance.models.store`` and uses that environment's pip and setuptools)::

    .venv/bin/python ansible/scripts/build_release.py release --version 0.1.1 --repo DIR
    .venv/bin/python ansible/scripts/build_release.py runtime --repo DIR
    .venv/bin/python ansible/scripts/build_release.py models --repo DIR
    .venv/bin/python ansible/scripts/build_release.py runtime-id

Three layers (docs/decisions/0007-versioned-release-dirs.md):

* ``runtimes/runtime-<id>.tar``: the dependency layer, every installed distribution of the venv
  except ``appliance`` itself (an uncompressed tar of ``site-packages``: most of it is already
  compressed model runtimes and shared objects). ``<id>`` hashes the Python tag, the platform
  and the sorted ``name==version`` list, so releases whose dependency set is unchanged share it.
* ``releases/appliance-<version>.tar.gz``: the app layer, a few hundred KiB: the appliance wheel
  at that version, ``release.json`` (version, runtime id, models id), the systemd units and
  supervisord config, and the model manifest the release expects.
* ``models/models-<id>.tar``: the model store, with a ``SHA256SUMS`` generated from the manifest
  (the store is verified against the manifest before it is packed). ``<id>`` is derived from the
  manifest's digests, so the store is shipped again only when a model changes.

Every artefact gets a ``<file>.sha256`` sidecar (``sha256sum`` format); ``SHA256SUMS`` at the
repository root lists them all. Every artefact, the release metadata ``appliance-<v>.json`` and
the release's file list ``appliance-<v>.files`` (every file of the release tarball and of the
installed wheel, which boxes check before a switch or rollback) is also signed with the release
key: ``<file>.minisig``, Ed25519 in minisign's format (``appliance.release``,
docs/decisions/0017-signed-releases.md). The hashes catch corruption; only the signatures are
trusted. The secret key comes from ``--signing-key`` or ``$APPLIANCE_RELEASE_SIGNING_KEY`` and
never lives in the repository; a test or development key pair is made with::

    .venv/bin/python ansible/scripts/build_release.py keygen --secret KEY --public KEY.pub

Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from appliance import release as signing  # noqa: E402 - needs the source tree on sys.path

#: Environment variable naming the release signing key (PKCS#8 PEM, mode 0600).
KEY_ENV = "APPLIANCE_RELEASE_SIGNING_KEY"
_VERSION_RE = re.compile(r"^\d+(\.\d+)*([a-z]+\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?$")
_EXCLUDED_DISTS = {"appliance"}
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_id(site_packages: Path) -> tuple[str, list[str]]:
    """Key of the dependency layer: Python tag + platform + sorted ``name==version`` list.

    Args:
        site_packages: The environment's site-packages directory.

    Returns:
        (16 hex characters, the requirement lines that were hashed).
    """
    reqs = sorted(
        f"{_normalise(d.metadata['Name'])}=={d.version}"
        for d in metadata.distributions(path=[str(site_packages)])
        if _normalise(d.metadata["Name"]) not in _EXCLUDED_DISTS
    )
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}-{sysconfig.get_platform()}"
    text = tag + "\n" + "\n".join(reqs) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()[:16], [tag, *reqs]


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _excluded_runtime_entries(site_packages: Path) -> set[str]:
    """Top-level entries of site-packages that belong to the appliance, not the runtime."""
    out = set()
    for entry in site_packages.iterdir():
        name = entry.name.lower()
        if name.startswith(("appliance-", "__editable__.appliance", "__editable___appliance")):
            out.add(entry.name)
    return out


def _write_sidecar(path: Path, key: Any = None) -> str:
    """Write ``<path>.sha256`` and, with a key, ``<path>.minisig``."""
    digest = sha256_file(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    if key is not None:
        signing.sign_file(path, key)
    return digest


def load_signing_key(path: Path | None) -> Any:
    """The release signing key from ``path`` or ``$APPLIANCE_RELEASE_SIGNING_KEY``.

    Raises:
        SystemExit: No key was given, or it is unreadable, readable by others or not Ed25519.
    """
    path = path or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    if path is None:
        raise SystemExit(
            f"no release signing key: pass --signing-key or set ${KEY_ENV} "
            "(make a test key with: build_release.py keygen --secret KEY --public KEY.pub)"
        )
    try:
        return signing.load_secret_key(path)
    except signing.SignatureError as e:
        raise SystemExit(str(e)) from e


def _signed_by(path: Path, key: Any) -> bool:
    """Whether an artefact already in the repository carries a valid signature by ``key``.

    One that does not (unsigned, or changed since it was signed) is built again, never signed
    as it is: the repository's bytes are not trusted.
    """
    pub = signing.PublicKey(
        signing._key_id(key.public_key()),  # noqa: SLF001 - same project, one key-id rule
        key.public_key(),
    )
    try:
        signing.verify_file(path, pub)
    except signing.SignatureError:
        return False
    return path.with_name(path.name + ".sha256").exists()


def _write_repo_sums(repo: Path) -> None:
    lines = []
    for sidecar in sorted(repo.rglob("*.sha256")):
        digest, _, name = sidecar.read_text().strip().partition("  ")
        lines.append(f"{digest}  {(sidecar.parent / name).relative_to(repo)}\n")
    tmp = repo / ".SHA256SUMS.tmp"
    tmp.write_text("".join(lines))
    tmp.replace(repo / "SHA256SUMS")


def _atomic_move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.move(str(src), tmp)
    tmp.replace(dest)


def build_runtime(repo: Path, key: Any) -> Path:
    """Pack the dependency layer of the running environment into the repository; sign it."""
    site = _site_packages()
    rid, reqs = runtime_id(site)
    dest = repo / "runtimes" / f"runtime-{rid}.tar"
    if dest.exists() and _signed_by(dest, key):
        print(f"runtime {rid} already in {repo}", file=sys.stderr)
        return dest
    excluded = _excluded_runtime_entries(site)
    with tempfile.TemporaryDirectory(dir=repo) as tmp:
        (Path(tmp) / "RUNTIME_ID").write_text(rid + "\n")
        (Path(tmp) / "requirements.txt").write_text("\n".join(reqs[1:]) + "\n")
        out = Path(tmp) / dest.name
        cmd = ["tar", "-C", tmp, "-cf", str(out), "RUNTIME_ID", "requirements.txt"]
        subprocess.run(cmd, check=True)
        cmd = ["tar", "-C", str(site.parent), "-rf", str(out)]
        cmd += [f"--exclude=site-packages/{name}" for name in sorted(excluded)]
        cmd += ["--exclude=__pycache__", "site-packages"]
        subprocess.run(cmd, check=True)
        _atomic_move(out, dest)
    _write_sidecar(dest, key)
    _write_repo_sums(repo)
    return dest


def _stage_source(source: Path, version: str, staging: Path) -> Path:
    tree = staging / "src-tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (source / name).exists():
            shutil.copy2(source / name, tree / name)
    shutil.copytree(
        source / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    pyproject = tree / "pyproject.toml"
    text, count = re.subn(
        r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject.read_text(), count=1
    )
    if count != 1:
        raise SystemExit(f"{source / 'pyproject.toml'}: no [project] version line to set")
    pyproject.write_text(text)
    return tree


def models_id(manifest: Path) -> str:
    """Key of a model store: hash of the (name, path, sha256) of every default-profile file."""
    sys.path.insert(0, str(ROOT / "src"))
    from appliance.models.manifest import load_manifest

    lines = []
    for model in load_manifest(manifest).select("default"):
        for entry in model.files:
            lines.append(f"{model.name} {model.dest} {entry.path} {entry.sha256}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _wheel_files(wheel: Path, python: str) -> dict[str, str]:
    """``{path in the release dir: sha256}`` of what pip installs from ``wheel`` into ``.venv``.

    pip copies a pure wheel's files verbatim into site-packages and rewrites only its RECORD
    (adding INSTALLER, REQUESTED, direct_url.json), which are therefore not listed.
    """
    out = {}
    base = f".venv/lib/python{python}/site-packages"
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.infolist():
            name = member.filename
            if member.is_dir() or name.endswith(".dist-info/RECORD"):
                continue
            if ".data/" in name.split("/", 1)[0] + "/":
                raise SystemExit(f"{wheel.name}: a .data directory is not supported: {name}")
            out[f"{base}/{name}"] = hashlib.sha256(zf.read(member)).hexdigest()
    return out


def _file_list(top: Path, wheel: Path, python: str) -> str:
    entries = {
        p.relative_to(top).as_posix(): sha256_file(p)
        for p in top.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    entries.update(_wheel_files(wheel, python))
    return signing.format_file_list((k, v) for k, v in entries.items())


def build_release(repo: Path, version: str, source: Path, key: Any) -> Path:
    """Build the app layer for ``version`` from a source tree into the repository; sign it."""
    if not _VERSION_RE.match(version):
        raise SystemExit(f"not a PEP 440 version this tool accepts: {version!r}")
    dest = repo / "releases" / f"appliance-{version}.tar.gz"
    rid, _ = runtime_id(_site_packages())
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        tree = _stage_source(source, version, staging)
        top = staging / f"appliance-{version}"
        (top / "wheels").mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
             "--no-build-isolation", "--wheel-dir", str(top / "wheels"), str(tree)],
            check=True,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )  # fmt: skip
        wheels = sorted((top / "wheels").glob("appliance-*.whl"))
        if len(wheels) != 1 or f"-{version}-" not in wheels[0].name:
            raise SystemExit(f"expected one appliance {version} wheel, got {wheels}")
        shutil.copytree(source / "systemd", top / "systemd")
        (top / "models").mkdir()
        manifest = source / "models" / "manifest.toml"
        shutil.copy2(manifest, top / "models" / "manifest.toml")
        if (source / "models" / "manifest.lock.toml").exists():
            shutil.copy2(source / "models" / "manifest.lock.toml", top / "models")
        info = {
            "version": version,
            "runtime_id": rid,
            "models_id": models_id(manifest),
            "wheel": f"wheels/{wheels[0].name}",
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "built_from": _describe_source(source),
        }
        (top / "release.json").write_text(json.dumps(info, indent=2) + "\n")
        listing = _file_list(top, wheels[0], str(info["python"]))
        out = staging / dest.name
        with tarfile.open(out, "w:gz") as tar:
            tar.add(top, arcname=top.name, filter=_reproducible)
        _atomic_move(out, dest)
    _write_sidecar(dest, key)
    meta = dest.with_name(f"appliance-{version}.json")
    meta.write_text(json.dumps(info, indent=2) + "\n")
    signing.sign_file(meta, key)
    files = dest.with_name(signing.file_list_name(version))
    files.write_text(listing)
    signing.sign_file(files, key)
    _write_repo_sums(repo)
    return dest


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _describe_source(source: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def build_models(repo: Path, store: Path, key: Any) -> Path:
    """Verify the model store against its manifest, pack it with a SHA256SUMS file, sign it.

    The signature covers the tarball itself (SHA256SUMS inside included), not just the sums.
    """
    sys.path.insert(0, str(ROOT / "src"))
    from appliance.models.manifest import load_manifest
    from appliance.models.store import verify

    manifest_path = store / "manifest.toml"
    manifest = load_manifest(manifest_path)
    problems = verify(manifest, store, "default")
    if problems:
        raise SystemExit(f"{store} does not match its manifest: {problems}")
    mid = models_id(manifest_path)
    dest = repo / "models" / f"models-{mid}.tar"
    if dest.exists() and _signed_by(dest, key):
        print(f"models {mid} already in {repo}", file=sys.stderr)
        return dest
    sums = []
    for model in manifest.select("default"):
        for entry in model.files:
            rel = model.target(Path("."), entry).as_posix()
            sums.append(f"{entry.sha256}  {rel}\n")
    with tempfile.TemporaryDirectory(dir=repo) as tmp:
        (Path(tmp) / "SHA256SUMS").write_text("".join(sums))
        (Path(tmp) / "MODELS_ID").write_text(mid + "\n")
        out = Path(tmp) / dest.name
        subprocess.run(["tar", "-C", tmp, "-cf", str(out), "SHA256SUMS", "MODELS_ID"], check=True)
        names = sorted({line.split("  ", 1)[1].strip().split("/")[0] for line in sums})
        subprocess.run(
            ["tar", "-C", str(store), "-rf", str(out), "manifest.toml", *names], check=True
        )
        _atomic_move(out, dest)
    _write_sidecar(dest, key)
    _write_repo_sums(repo)
    return dest


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rel = sub.add_parser("release", help="build the app layer for one version")
    rel.add_argument("--version", required=True)
    rel.add_argument("--repo", type=Path, required=True)
    rel.add_argument("--source", type=Path, default=ROOT, help="source tree (%(default)s)")
    run = sub.add_parser("runtime", help="pack the dependency layer of this environment")
    run.add_argument("--repo", type=Path, required=True)
    mod = sub.add_parser("models", help="verify and pack the model store")
    mod.add_argument("--repo", type=Path, required=True)
    mod.add_argument("--store", type=Path, default=ROOT / "models" / "store")
    sub.add_parser("runtime-id", help="print this environment's runtime id and exit")
    gen = sub.add_parser("keygen", help="make a release key pair (tests, development)")
    gen.add_argument("--secret", type=Path, required=True, help="secret key (created 0600)")
    gen.add_argument("--public", type=Path, required=True, help="public key (minisign format)")
    for cmd in (rel, run, mod):
        cmd.add_argument(
            "--signing-key", type=Path, default=None, help=f"release secret key (${KEY_ENV})"
        )
    args = parser.parse_args(argv)
    if args.cmd == "runtime-id":
        print(runtime_id(_site_packages())[0])
        return 0
    if args.cmd == "keygen":
        pub = signing.generate_key(args.secret, args.public)
        print(f"release key {pub.key_id_hex}: secret {args.secret}, public {args.public}")
        return 0
    key = load_signing_key(args.signing_key)
    args.repo.mkdir(parents=True, exist_ok=True)
    if args.cmd == "release":
        path = build_release(args.repo.resolve(), args.version, args.source.resolve(), key)
    elif args.cmd == "runtime":
        path = build_runtime(args.repo.resolve(), key)
    else:
        path = build_models(args.repo.resolve(), args.store.resolve(), key)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
