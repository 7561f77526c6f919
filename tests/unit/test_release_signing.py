"""Signed releases (appliance.release, build_release.py, the roles' verify_release.py).

Real artefacts are built with ansible/scripts/build_release.py (the release layer, a small model
store) and signed with real Ed25519 keys; a release directory is installed the way the appliance
role does it (unpack, ``venv --without-pip``, the runtime ``.pth``, ``pip install`` of the
wheel) and then changed the ways an attacker with the disk could. The verifier runs three ways:
in process, as the role's script under the box's system Python, and as ``appliance release``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from appliance import release
from appliance.cli import main as appliance_main

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "ansible" / "scripts" / "build_release.py"
ROLE_SCRIPTS = [
    REPO / "ansible" / "roles" / "appliance" / "files" / "verify_release.py",
    REPO / "ansible" / "roles" / "models" / "files" / "verify_release.py",
]
IMAGE_PUB = REPO / "image" / "mkosi.extra" / "usr" / "share" / "appliance" / "release-signing.pub"


def _box_python() -> str:
    """The box's system Python when it has ``cryptography`` (as on Debian boxes), else ours."""
    system = Path("/usr/bin/python3")
    if system.exists():
        probe = subprocess.run([str(system), "-c", "import cryptography"], check=False)
        if probe.returncode == 0:
            return str(system)
    return sys.executable


BOX_PYTHON = _box_python()
VERSION = "0.9.1"


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)  # type: ignore[call-overload]


