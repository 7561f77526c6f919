"""Tests for the model manifest and store (appliance.models.manifest, .store and their CLI)."""

from __future__ import annotations

import hashlib
import textwrap
import uuid
from pathlib import Path

import pytest

from appliance.models.__main__ import main as cli_main
from appliance.models.manifest import ManifestError, load_manifest, record_pin
from appliance.models.schema import is_immutable_url
from appliance.models.store import (
    STORE_MANIFEST,
    ChecksumError,
    FetchError,
    ModelStoreError,
    MutableUrlError,
    SourceMissingError,
    UnpinnedError,
    assemble,
    fetch,
    model_path,
    verify,
)

REPO = Path(__file__).resolve().parents[2]
REAL_MANIFEST = REPO / "models" / "manifest.toml"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def fake_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """An importable package with a data directory, a blob and two parts, unique per test."""
    name = f"fakemodels_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "site" / name
    (root / "data").mkdir(parents=True)
    (root / "__init__.py").write_text(
        "from pathlib import Path\n\ndef model_dir():\n    return Path(__file__).parent / 'data'\n"
    )
    (root / "data" / "config.json").write_bytes(b'{"a": 1}\n')
    (root / "data" / "model.bin").write_bytes(b"weights" * 1000)
    (root / "blob.onnx").write_bytes(b"onnx-bytes" * 500)
    (root / "part1.bin").write_bytes(b"first-half-")
    (root / "part2.bin").write_bytes(b"second-half")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return name, root


def _fake_manifest(tmp_path: Path, name: str, root: Path) -> Path:
    def entry(rel: str) -> str:
        data = (root / rel).read_bytes()
        return f'sha256 = "{_sha(data)}", size = {len(data)}'

    joined = (root / "part1.bin").read_bytes() + (root / "part2.bin").read_bytes()
    return _write(
        tmp_path / "models" / "manifest.toml",
        f"""\
        schema = 1

        [[model]]
        name = "dir-model"
        role = "stt"
        runtime = "faster-whisper"
        licence = "MIT"
        profile = "default"
        dest = "stt/dir-model"
        source = {{ pypi = "fake==1", locate = "{name}:model_dir" }}
        files = [
          {{ path = "config.json", {entry("data/config.json")} }},
          {{ path = "model.bin", {entry("data/model.bin")} }},
        ]

        [[model]]
        name = "blob"
        role = "vad"
        runtime = "onnxruntime"
        licence = "MIT"
        profile = "default"
        dest = "vad/blob.onnx"
        source = {{ pypi = "fake==1", resource = "{name}/blob.onnx" }}
        files = [{{ path = ".", {entry("blob.onnx")} }}]

        [[model]]
        name = "joined"
        role = "tts"
        runtime = "kokoro-onnx"
        licence = "Apache-2.0"
        profile = "default"
        dest = "tts/joined.onnx"
        source = {{ parts = ["{name}:part1.bin", "{name}:part2.bin"] }}
        files = [{{ path = ".", sha256 = "{_sha(joined)}", size = {len(joined)} }}]
        """,
    )


def _url_manifest(tmp_path: Path, url: str, sha256: str, size: int | None) -> Path:
    size_part = "" if size is None else f", size = {size}"
    return _write(
        tmp_path / "prod" / "manifest.toml",
        f"""\
        schema = 1

        [[model]]
        name = "big-llm"
        role = "llm"
        runtime = "llama.cpp"
        licence = "Apache-2.0"
        profile = "production"
        dest = "llm/big.gguf"
        source = {{ url = "{url}" }}
        files = [{{ path = ".", sha256 = "{sha256}"{size_part} }}]
        """,
    )


# ---- loading ------------------------------------------------------------------------------


