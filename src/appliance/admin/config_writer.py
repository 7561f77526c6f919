"""The admin page's settings writer: one drop-in of its own, validated, atomic, with history.

The admin page never edits the base settings file (the Ansible ``config`` role owns it) nor
first boot's ``10-firstboot.toml``. It writes its own drop-in, :data:`DROPIN_NAME`
(``<config>.d/60-admin.toml``), which sorts after first boot's and so wins key by key
(:func:`appliance.config.settings.load_settings` merges drop-ins in file-name order).

Every change is validated together with the base file and every other drop-in by the agent's
own loader *before* anything is written; a refused change writes nothing. The file is replaced
atomically (temporary file in the same directory, ``fsync``, :func:`os.replace`, ``fsync`` of
the directory), mode ``0640``. The text it replaced is kept in a history directory
(``<config>.d/.admin-history/``, ignored by the loader because its name starts with ``.``),
so :func:`rollback` can put the previous version back. Writers are serialised with an
``flock`` on ``<config>.d/.60-admin.toml.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath

import tomlkit
import tomlkit.exceptions

from appliance.config.settings import ApplianceSettings, dropin_dir, load_settings
from appliance.errors import ConfigError

#: The admin page's own drop-in; sorts after first boot's ``10-firstboot.toml``.
DROPIN_NAME = "60-admin.toml"
#: History of replaced drop-in texts, inside the drop-in directory (skipped by the loader).
HISTORY_DIR = ".admin-history"
#: How many previous versions are kept per drop-in.
HISTORY_KEEP = 50
#: Mode of the drop-in: the agent's group reads it, nobody else.
FILE_MODE = 0o640
#: Sections whose changes the running agent cannot apply on reload
#: (``ApplianceServer.reload_settings`` keeps the old ``[sip]`` and ``[models]``).
RESTART_SECTIONS = ("sip", "models")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DROPIN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,63}\.toml$")
_HISTORY_FILE = re.compile(r"^(?P<name>.+)\.(?P<seq>[0-9]{6})\.prev$")


@dataclass(frozen=True)
class HistoryEntry:
    """One replaced version of a drop-in.

    Attributes:
        seq: Increasing sequence number (1, 2, ...); the highest is the most recent.
        saved_at: When it was replaced (UTC, from the history file's mtime).
        text: The drop-in's text before that change; ``""`` when the drop-in did not exist.
    """

    seq: int
    saved_at: datetime
    text: str


def restart_needed(changed: list[str]) -> bool:
    """Whether any of the changed ``section.key`` names needs a restart of the agent.

    ``[sip]`` (the transport's bind address, trunk peers) and ``[models]`` are read once at
    start; a reload keeps the old values (see ``ApplianceServer.reload_settings``).

    Args:
        changed: ``section.key`` names, e.g. ``["sip.bind", "clinic.name"]``.
    """
    return any(name.partition(".")[0] in RESTART_SECTIONS for name in changed)


def dropin_path(settings_path: Path, dropin_name: str = DROPIN_NAME) -> Path:
    """The admin drop-in of a settings file: ``<settings>.d/<dropin_name>``.

    Raises:
        ConfigError: ``config_invalid``: ``dropin_name`` is not a plain ``*.toml`` file name.
    """
    if not _DROPIN.fullmatch(dropin_name):
        raise ConfigError("config_invalid", f"{dropin_name!r}: not a drop-in file name")
    return dropin_dir(Path(settings_path)) / dropin_name


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError("config_unreadable", f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config_corrupt", f"{path}: not valid TOML ({exc})") from exc


def _toml_value(section: str, key: str, value: object) -> object:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [str(v) if isinstance(v, PurePath) else v for v in value]
        if not all(isinstance(v, (str, int, float, bool)) for v in items):
            raise ConfigError("config_invalid", f"{section}.{key}: list items must be scalars")
        return items
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(
        "config_invalid", f"{section}.{key}: a {type(value).__name__} cannot be a setting"
    )


def merged_text(current: str, updates: Mapping[str, Mapping[str, object]], path: Path) -> str:
    """Merge ``updates`` into drop-in TOML text; keep every other key and comment.

    Args:
        current: The drop-in's text (``""`` for none).
        updates: ``section -> key -> value``; a value of ``None`` removes the key (the next
            file down, e.g. first boot's drop-in or the base file, then applies).
        path: The drop-in's path, for error messages.

    Returns:
        The new TOML text.

    Raises:
        ConfigError: ``config_corrupt`` (``current`` is not TOML) or ``config_invalid``
            (a malformed section/key name or a value with no TOML form).
    """
    try:
        doc = tomlkit.parse(current)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError("config_corrupt", f"{path}: not valid TOML ({exc})") from exc
    for section, values in updates.items():
        if not isinstance(section, str) or not _NAME.fullmatch(section):
            raise ConfigError("config_invalid", f"{path}: {section!r}: not a settings section")
        if not isinstance(values, Mapping):
            raise ConfigError("config_invalid", f"{path}: {section}: expected key = value pairs")
        table = doc.get(section)
        if table is None:
            table = tomlkit.table()
            doc.add(section, table)
        elif not isinstance(table, dict):
            raise ConfigError("config_invalid", f"{path}: {section} is not a [section]")
        for key, value in values.items():
            if not isinstance(key, str) or not _NAME.fullmatch(key):
                raise ConfigError("config_invalid", f"{path}: {section}.{key!r}: not a setting")
            if value is None:
                table.pop(key, None)
                continue
            try:
                table[key] = _toml_value(section, key, value)
            except (TypeError, ValueError) as exc:  # tomlkit's ConvertError is both
                raise ConfigError("config_invalid", f"{path}: {section}.{key}: {exc}") from exc
        if not table:
            doc.pop(section, None)
    return tomlkit.dumps(doc)


def _effective(settings: ApplianceSettings | None, name: str) -> object:
    if settings is None:
        return None
    section, _, key = name.partition(".")
    return getattr(getattr(settings, section, None), key, None)


@contextlib.contextmanager
def _locked(directory: Path, dropin_name: str) -> Iterator[None]:
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(directory / f".{dropin_name}.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` atomically: temporary file, ``fsync``, rename, ``fsync`` of the directory.

    The file gets :data:`FILE_MODE` (0640). Used for every file the admin page writes (settings
    drop-ins, workflow files, the knowledge base).

    Raises:
        OSError: It cannot be written; the old file is untouched then.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _history_dir(settings_path: Path) -> Path:
    return dropin_dir(Path(settings_path)) / HISTORY_DIR


def _history_files(settings_path: Path, dropin_name: str) -> list[tuple[int, Path]]:
    directory = _history_dir(settings_path)
    found: list[tuple[int, Path]] = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError("config_unreadable", f"{directory}: {exc.strerror or exc}") from exc
    for entry in entries:
        match = _HISTORY_FILE.fullmatch(entry.name)
        if match and match["name"] == dropin_name and entry.is_file():
            found.append((int(match["seq"]), entry))
    return sorted(found)


def _push_history(settings_path: Path, dropin_name: str, text: str) -> None:
    directory = _history_dir(settings_path)
    directory.mkdir(mode=0o750, exist_ok=True)
    files = _history_files(settings_path, dropin_name)
    seq = files[-1][0] + 1 if files else 1
    write_atomic(directory / f"{dropin_name}.{seq:06d}.prev", text)
    for _, old in files[: max(0, len(files) + 1 - HISTORY_KEEP)]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


def history(settings_path: Path, dropin_name: str = DROPIN_NAME) -> list[HistoryEntry]:
    """The kept previous versions of the admin drop-in, most recent first.

    Raises:
        ConfigError: ``config_unreadable``: the history directory cannot be read.
    """
    entries = []
    for seq, path in reversed(_history_files(settings_path, dropin_name)):
        saved = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        entries.append(HistoryEntry(seq=seq, saved_at=saved, text=_read_text(path)))
    return entries


def previous_text(settings_path: Path, dropin_name: str = DROPIN_NAME) -> str | None:
    """The drop-in's text before the last change (``""``: it did not exist); ``None``: no history.

    Raises:
        ConfigError: ``config_unreadable``: the history cannot be read.
    """
    files = _history_files(settings_path, dropin_name)
    return _read_text(files[-1][1]) if files else None


def _diff(
    before: ApplianceSettings | None, after: ApplianceSettings, names: list[str]
) -> list[str]:
    return [n for n in names if before is None or _effective(before, n) != _effective(after, n)]


def _names(text: str) -> list[str]:
    try:
        data = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError:
        return []
    return [
        f"{section}.{key}"
        for section, values in data.items()
        if isinstance(values, dict)
        for key in values
    ]


def _load_or_none(settings_path: Path) -> ApplianceSettings | None:
    try:
        return load_settings(settings_path)
    except ConfigError:
        return None


def apply_change(
    settings_path: Path,
    updates: dict[str, dict[str, object]],
    *,
    dropin_name: str = DROPIN_NAME,
) -> tuple[ApplianceSettings, list[str]]:
    """Merge ``updates`` into the admin drop-in, validate everything, then write atomically.

    Args:
        settings_path: The base settings file (``/etc/appliance/appliance.toml``).
        updates: ``section -> key -> value``, e.g. ``{"transfer": {"target": "sip:desk@x"}}``.
            Values are TOML scalars or lists of them (paths are written as strings); ``None``
            removes the key from the drop-in so the lower layers apply again.
        dropin_name: The drop-in's file name in ``<settings>.d/``.

    Returns:
        ``(settings, changed)``: the new effective settings (base file plus every drop-in) and
        the ``section.key`` names of ``updates`` whose effective value changed, in the order
        given. Nothing is written when no effective value and no text changed.

    Raises:
        ConfigError: ``config_invalid`` naming the file and key (e.g.
            ``.../60-admin.toml: sip.allowed_peers.0: ...``), ``config_corrupt`` or
            ``config_unreadable``. Nothing has been written then.
    """
    settings_path = Path(settings_path)
    path = dropin_path(settings_path, dropin_name)
    with _locked(path.parent, dropin_name):
        current = _read_text(path)
        new_text = merged_text(current, updates, path)
        after = load_settings(settings_path, pending={path: new_text})
        before = _load_or_none(settings_path)
        names = [f"{s}.{k}" for s, values in updates.items() for k in values]
        changed = _diff(before, after, names)
        if new_text == current:
            return after, changed
        _push_history(settings_path, dropin_name, current)
        write_atomic(path, new_text)
        return after, changed


def rollback(
    settings_path: Path, *, dropin_name: str = DROPIN_NAME
) -> tuple[ApplianceSettings, list[str]]:
    """Put back the drop-in's text from before its last change, validated like a change.

    The restored version is taken off the history, so calling it again goes one step further
    back. A version whose text was empty (the drop-in did not exist) removes the drop-in.

    Returns:
        ``(settings, changed)`` as :func:`apply_change`; ``changed`` lists the keys of either
        version whose effective value differs.

    Raises:
        ConfigError: ``config_invalid`` (no history to roll back to, or the old text no longer
            validates with today's other files; nothing is written then), ``config_corrupt``,
            ``config_unreadable``.
    """
    settings_path = Path(settings_path)
    path = dropin_path(settings_path, dropin_name)
    with _locked(path.parent, dropin_name):
        files = _history_files(settings_path, dropin_name)
        if not files:
            raise ConfigError("config_invalid", f"{path}: no earlier version to roll back to")
        last = files[-1][1]
        old_text = _read_text(last)
        current = _read_text(path)
        after = load_settings(settings_path, pending={path: old_text})
        before = _load_or_none(settings_path)
        names = list(dict.fromkeys([*_names(current), *_names(old_text)]))
        changed = _diff(before, after, names)
        if old_text:
            write_atomic(path, old_text)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _fsync_dir(path.parent)
        last.unlink()
        return after, changed