def _build(*args: str, key: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_RELEASE_SIGNING_KEY"}
    extra = ["--signing-key", str(key)] if key else []
    return _run([sys.executable, str(BUILD), *args, *extra], env=env)


def _keygen(directory: Path, name: str) -> tuple[Path, Path]:
    secret, public = directory / f"{name}.key", directory / f"{name}.pub"
    out = _run(
        [sys.executable, str(BUILD), "keygen", "--secret", str(secret), "--public", str(public)]
    )
    assert out.returncode == 0, out.stderr
    return secret, public


def _tamper(path: Path) -> None:
    """Flip one byte in the middle and recompute the .sha256 sidecar, as an attacker would."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    digest = hashlib.sha256(bytes(data)).hexdigest()
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


def _verifiers(path: Path, pub: Path) -> dict[str, int]:
    """Exit status of each verifier the fleet and the box use, for one artefact."""
    codes = {
        "role script (box python)": _run(
            [
                BOX_PYTHON,
                str(ROLE_SCRIPTS[0]),
                "verify",
                "--pubkey-text",
                pub.read_text().splitlines()[1],
                str(path),
            ]
        ).returncode,  # fmt: skip
        "appliance release verify": appliance_main(
            ["release", "verify", "--pubkey", str(pub), str(path)]
        ),
    }
    try:
        release.verify_file(path, release.PublicKey.load(pub))
        codes["in process"] = 0
    except release.SignatureError:
        codes["in process"] = 1
    return codes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {"release": _keygen(root, "release"), "other": _keygen(root, "other")}


def _small_store(root: Path) -> Path:
    """A model store of one tiny default-profile model and its manifest (build_models packs it)."""
    store = root / "store"
    (store / "vad").mkdir(parents=True)
    blob = b"onnx" * 4096
    digest = hashlib.sha256(blob).hexdigest()
    (store / "vad" / "tiny.onnx").write_bytes(blob)
    (store / "manifest.toml").write_text(
        textwrap.dedent(
            f"""\
            schema = 1

            [[model]]
            name = "tiny-vad"
            role = "vad"
            runtime = "onnxruntime"
            licence = "MIT"
            profile = "default"
            dest = "vad/tiny.onnx"
            source = {{ pypi = "x==1", resource = "x/tiny.onnx" }}
            files = [{{ path = ".", sha256 = "{digest}", size = {len(blob)} }}]
            """
        )
    )
    return store


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, tuple[Path, Path]]) -> Path:
    """An artefact repository: a release, a model store and a runtime, built and signed."""
    root = tmp_path_factory.mktemp("repo")
    repo = root / "artefacts"
    secret = keys["release"][0]
    out = _build("release", "--version", VERSION, "--repo", str(repo), key=secret)
    assert out.returncode == 0, out.stderr
    out = _build("models", "--repo", str(repo), "--store", str(_small_store(root)), key=secret)
    assert out.returncode == 0, out.stderr
    # The runtime layer of this venv is 1.3 GB; a small tar goes through the same signing path.
    sys.path.insert(0, str(BUILD.parent))
    try:
        import build_release
    finally:
        sys.path.remove(str(BUILD.parent))
    runtime = repo / "runtimes" / "runtime-0123456789abcdef.tar"
    runtime.parent.mkdir()
    payload = root / "RUNTIME_ID"
    payload.write_text("0123456789abcdef\n")
    with tarfile.open(runtime, "w") as tar:
        tar.add(payload, arcname="RUNTIME_ID")
        tar.addfile(tarfile.TarInfo("site-packages/"), None)
    build_release._write_sidecar(runtime, build_release.load_signing_key(secret))  # noqa: SLF001
    return repo


def _artefacts(repo: Path) -> dict[str, Path]:
    return {
        "release": repo / "releases" / f"appliance-{VERSION}.tar.gz",
        "release metadata": repo / "releases" / f"appliance-{VERSION}.json",
        "release file list": repo / "releases" / f"appliance-{VERSION}.files",
        "runtime": next((repo / "runtimes").glob("runtime-*.tar")),
        "model store": next((repo / "models").glob("models-*.tar")),
    }


# ---- the artefacts ----------------------------------------------------------------------------


def test_untouched_artefacts_verify_everywhere(
    repo: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    pub = keys["release"][1]
    for what, path in _artefacts(repo).items():
        assert path.with_name(path.name + ".minisig").exists(), what
        assert _verifiers(path, pub) == {
            "role script (box python)": 0,
            "appliance release verify": 0,
            "in process": 0,
        }, what
    sums = (repo / "SHA256SUMS").read_text()
    assert f"releases/appliance-{VERSION}.tar.gz" in sums and "models/models-" in sums


@pytest.mark.parametrize("what", ["release", "runtime", "model store", "release metadata"])
def test_tampered_artefact_with_recomputed_hash_is_refused(
    repo: Path, keys: dict[str, tuple[Path, Path]], what: str, tmp_path: Path
) -> None:
    original = _artefacts(repo)[what]
    path = tmp_path / original.name
    shutil.copy2(original, path)
    shutil.copy2(original.with_name(original.name + ".minisig"), tmp_path)
    _tamper(path)
    # The recomputed hash file agrees with the changed bytes: only the signature catches it.
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == release.sha256_file(path)
    assert set(_verifiers(path, keys["release"][1]).values()) == {1}
    with pytest.raises(release.SignatureError, match="does not match its content"):
        release.verify_file(path, release.PublicKey.load(keys["release"][1]))


def test_signature_by_another_key_is_refused(
    repo: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    original = _artefacts(repo)["release"]
    path = tmp_path / original.name
    shutil.copy2(original, path)
    other = release.load_secret_key(keys["other"][0])
    release.sign_file(path, other)
    pinned = release.PublicKey.load(keys["release"][1])
    with pytest.raises(release.SignatureError, match="not the pinned release key"):
        release.verify_file(path, pinned)
    assert set(_verifiers(path, keys["release"][1]).values()) == {1}
    # The other key's signature with the pinned key's id forged in: the Ed25519 check refuses it.
    sig = path.with_name(path.name + ".minisig")
    lines = sig.read_text().splitlines()
    raw = base64.b64decode(lines[1])
    lines[1] = base64.b64encode(raw[:2] + pinned.key_id + raw[10:]).decode()
    sig.write_text("\n".join(lines) + "\n")
    with pytest.raises(release.SignatureError, match="does not match its content"):
        release.verify_file(path, pinned)


def test_signature_moved_to_another_artefact_or_comment_changed_is_refused(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    secret = release.load_secret_key(keys["release"][0])
    pinned = release.PublicKey.load(keys["release"][1])
    old = tmp_path / "appliance-0.1.0.tar.gz"
    old.write_bytes(b"old, vulnerable release")
    release.sign_file(old, secret)
    # An old, validly signed release renamed as a new version (a downgrade) is refused.
    new = tmp_path / "appliance-0.2.0.tar.gz"
    shutil.copy2(old, new)
    shutil.copy2(old.with_name(old.name + ".minisig"), new.with_name(new.name + ".minisig"))
    with pytest.raises(release.SignatureError, match="for 'appliance-0.1.0.tar.gz'"):
        release.verify_file(new, pinned)
    # Editing the trusted comment to name the new file breaks the global signature.
    sig = new.with_name(new.name + ".minisig")
    sig.write_text(sig.read_text().replace("file:appliance-0.1.0", "file:appliance-0.2.0"))
    with pytest.raises(release.SignatureError, match="trusted comment was altered"):
        release.verify_file(new, pinned)
    sig.unlink()
    with pytest.raises(release.SignatureError, match="no readable signature"):
        release.verify_file(new, pinned)


@pytest.mark.skipif(shutil.which("minisign") is None, reason="minisign is not installed")
def test_minisign_verifies_our_signatures(
    repo: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """The format is minisign's: the reference tool accepts the signatures and the key."""
    path = _artefacts(repo)["release"]
    ok = _run(["minisign", "-Vm", str(path), "-p", str(keys["release"][1])])
    assert ok.returncode == 0, ok.stderr
    assert f"file:{path.name}" in ok.stdout
    copy = tmp_path / path.name
    shutil.copy2(path, copy)
    shutil.copy2(path.with_name(path.name + ".minisig"), tmp_path)
    _tamper(copy)
    assert _run(["minisign", "-Vm", str(copy), "-p", str(keys["release"][1])]).returncode != 0


def test_build_needs_a_private_key(tmp_path: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    out = _build("release", "--version", VERSION, "--repo", str(tmp_path / "r"), key=None)
    assert out.returncode != 0 and "no release signing key" in out.stderr
    loose = tmp_path / "loose.key"
    shutil.copy2(keys["release"][0], loose)
    loose.chmod(0o644)
    out = _build("release", "--version", VERSION, "--repo", str(tmp_path / "r"), key=loose)
    assert out.returncode != 0 and "must not be readable by others" in out.stderr
    assert not (tmp_path / "r" / "releases").exists()
    assert oct(keys["release"][0].stat().st_mode & 0o777) == "0o600"


def test_role_verifiers_are_this_module_and_the_pins_agree() -> None:
    source = (REPO / "src" / "appliance" / "release.py").read_bytes()
    for script in ROLE_SCRIPTS:
        assert script.read_bytes() == source, f"{script} differs from src/appliance/release.py"
    image_key = release.PublicKey.load(IMAGE_PUB)
    line = IMAGE_PUB.read_text().splitlines()[1]
    for defaults in ("appliance", "models"):
        text = (REPO / "ansible" / "roles" / defaults / "defaults" / "main.yml").read_text()
        assert line in text, f"role {defaults} does not pin the image's release key"
    assert release.PublicKey.parse(line) == image_key


# ---- an installed release directory (switch and rollback) -------------------------------------


def _install(repo: Path, prefix: Path) -> Path:
    """What the appliance role's install.yml does on a box, minus Ansible."""
    info = json.loads((repo / "releases" / f"appliance-{VERSION}.json").read_text())
    rdir = prefix / "releases" / VERSION
    rdir.mkdir(parents=True)
    with tarfile.open(repo / "releases" / f"appliance-{VERSION}.tar.gz") as tar:
        for member in tar.getmembers():
            member.name = member.name.split("/", 1)[1] if "/" in member.name else "."
        tar.extractall(rdir, filter="data")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(rdir / ".venv")], check=True)
    runtime = prefix / "runtimes" / info["runtime_id"]
    runtime.mkdir(parents=True)
    site = Path(sys.executable).parents[1] / "lib" / f"python{info['python']}" / "site-packages"
    (runtime / "site-packages").symlink_to(site)
    pth = rdir / ".venv" / "lib" / f"python{info['python']}" / "site-packages"
    (pth / "appliance-runtime.pth").write_text(
        f"import site; site.addsitedir({json.dumps(str(runtime / 'site-packages'))})\n"
    )
    (rdir / "models" / "store").symlink_to(f"../../../models/{info['models_id']}")
    subprocess.run(
        [str(rdir / ".venv" / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--quiet", str(rdir / info["wheel"])],
        check=True, timeout=120,
    )  # fmt: skip
    for name in (f"appliance-{VERSION}.files", f"appliance-{VERSION}.files.minisig"):
        shutil.copy2(repo / "releases" / name, rdir / name)
    (rdir / ".installed").write_text(json.dumps(info))
    return rdir


@pytest.fixture(scope="module")
def installed(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install(repo, tmp_path_factory.mktemp("box") / "opt" / "appliance")


def _copy_of(installed: Path, tmp_path: Path) -> Path:
    """A private copy of the installed release (links kept), under ``tmp_path``'s prefix."""
    rdir = tmp_path / "opt" / "appliance" / "releases" / VERSION
    shutil.copytree(installed, rdir, symlinks=True)
    # pip writes the release's own path into its console script; re-point it as an install
    # at this path would have written it.
    script = rdir / ".venv" / "bin" / "appliance"
    script.write_text(script.read_text().replace(str(installed), str(rdir), 1))
    return rdir


def _tree(rdir: Path, pub: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    python = BOX_PYTHON
    key = pub.read_text().splitlines()[1]
    return _run([python, str(ROLE_SCRIPTS[0]), "verify-tree", "--no-models", str(rdir),
                 "--pubkey-text", key, *extra])  # fmt: skip


def test_installed_release_verifies_and_runs(
    installed: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    out = _tree(installed, keys["release"][1])
    assert out.returncode == 0, out.stderr
    version = _run([str(installed / ".venv" / "bin" / "appliance"), "--version"])
    assert version.stdout.strip() == f"appliance {VERSION}"
    pub = str(keys["release"][1])
    cmd = ["release", "verify-tree", "--no-models", "--pubkey", pub, str(installed)]
    assert appliance_main(cmd) == 0
    # Another key's pin refuses even the intact release.
    assert _tree(installed, keys["other"][1]).returncode == 1


def _changes(rdir: Path) -> dict[str, tuple[Path, bytes | str | None]]:
    """What an attacker with the disk changes: bytes to write, a link target (str), or delete."""
    site = next((rdir / ".venv" / "lib").glob("python*/site-packages"))
    script = rdir / ".venv" / "bin" / "appliance"
    cfg = rdir / ".venv" / "pyvenv.cfg"
    return {
        "changed console script": (script, script.read_bytes() + b"import os; os.system('id')\n"),
        "planted bin script": (rdir / ".venv" / "bin" / "appliance-helper", b"#!/bin/sh\nid\n"),
        "system site-packages": (
            cfg,
            cfg.read_bytes().replace(b"site-packages = false", b"site-packages = true"),
        ),
        "interpreter re-pointed": (rdir / ".venv" / "bin" / "python3", "/tmp/evil/bin/python3"),
        "changed module": (site / "appliance" / "cli.py", b"import os; os.system('id')\n"),
        "changed unit file": (rdir / "systemd" / "appliance-agent.service", b"[Service]\n"),
        "changed model manifest": (rdir / "models" / "manifest.toml", b"schema = 1\n"),
        "planted sitecustomize": (site / "sitecustomize.py", b"print('owned')\n"),
        "planted .pth": (site / "zzz.pth", b"import os\n"),
        "planted module": (site / "appliance" / "backdoor.py", b"x = 1\n"),
        "runtime .pth re-pointed": (
            site / "appliance-runtime.pth",
            b'import site; site.addsitedir("/tmp/evil/site-packages")\n',
        ),
        "deleted file": (rdir / "release.json", None),
    }


@pytest.mark.parametrize(
    "change",
    [
        "changed console script",
        "planted bin script",
        "system site-packages",
        "interpreter re-pointed",
        "changed module",
        "changed unit file",
        "changed model manifest",
        "planted sitecustomize",
        "planted .pth",
        "planted module",
        "runtime .pth re-pointed",
        "deleted file",
    ],
)
def test_rollback_target_changed_after_install_is_refused(
    installed: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path, change: str
) -> None:
    rdir = _copy_of(installed, tmp_path)
    assert _tree(rdir, keys["release"][1]).returncode == 0
    path, data = _changes(rdir)[change]
    if data is None:
        path.unlink()
    elif isinstance(data, str):
        path.unlink()
        path.symlink_to(data)
    else:
        path.write_bytes(data)
    out = _tree(rdir, keys["release"][1])
    assert out.returncode == 1, out.stdout
    rel = path.relative_to(rdir).as_posix()
    assert f"{rel}:" in out.stderr, out.stderr


def test_rollback_target_relinked_or_with_a_swapped_list_is_refused(
    installed: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    pinned = release.PublicKey.load(keys["release"][1])
    rdir = _copy_of(installed, tmp_path)
    store = rdir / "models" / "store"
    store.unlink()
    store.symlink_to("../../../models/ffffffffffffffff")
    problems = release.verify_tree(rdir, pinned, check_models=False)
    assert any(p.startswith("models/store: points at") for p in problems), problems
    # The directory renamed to another version: its list's signature names the old version.
    other = rdir.with_name("0.9.2")
    rdir.rename(other)
    with pytest.raises(release.SignatureError, match="no readable signature"):
        release.verify_tree(other, pinned)
    for name in (f"appliance-{VERSION}.files", f"appliance-{VERSION}.files.minisig"):
        (other / name).rename(other / name.replace(VERSION, "0.9.2"))
    with pytest.raises(release.SignatureError, match="not 'appliance-0.9.2.files'"):
        release.verify_tree(other, pinned)


def test_planted_bytecode_is_purged_before_a_switch(
    installed: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    site = next((installed / ".venv" / "lib").glob("python*/site-packages"))
    cache = site / "appliance" / "__pycache__"
    cache.mkdir(exist_ok=True)
    planted = cache / "cli.cpython-311.pyc"
    planted.write_bytes(b"not what cli.py compiles to")
    assert _tree(installed, keys["release"][1], "--purge-caches").returncode == 0
    assert not cache.exists()


def test_model_store_is_checked_against_the_release_manifest(
    installed: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """A rollback also re-hashes the model store the release links to."""
    pinned = release.PublicKey.load(keys["release"][1])
    rdir = _copy_of(installed, tmp_path)
    small = _small_store(tmp_path / "small")
    manifest = small / "manifest.toml"
    assert release.check_model_store(manifest, small) == []
    (small / "vad" / "tiny.onnx").write_bytes(b"onnx" * 4095 + b"EVIL")
    assert release.check_model_store(manifest, small) == [
        "models/store/vad/tiny.onnx: changed (SHA-256 or size)"
    ]
    # The release's own manifest names the real default models; a store without them fails.
    info = json.loads((rdir / "release.json").read_text())
    store = tmp_path / "opt" / "appliance" / "models" / info["models_id"]
    shutil.copytree(small, store)
    problems = release.verify_tree(rdir, pinned)
    assert "models/store/manifest.toml: differs from the release's manifest" in problems
    assert any(p.endswith(": missing") for p in problems)