def test_corrupt_toml_names_the_file(tmp_path: Path) -> None:
    """Corrupt TOML raises ManifestError (a ValueError) that names the file."""
    path = _write(tmp_path / "manifest.toml", "schema = 1\n[[model]\nname = 'x'\n")
    with pytest.raises(ManifestError, match="invalid TOML") as info:
        load_manifest(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unreadable_manifest_names_the_file(tmp_path: Path) -> None:
    """A missing manifest raises ManifestError that names the file."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ManifestError, match="cannot read") as info:
        load_manifest(path)
    assert str(path) in str(info.value)


def test_missing_field_is_named(tmp_path: Path, fake_pkg: tuple[str, Path]) -> None:
    """A missing field is reported with the file, the model and the field."""
    path = _fake_manifest(tmp_path, *fake_pkg)
    path.write_text(path.read_text().replace('licence = "MIT"\n', "", 1))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert str(path) in message
    assert "model[0] (dir-model)" in message
    assert "missing field 'licence'" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('role = "vad"', 'role = "asr"', "role 'asr' is not one of"),
        ('dest = "vad/blob.onnx"', 'dest = "../escape.onnx"', "must be a relative path"),
        ('name = "blob"', 'name = "joined"', "duplicate model name 'joined'"),
        (
            'profile = "default"\ndest = "vad',
            'profile = "default"\nlicense = "MIT"\ndest = "vad',
            "unknown field 'license'",
        ),
    ],
)
def test_invalid_fields_are_explained(
    tmp_path: Path, fake_pkg: tuple[str, Path], old: str, new: str, expected: str
) -> None:
    """Invalid values, unsafe paths, duplicates and typos are rejected clearly."""
    path = _fake_manifest(tmp_path, *fake_pkg)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ManifestError, match=expected):
        load_manifest(path)


def test_bad_digest_and_unpinned_package_source_are_rejected(
    tmp_path: Path, fake_pkg: tuple[str, Path]
) -> None:
    """Malformed digests and unpinned package files do not load."""
    path = _fake_manifest(tmp_path, *fake_pkg)
    text = path.read_text()
    digest = _sha((fake_pkg[1] / "blob.onnx").read_bytes())
    path.write_text(text.replace(digest, digest[:-1]))
    with pytest.raises(ManifestError, match="64 lowercase hex"):
        load_manifest(path)
    path.write_text(text.replace(f'sha256 = "{digest}"', 'sha256 = "unpinned"'))
    with pytest.raises(ManifestError, match="package-sourced files must have a real sha256"):
        load_manifest(path)


# ---- assemble / verify ----------------------------------------------------------------------


def test_assemble_verify_repair_and_idempotence(tmp_path: Path, fake_pkg: tuple[str, Path]) -> None:
    """Assemble builds the store once; verify finds damage; assemble repairs it."""
    name, root = fake_pkg
    manifest = load_manifest(_fake_manifest(tmp_path, name, root))
    store = tmp_path / "store"

    assert [p.kind for p in verify(manifest, store)] == ["missing"] * 4

    paths = assemble(manifest, store)
    assert len(paths) == 4
    assert verify(manifest, store) == []
    joined = store / "tts" / "joined.onnx"
    assert joined.read_bytes() == b"first-half-second-half"
    assert (store / "stt" / "dir-model" / "model.bin").read_bytes() == b"weights" * 1000
    assert (store / STORE_MANIFEST).read_bytes() == manifest.path.read_bytes()
    assert not list(store.rglob("*.tmp"))

    # Idempotent: nothing is rewritten when every digest matches.
    before = {p: p.stat().st_ino for p in paths}
    assemble(manifest, store)
    assert {p: p.stat().st_ino for p in paths} == before

    # A flipped byte (same size) and a truncated file are both detected...
    blob = store / "vad" / "blob.onnx"
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    (store / "stt" / "dir-model" / "config.json").write_bytes(b"{")
    problems = {p.model: p for p in verify(manifest, store)}
    assert problems["blob"].kind == "sha256"
    assert problems["blob"].path == blob
    assert problems["dir-model"].kind == "size"
    assert "blob" in str(problems["blob"]) and "sha256" in str(problems["blob"])

    # ...and repaired by assemble, which leaves the good files alone.
    assemble(manifest, store)
    assert verify(manifest, store) == []
    assert joined.stat().st_ino == before[joined]


def test_assemble_refuses_a_source_with_the_wrong_digest(
    tmp_path: Path, fake_pkg: tuple[str, Path]
) -> None:
    """An installed source with the wrong bytes is refused; nothing is left."""
    name, root = fake_pkg
    manifest = load_manifest(_fake_manifest(tmp_path, name, root))
    (root / "part2.bin").write_bytes(b"SECOND-HALF")  # same size, different bytes
    store = tmp_path / "store"
    with pytest.raises(ChecksumError, match="joined"):
        assemble(manifest, store)
    assert not (store / "tts" / "joined.onnx").exists()
    assert not list(store.rglob("*.tmp"))


def test_assemble_reports_a_missing_package(tmp_path: Path, fake_pkg: tuple[str, Path]) -> None:
    """A missing source package names the package and its pip pin (only if it is needed)."""
    name, root = fake_pkg
    path = _fake_manifest(tmp_path, name, root)
    store = tmp_path / "store"
    assemble(load_manifest(path), store)
    path.write_text(path.read_text().replace(f"{name}/blob.onnx", "no_such_pkg_xyz/blob.onnx"))
    broken = load_manifest(path)
    assemble(broken, store)  # complete store: nothing to copy, so no source is needed
    with pytest.raises(SourceMissingError, match="no_such_pkg_xyz.*not installed.*fake==1"):
        assemble(broken, tmp_path / "fresh")


def test_model_path_uses_the_store_copy_of_the_manifest(
    tmp_path: Path, fake_pkg: tuple[str, Path]
) -> None:
    """The model_path helper resolves names through the store's own manifest copy."""
    manifest = load_manifest(_fake_manifest(tmp_path, *fake_pkg))
    store = tmp_path / "store"
    assemble(manifest, store)
    assert model_path(store, "dir-model") == store / "stt" / "dir-model"
    assert model_path(store, "blob") == store / "vad" / "blob.onnx"
    (store / "vad" / "blob.onnx").unlink()
    with pytest.raises(ModelStoreError, match="missing"):
        model_path(store, "blob")
    with pytest.raises(ModelStoreError, match="unknown model"):
        model_path(store, "nope")


# ---- fetch ----------------------------------------------------------------------------------


def test_fetch_file_url_verifies_the_digest(tmp_path: Path) -> None:
    """Fetching a file:// URL verifies the digest and refuses changed bytes."""
    payload = b"gguf" + bytes(range(256)) * 4000
    upstream = tmp_path / "upstream" / "big.gguf"
    upstream.parent.mkdir()
    upstream.write_bytes(payload)
    store = tmp_path / "store"

    manifest = load_manifest(
        _url_manifest(tmp_path, upstream.as_uri(), _sha(payload), len(payload))
    )
    assert fetch(manifest, store) == [store / "llm" / "big.gguf"]
    assert (store / "llm" / "big.gguf").read_bytes() == payload
    assert verify(manifest, store, "production") == []

    # Upstream changed under the same URL: the download is refused and the good copy survives
    # (it is skipped because it still matches); in a fresh store nothing is written.
    upstream.write_bytes(payload[:-1] + b"X")
    fetch(manifest, store)
    assert (store / "llm" / "big.gguf").read_bytes() == payload
    fresh = tmp_path / "fresh"
    with pytest.raises(ChecksumError, match="expected"):
        fetch(manifest, fresh)
    assert not (fresh / "llm" / "big.gguf").exists()
    assert not list(fresh.rglob("*.tmp"))


def test_fetch_refuses_unpinned_then_pins_into_the_lock(tmp_path: Path) -> None:
    """Unpinned files need pin=True, which records digests in the lock."""
    payload = b"voices" * 1234
    upstream = tmp_path / "voices.bin"
    upstream.write_bytes(payload)
    path = _url_manifest(tmp_path, upstream.as_uri(), "unpinned", None)
    store = tmp_path / "store"
    manifest = load_manifest(path)

    with pytest.raises(UnpinnedError, match="big-llm.*--pin"):
        fetch(manifest, store)
    assert not store.exists()
    assert [p.kind for p in verify(manifest, store, "production")] == ["missing"]

    fetch(manifest, store, pin=True)
    lock = path.with_name("manifest.lock.toml")
    assert _sha(payload) in lock.read_text()
    assert (store / "manifest.lock.toml").read_text() == lock.read_text()

    # The lock is applied on load: later fetches and verifies check against it.
    pinned = load_manifest(path)
    entry = pinned.model("big-llm").files[0]
    assert (entry.sha256, entry.size, entry.locked) == (_sha(payload), len(payload), True)
    assert verify(pinned, store, "production") == []
    (store / "llm" / "big.gguf").write_bytes(b"tampered")
    assert [p.kind for p in verify(pinned, store, "production")] == ["size"]
    upstream.write_bytes(b"evil" * 10)
    with pytest.raises(ChecksumError):
        fetch(pinned, store)

    # Changing the URL makes the old pin stale: loading says so instead of trusting it.
    path.write_text(path.read_text().replace(upstream.as_uri(), upstream.as_uri() + "2"))
    with pytest.raises(ManifestError, match="was pinned from"):
        load_manifest(path)


def test_fetch_reports_an_unreachable_url(tmp_path: Path) -> None:
    """A URL that cannot be opened raises FetchError naming it."""
    missing = (tmp_path / "nope.bin").as_uri()
    manifest = load_manifest(_url_manifest(tmp_path, missing, _sha(b"x"), 1))
    with pytest.raises(FetchError, match="nope.bin"):
        fetch(manifest, tmp_path / "store")


# ---- revision-pinned URLs ---------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("url", "immutable"),
    [
        (f"https://huggingface.co/nvidia/canary-1b-flash/resolve/{COMMIT}/canary.nemo", True),
        (f"https://huggingface.co/org/repo/resolve/{COMMIT}/sub/dir/model.gguf", True),
        (f"https://raw.githubusercontent.com/org/repo/{COMMIT}/voices.bin", True),
        (f"https://github.com/org/repo/raw/{COMMIT}/voices.bin", True),
        ("file:///srv/mirror/model.gguf", True),
        ("https://huggingface.co/nvidia/canary-1b-flash/resolve/main/canary.nemo", False),
        ("https://huggingface.co/org/repo/resolve/v1.0/model.gguf", False),
        (f"https://huggingface.co/org/repo/resolve/{COMMIT[:12]}/model.gguf", False),
        (f"https://huggingface.co/org/repo/resolve/{COMMIT}/model.gguf?download=true", False),
        ("https://github.com/o/r/releases/download/model-files-v1.0/kokoro-v1.0.onnx", False),
        (f"https://huggingface.co/org/repo/resolve/{COMMIT.upper()}/model.gguf", False),
    ],
)
def test_immutable_urls_name_a_commit(url: str, immutable: bool) -> None:
    assert is_immutable_url(url) is immutable


