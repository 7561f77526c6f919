"""The model manifest (``models/manifest.toml``) and its lock file: schema, loading, pinning.

The manifest lists every model: its name, role, runtime, licence, profile, where its bytes come
from (an installed PyPI package or an upstream URL) and the SHA-256 and size of each file. The
schema is a set of pydantic models (:mod:`appliance.models.schema`: :class:`Model`,
:class:`Source`, :class:`FileEntry`); :func:`load_manifest` validates the file against it and
turns the first problem into a :class:`ManifestError` naming the file, the model and the field:
``models/manifest.toml: model[3] (kokoro): files[0]: sha256 must be 64 lowercase hex digits``.

Files whose digest is not known yet (``sha256 = "unpinned"``) get one in the lock file next to
the manifest (``manifest.lock.toml``, written by :func:`record_pin` with tomlkit); loading
applies the lock. What is done with the bytes (assemble, fetch, verify) is
:mod:`appliance.models.store`.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomlkit
from pydantic import BaseModel, ValidationError

from appliance.models.schema import (
    ROLES,
    SCHEMA_VERSION,
    UNPINNED,
    FileEntry,
    LockEntry,
    LockFile,
    ManifestFile,
    Model,
    Source,
    is_immutable_url,
)


class ManifestError(ValueError):
    """The manifest or its lock file is unreadable, corrupt or inconsistent."""


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


# --------------------------------------------------------------------------------------------
# Loading
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
            missing or invalid. The message names the file, the model (``model[i] (name)``)
            and the field.
    """
    manifest_path = Path(path)
    doc = _validate(ManifestFile, _read_toml(manifest_path), manifest_path)
    models = list(doc.models)
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


_T = TypeVar("_T", bound=BaseModel)


def _validate(schema: type[_T], data: dict[str, Any], path: Path) -> _T:
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ManifestError(f"{_explain(errors[0], data, path)}{more}") from e


def _explain(error: Any, data: Any, path: Path) -> str:
    """``<file>: model[i] (name): files[j]: <problem>`` for one pydantic error.

    Tables in arrays are named by index (and by ``name`` where they have one); a problem with a
    field says which field, either in pydantic's ``missing``/``extra_forbidden`` wording turned
    into ours or in the field validator's own message.
    """
    kind = error["type"]
    loc = list(error["loc"])
    leaf = loc.pop() if kind in ("missing", "extra_forbidden") and loc else None
    where, node, i = [str(path)], data, 0
    while i < len(loc):
        key = loc[i]
        i += 1
        node = node.get(key) if isinstance(node, dict) else None
        if i < len(loc) and isinstance(loc[i], int):
            index = loc[i]
            i += 1
            node = node[index] if isinstance(node, list) and 0 <= index < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            where.append(f"{key}[{index}]" + (f" ({name})" if isinstance(name, str) else ""))
        elif key == "source" or kind != "value_error" or i < len(loc):
            where.append(str(key))  # a nested table, or a field pydantic's message does not name
    if kind == "missing":
        problem = f"missing field {leaf!r}"
    elif kind == "extra_forbidden":
        problem = f"unknown field {leaf!r}"
    elif kind == "value_error":
        problem = str(error["ctx"]["error"])
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        problem = f"expected a table, got {type(error['input']).__name__}"
    else:
        problem = error["msg"]
    return ": ".join([*where, problem])


def _apply_lock(models: list[Model], lock_path: Path) -> list[Model]:
    lock = _validate(LockFile, _read_toml(lock_path), lock_path)
    by_name = {m.name: m for m in models}
    for i, item in enumerate(lock.file):
        where = f"{lock_path}: file[{i}]"
        model = by_name.get(item.model)
        if model is None:
            raise ManifestError(
                f"{where}: model {item.model!r} is not in the manifest; delete the entry"
            )
        entry = next((e for e in model.files if e.path == item.path), None)
        if entry is None:
            raise ManifestError(
                f"{where}: model {item.model!r} has no file {item.path!r}; delete the entry"
            )
        if item.url != model.file_url(entry):
            raise ManifestError(
                f"{where}: {item.model} was pinned from {item.url}, the manifest now says "
                f"{model.file_url(entry)}; delete the entry and fetch again with --pin"
            )
        if entry.pinned and (entry.sha256, entry.size) != (item.sha256, item.size):
            raise ManifestError(
                f"{where}: {item.model} {item.path} conflicts with the manifest's digest"
            )
        locked = entry.model_copy(update={"sha256": item.sha256, "size": item.size, "locked": True})
        files = tuple(locked if e is entry else e for e in model.files)
        by_name[item.model] = model.model_copy(update={"files": files})
    return [by_name[m.name] for m in models]


# --------------------------------------------------------------------------------------------
# Pinning
# --------------------------------------------------------------------------------------------

_LOCK_HEADER = (
    "Digests recorded by `python -m appliance.models fetch --pin`",
    "(./build.sh fetch-production --pin).",
    "Review them against the upstream publisher, then commit this file: later fetches and",
    "verifies check the files against these digests. Do not edit by hand.",
)


def dump_lock(entries: Sequence[LockEntry]) -> str:
    """Serialise lock entries as the lock file's TOML (tomlkit), sorted by (model, path)."""
    doc = tomlkit.document()
    for line in _LOCK_HEADER:
        doc.add(tomlkit.comment(line))
    doc.add(tomlkit.nl())
    doc.add("schema", SCHEMA_VERSION)
    files = tomlkit.aot()
    for e in sorted(entries, key=lambda e: (e.model, e.path)):
        files.append(tomlkit.item(e.model_dump(include={"model", "path", "url", "sha256", "size"})))
    if files:
        doc.add("file", files)
    return tomlkit.dumps(doc)


def record_pin(lock_path: Path, model: str, path: str, url: str, sha256: str, size: int) -> None:
    """Add or replace the lock entry of one file, atomically (temporary file, then rename).

    Args:
        lock_path: The lock file (created if missing).
        model: The model's name.
        path: The file's ``path`` in the manifest (``"."`` for a single-file model).
        url: Where the bytes were fetched from.
        sha256: Their lowercase hex SHA-256.
        size: Their size in bytes.

    Raises:
        ManifestError: The existing lock file is invalid, an argument is (bad digest or size),
            or ``url`` does not name a fixed revision (a digest seen once at a URL that can be
            re-pointed proves nothing; see :func:`appliance.models.schema.is_immutable_url`).
        OSError: The lock file cannot be written.
    """
    if not is_immutable_url(url):
        raise ManifestError(
            f"{lock_path}: {model}: will not pin a digest from {url}, which can change"
        )
    entries: list[LockEntry] = []
    if lock_path.exists():
        entries = list(_validate(LockFile, _read_toml(lock_path), lock_path).file)
    new = {"model": model, "path": path, "url": url, "sha256": sha256, "size": size}
    try:
        entry = LockEntry.model_validate(new)
    except ValidationError as e:
        raise ManifestError(_explain(e.errors(include_url=False)[0], new, lock_path)) from e
    entries = [e for e in entries if (e.model, e.path) != (model, path)] + [entry]
    fd, tmp = tempfile.mkstemp(prefix=f".{lock_path.name}.", suffix=".tmp", dir=lock_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(dump_lock(entries))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, lock_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "ROLES",
    "SCHEMA_VERSION",
    "UNPINNED",
    "FileEntry",
    "LockEntry",
    "Manifest",
    "ManifestError",
    "Model",
    "Source",
    "dump_lock",
    "load_manifest",
    "lock_path_for",
    "record_pin",
]
