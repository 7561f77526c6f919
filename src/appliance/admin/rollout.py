"""What applying a change does: the running workflows, diffs, tier and workflow file writes.

Pure of the web layer; :mod:`appliance.admin.governance` decides *whether* a change may be
applied, this module *does* it and can undo it.

* **Tiers.** ``[agent] enabled_tiers`` is written into the admin's own settings drop-in
  (``<settings>.d/60-admin.toml``) through :func:`appliance.admin.config_writer.apply_change`,
  which validates the result with the agent's loader before an atomic write. A rollback puts
  back the key's previous value in the drop-in (or removes the key when the drop-in did not
  set it), so other settings changed since are kept.
* **Workflows.** A proposed workflow file is validated alone (:func:`validate_proposed`) and,
  before it is written, together with every other file of the configured directory
  (``[agent] workflows_dir``) as the agent would load them. The packaged workflows are never
  written; without a configured directory a workflow change cannot be applied.
"""

from __future__ import annotations

import contextlib
import difflib
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance.admin.config_writer import apply_change, dropin_path, write_atomic
from appliance.admin.gates import gate_for_enabling
from appliance.admin.governance import ChangeRequest, GovernanceError, GovernanceStore
from appliance.agent.workflow import (
    TIERS,
    WorkflowError,
    default_dir,
    load_workflow,
    load_workflows,
)
from appliance.config.settings import ApplianceSettings, load_settings
from appliance.control import ControlError
from appliance.errors import ApplianceError, ConfigError

#: Largest proposed workflow file, bytes.
MAX_WORKFLOW_BYTES = 256 * 1024


class RolloutError(ApplianceError):
    """A change cannot be applied or undone; ``code`` says why, nothing was written."""

    stage = "admin"


@dataclass(frozen=True)
class RunningWorkflow:
    """One workflow file of the running set.

    Attributes:
        id: The workflow id (``""`` when the file cannot be read).
        title: Its title.
        risk_tier: ``low`` / ``medium`` / ``high`` (``""`` if unreadable).
        version: Its version (0 if unreadable).
        file: The file's path.
        source: ``"packaged"`` or ``"configured"`` (``[agent] workflows_dir``).
        text: The file's YAML text.
        error: The validation error, ``""`` when it is valid.
        diff: For a configured file, a unified diff from the packaged file of the same id
            (``""`` when equal or there is none).
    """

    id: str
    title: str
    risk_tier: str
    version: int
    file: Path
    source: str
    text: str
    error: str
    diff: str


def _tools() -> Any:
    from appliance.agent.scheduling_tools import default_tools

    return default_tools()


def _header(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff (:mod:`difflib`) of two texts; ``""`` when they are equal."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=old_name,
            tofile=new_name,
        )
    )


def _files(directory: Path) -> list[Path]:
    try:
        return sorted(directory.glob("*.yaml"))
    except OSError:
        return []


def running_workflows(settings: ApplianceSettings) -> list[RunningWorkflow]:
    """The workflow files the agent loads (``workflows_dir``, else the packaged ones).

    Each is validated on its own against the built-in tools; a file that cannot be read or
    is invalid is listed with its error rather than raising.
    """
    configured = settings.agent.workflows_dir
    directory = configured or default_dir()
    source = "configured" if configured else "packaged"
    packaged: dict[str, tuple[Path, str]] = {}
    if configured:
        for path in _files(default_dir()):
            text = path.read_text(encoding="utf-8")
            packaged[str(_header(text).get("id", ""))] = (path, text)
    tools = _tools()
    out = []
    for path in _files(directory):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        head = _header(text)
        error = ""
        try:
            load_workflow(path, tools)
        except WorkflowError as exc:
            error = exc.message
        wf_id = str(head.get("id", ""))
        diff = ""
        if wf_id in packaged:
            old_path, old = packaged[wf_id]
            diff = unified_diff(old, text, f"packaged/{old_path.name}", f"configured/{path.name}")
        version = head.get("version")
        out.append(
            RunningWorkflow(
                id=wf_id,
                title=str(head.get("title", "")),
                risk_tier=str(head.get("risk_tier", "")),
                version=version if isinstance(version, int) else 0,
                file=path,
                source=source,
                text=text,
                error=error,
                diff=diff,
            )
        )
    return out