def test_fetch_refuses_to_pin_from_a_mutable_url(tmp_path: Path) -> None:
    """A digest seen once at resolve/main proves nothing: refused even with --pin, no download."""
    url = "https://huggingface.co/org/repo/resolve/main/big.gguf"
    path = _url_manifest(tmp_path, url, "unpinned", None)
    manifest = load_manifest(path)
    for pin in (False, True):
        with pytest.raises(MutableUrlError, match=r"big-llm: .*resolve/main.*resolve/<40-hex"):
            fetch(manifest, tmp_path / "store", pin=pin)
    assert not (tmp_path / "store").exists()
    assert not path.with_name("manifest.lock.toml").exists()
    with pytest.raises(ManifestError, match="will not pin a digest from .*which can change"):
        record_pin(path.with_name("manifest.lock.toml"), "big-llm", ".", url, _sha(b"x"), 1)
    assert not path.with_name("manifest.lock.toml").exists()


def test_fetch_goes_ahead_for_a_commit_url_or_a_pinned_digest(tmp_path: Path) -> None:
    """The policy lets these through to the download (here: a closed local port, no network)."""
    pinned_commit = f"https://127.0.0.1:9/org/repo/resolve/{COMMIT}/big.gguf"
    manifest = load_manifest(_url_manifest(tmp_path / "a", pinned_commit, "unpinned", None))
    with pytest.raises(FetchError, match="127.0.0.1:9"):
        fetch(manifest, tmp_path / "store-a", pin=True, timeout=5)
    mutable_but_digest = "https://127.0.0.1:9/org/repo/resolve/main/big.gguf"
    manifest = load_manifest(_url_manifest(tmp_path / "b", mutable_but_digest, _sha(b"x"), 1))
    with pytest.raises(FetchError, match="127.0.0.1:9"):
        fetch(manifest, tmp_path / "store-b", timeout=5)


def test_the_real_production_profile_is_refused_until_pinned(tmp_path: Path) -> None:
    """The shipped manifest names branches and tags: fetch says which, before any download."""
    manifest = load_manifest(REAL_MANIFEST)
    lock = REAL_MANIFEST.with_name("manifest.lock.toml")
    had_lock = lock.exists()
    with pytest.raises(MutableUrlError) as info:
        fetch(manifest, tmp_path / "store", "production", pin=True)
    for model in manifest.select("production"):
        if not all(e.pinned for e in model.files):
            assert f"{model.name}: " in str(info.value)
    assert not (tmp_path / "store").exists()
    assert lock.exists() == had_lock


def test_verify_checks_the_lock_digest(tmp_path: Path) -> None:
    """A verify of a pinned production file uses the lock's digest, also through the CLI."""
    payload = b"weights" * 999
    upstream = tmp_path / "up.gguf"
    upstream.write_bytes(payload)
    path = _url_manifest(tmp_path, upstream.as_uri(), "unpinned", None)
    store = tmp_path / "store"
    fetch(load_manifest(path), store, pin=True)
    common = ["--manifest", str(path), "--store", str(store), "--profile", "production"]
    assert cli_main(["verify", *common]) == 0
    target = store / "llm" / "big.gguf"
    target.write_bytes(payload[:-1] + b"X")  # same size, other bytes
    problems = verify(load_manifest(path), store, "production")
    assert [(p.kind, p.path) for p in problems] == [("sha256", target)]
    assert _sha(payload) in problems[0].detail
    assert cli_main(["verify", *common]) == 1


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_exit_codes(
    tmp_path: Path, fake_pkg: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI exits 0 on success and 1 with one error line on failure."""
    path = _fake_manifest(tmp_path, *fake_pkg)
    store = tmp_path / "store"
    common = ["--manifest", str(path), "--store", str(store)]

    assert cli_main(["verify", *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 4 problem(s)")

    assert cli_main(["assemble", *common]) == 0
    assert cli_main(["verify", *common, "--profile", "default"]) == 0
    assert cli_main(["list", *common]) == 0
    out = capsys.readouterr().out
    assert "dir-model" in out and "present" in out

    bad = _write(tmp_path / "bad.toml", "schema = [")
    assert cli_main(["verify", "--manifest", str(bad), "--store", str(store)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]


# ---- the real manifest ----------------------------------------------------------------------


def test_real_manifest_default_profile_assembles_and_verifies(tmp_path: Path) -> None:
    """The real default profile assembles from installed packages and verifies."""
    manifest = load_manifest(REAL_MANIFEST)
    roles = {m.role for m in manifest.select("default")}
    assert roles == {"stt", "llm", "tts", "tts-voices", "vad", "turn", "embedding"}
    assert all(e.pinned for m in manifest.select("default") for e in m.files)
    assert {m.name for m in manifest.select("production")} >= {"canary-1b-flash"}

    store = tmp_path / "store"
    try:
        paths = assemble(manifest, store, "default")
    except SourceMissingError as e:
        pytest.skip(f"a default model's source package is not installed: {e}")
    assert verify(manifest, store, "default") == []
    expected = {
        "stt/whisper-tiny.en/config.json",
        "stt/whisper-tiny.en/model.bin",
        "stt/whisper-tiny.en/tokenizer.json",
        "stt/whisper-tiny.en/vocabulary.txt",
        "stt/whisper-base/config.json",
        "stt/whisper-base/model.bin",
        "stt/whisper-base/tokenizer.json",
        "stt/whisper-base/vocabulary.txt",
        "llm/SmolLM2-135M-Instruct.Q4_1.gguf",
        "tts/kokoro-v1.0.int8.onnx",
        "tts/voices_ja.npz",
        "vad/silero_vad.onnx",
        "turn/smart-turn-v3.2-cpu.onnx",
        *(
            f"embedding/all-MiniLM-L6-v2/{name}"
            for name in (
                "1_Pooling/config.json",
                "config.json",
                "config_sentence_transformers.json",
                "model.safetensors",
                "modules.json",
                "sentence_bert_config.json",
                "special_tokens_map.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.txt",
            )
        ),
    }
    assert {p.relative_to(store).as_posix() for p in paths} == expected
    assert model_path(store, "whisper-tiny.en") == store / "stt" / "whisper-tiny.en"
    assert model_path(store, "whisper-base") == store / "stt" / "whisper-base"
    assert model_path(store, "whisper-base-weights") == store / "stt" / "whisper-base" / "model.bin"