def validate_proposed(text: str) -> tuple[dict[str, Any], str]:
    """Validate a proposed workflow file's text on its own.

    Returns:
        ``(header, error)``: ``header`` has ``id``, ``version``, ``risk_tier``, ``title`` of
        a valid file (empty when invalid); ``error`` is ``""`` or the validation message with
        the node and field at fault (the file is called ``proposed.yaml``).
    """
    if len(text.encode("utf-8")) > MAX_WORKFLOW_BYTES:
        return {}, f"proposed.yaml: larger than {MAX_WORKFLOW_BYTES} bytes"
    with tempfile.TemporaryDirectory(prefix="wf-proposed-") as tmp:
        path = Path(tmp) / "proposed.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            wf = load_workflow(path, _tools())
        except WorkflowError as exc:
            return {}, exc.message.replace(str(path), "proposed.yaml")
    return {
        "id": wf.id,
        "version": wf.version,
        "risk_tier": wf.risk_tier,
        "title": wf.title,
    }, ""


def _workflow_target(settings: ApplianceSettings, wf_id: str) -> Path:
    directory = settings.agent.workflows_dir
    if directory is None:
        raise RolloutError(
            "no_workflows_dir",
            "the agent runs the packaged workflows; set [agent] workflows_dir to a copy of "
            "them before changing a workflow from this page",
        )
    for path in _files(directory):
        try:
            if _header(path.read_text(encoding="utf-8")).get("id") == wf_id:
                return path
        except (OSError, UnicodeDecodeError):
            continue
    return directory / f"{wf_id}.yaml"


def _check_set(directory: Path, target: Path, text: str | None) -> None:
    """Load the whole directory as it would be with ``target`` set to ``text`` (None: gone)."""
    with tempfile.TemporaryDirectory(prefix="wf-set-") as tmp:
        copy = Path(tmp)
        for path in _files(directory):
            if path.name != target.name:
                shutil.copyfile(path, copy / path.name)
        if text is not None:
            (copy / target.name).write_text(text, encoding="utf-8")
        try:
            load_workflows(copy, _tools())
        except WorkflowError as exc:
            raise RolloutError(
                "workflow_invalid", exc.message.replace(str(copy), str(directory))
            ) from exc


def apply_workflow(settings: ApplianceSettings, wf_id: str, text: str) -> tuple[Path, str | None]:
    """Write a workflow file into the configured directory after validating the whole set.

    Returns:
        ``(path, before)``: the file written and its previous text (``None``: new file).

    Raises:
        RolloutError: ``no_workflows_dir``, ``workflow_invalid`` (the set would not load:
            a duplicate intent, ...) or ``write_failed``; nothing was written then.
    """
    target = _workflow_target(settings, wf_id)
    try:
        before: str | None = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        before = None
    except (OSError, UnicodeDecodeError) as exc:
        raise RolloutError("write_failed", f"{target}: cannot read the running file") from exc
    _check_set(target.parent, target, text)
    try:
        write_atomic(target, text)
    except OSError as exc:
        raise RolloutError("write_failed", f"{target}: {exc.strerror or exc}") from exc
    return target, before


def restore_workflow(path: Path, before: str | None) -> None:
    """Put a workflow file back as it was (``before`` None: remove it), validated first.

    Raises:
        RolloutError: ``workflow_invalid`` or ``write_failed``; nothing was written then.
    """
    _check_set(path.parent, path, before)
    try:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, before)
    except OSError as exc:
        raise RolloutError("write_failed", f"{path}: {exc.strerror or exc}") from exc


def current_tiers(settings: ApplianceSettings, settings_path: Path | None) -> list[str]:
    """``[agent] enabled_tiers`` as the files now say (the running value without a file)."""
    if settings_path is not None:
        with contextlib.suppress(ConfigError):
            return list(load_settings(settings_path).agent.enabled_tiers)
    return list(settings.agent.enabled_tiers)


def tiers_after(current: list[str], action: str, tier: str) -> list[str]:
    """The enabled tiers after enabling or disabling ``tier``, in rising order.

    Raises:
        RolloutError: ``bad_request``: unknown tier or action.
    """
    if tier not in TIERS or action not in ("enable", "disable"):
        raise RolloutError("bad_request", f"cannot {action} tier {tier!r}")
    wanted = set(current) | {tier} if action == "enable" else set(current) - {tier}
    return [t for t in TIERS if t in wanted]


def _dropin_value(path: Path) -> list[str] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RolloutError("config_corrupt", f"{path}: cannot read the admin drop-in") from exc
    agent = data.get("agent")
    value = agent.get("enabled_tiers") if isinstance(agent, dict) else None
    return list(value) if isinstance(value, list) else None


def write_tiers(settings_path: Path | None, tiers: list[str] | None) -> list[str] | None:
    """Set (``None``: remove) ``[agent] enabled_tiers`` in the admin drop-in, validated.

    Returns:
        The drop-in's previous value of the key (``None``: it did not set it), for a rollback.

    Raises:
        RolloutError: ``no_settings_file`` (the admin was started without one), or the
            settings loader's code (``config_invalid`` ...) with its message; nothing was
            written then.
    """
    if settings_path is None:
        raise RolloutError(
            "no_settings_file",
            "the admin page was started without a settings file (--config), so it has no "
            "drop-in to write; change [agent] enabled_tiers in the settings file instead",
        )
    previous = _dropin_value(dropin_path(settings_path))
    try:
        apply_change(settings_path, {"agent": {"enabled_tiers": tiers}})
    except ConfigError as exc:
        raise RolloutError(exc.code, exc.message) from exc
    except OSError as exc:
        raise RolloutError("write_failed", f"cannot write the admin drop-in: {exc}") from exc
    return previous


@dataclass(frozen=True)
class Outcome:
    """What applying or rolling back did.

    Attributes:
        change: The change request afterwards.
        reloaded: Whether the agent reloaded its settings now.
        message: Words for the page (e.g. "takes effect at the agent's next start").
    """

    change: ChangeRequest
    reloaded: bool
    message: str


def _reload(control: Any, actor: str) -> tuple[bool, str]:
    if control is None:
        return False, "no agent connection; the change takes effect at the agent's next start"
    try:
        control.call("config.reload", {}, actor)
    except ControlError as exc:
        if exc.code == "unavailable":
            return False, "the agent is not reachable; the change takes effect at its next start"
        return False, f"the agent refused to reload ({exc.code}); it keeps the previous settings"
    return True, "the agent reloaded its settings"


def apply_request(
    store: GovernanceStore,
    change_id: int,
    who: Any,
    *,
    settings: ApplianceSettings,
    settings_path: Path | None,
    metrics_db: Path,
    control: Any,
    now: float | None = None,
) -> Outcome:
    """Apply an approved change request: gate, write (validated), record, reload.

    Raises:
        GovernanceError: The rules refuse (``forbidden``, ``conflict``, ``gate_not_met``).
        RolloutError: Nothing could be written (``no_settings_file``, ``config_invalid``,
            ``no_workflows_dir``, ``workflow_invalid``, ``write_failed``).
    """
    change = store.check_apply(change_id, who)
    record: dict[str, Any]
    if change.kind == "tier":
        if change.action == "enable":
            gate = gate_for_enabling(change.target, metrics_db, now)
            if gate is not None and not gate.met:
                raise GovernanceError(
                    "gate_not_met",
                    f"the {gate.tier} tier's gate is not met over the last 7 days; "
                    f"{change.target} cannot be enabled yet",
                )
        tiers = tiers_after(current_tiers(settings, settings_path), change.action, change.target)
        previous = write_tiers(settings_path, tiers)
        record = {"enabled_tiers": tiers, "previous_dropin_value": previous}
    else:
        path, before = apply_workflow(settings, change.target, str(change.payload["text"]))
        record = {"file": str(path), "before": before}
    change = store.mark_applied(change_id, who, record)
    reloaded, message = _reload(control, who.actor)
    return Outcome(change, reloaded, message)


def rollback_request(
    store: GovernanceStore,
    change_id: int,
    who: Any,
    reason: str,
    *,
    settings: ApplianceSettings,
    settings_path: Path | None,
    control: Any,
) -> Outcome:
    """Put back what an applied change replaced, record it, reload.

    Raises:
        GovernanceError: The rules refuse.
        RolloutError: Nothing could be written.
    """
    change, why = store.check_rollback(change_id, who, reason)
    applied = change.applied or {}
    if change.kind == "tier":
        write_tiers(settings_path, applied.get("previous_dropin_value"))
    else:
        restore_workflow(Path(applied["file"]), applied.get("before"))
    change = store.mark_rolled_back(change_id, who, why)
    reloaded, message = _reload(control, who.actor)
    return Outcome(change, reloaded, message)
