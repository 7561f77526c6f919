"""The control socket's ``status`` operation: the agent's live state for the admin page.

Everything expensive is read once when the socket opens (the package version, the process
start time, the model digests from the store's manifest and lock file); a request only reads
counters the agent already keeps. Call counts and stage failures come from the event bus.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from appliance.app.control_ops_audit import AuditHolder
from appliance.config.settings import ApplianceSettings, ModelSettings
from appliance.events import CallEnded, CallOffered, ConfigChanged, Escalated, Event, EventBus
from appliance.models.engines import LID_MODEL, ModelSet
from appliance.models.manifest import ManifestError, load_manifest
from appliance.models.store import STORE_MANIFEST

_LOGGER = logging.getLogger(__name__)

#: A ``stage_failure`` escalation this recent marks the call pipeline ``degraded``, in s.
STAGE_FAILURE_WINDOW_S = 600.0


class StatusHolder(AuditHolder, Protocol):
    """What ``status`` reads of the agent process (``ApplianceServer`` has it)."""

    settings: ApplianceSettings
    models: ModelSet | None
    bus: EventBus


def package_version() -> str:
    """The installed ``appliance`` version, or ``"unknown"``."""
    try:
        return version("appliance")
    except PackageNotFoundError:
        return "unknown"


def process_started_at() -> float:
    """When this process started, s since the epoch (``/proc``, see proc(5); now if unreadable)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        started_ticks = int(fields[19])  # "starttime", field 22, counted after "comm" (field 2)
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def model_digests(settings: ModelSettings, with_lid: bool = True) -> list[dict[str, str]]:
    """The files of the models in use with their SHA-256, from the store's manifest and lock.

    Reads ``<store>/manifest.toml`` (and its lock file) only, never the model files.

    Returns:
        ``[{"name": model name, "path": file path in the store, "sha256": hex or "unpinned"}]``
        in manifest order; empty (logged) when the store has no readable manifest.
    """
    in_use = {
        settings.stt,
        settings.llm,
        settings.tts,
        settings.tts_voices,
        settings.vad,
        settings.turn,
        settings.embedding,
    }
    if with_lid:
        in_use.add(LID_MODEL)
    try:
        manifest = load_manifest(settings.store / STORE_MANIFEST)
    except ManifestError as exc:
        _LOGGER.warning("model digests unavailable: %s", exc)
        return []
    out = []
    for model in manifest.models:
        if model.dest not in in_use:
            continue
        for entry in model.files:
            path = model.dest if entry.path == "." else f"{model.dest}/{entry.path}"
            out.append({"name": model.name, "path": path, "sha256": entry.sha256})
    return out


class StatusOps:
    """Answers ``status``; subscribes to ``server.bus`` for calls and stage failures.

    Args:
        server: The agent process. Build this before it takes calls, so that every call it
            counts as active was seen being offered.
    """

    def __init__(self, server: StatusHolder) -> None:
        self._server = server
        self._started_at = process_started_at()
        self._started_mono = time.monotonic() - max(0.0, time.time() - self._started_at)
        self._version = package_version()
        lid = server.models is not None and server.models.lid is not None
        self._models = model_digests(server.settings.models, with_lid=lid)
        self._settings_loaded_at = time.time()
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._stage_failure_mono: float | None = None
        server.bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, CallOffered):
                self._active.add(event.call_id)
            elif isinstance(event, CallEnded):
                self._active.discard(event.call_id)
            elif isinstance(event, Escalated) and event.reason == "stage_failure":
                self._stage_failure_mono = time.monotonic()
            elif isinstance(event, ConfigChanged) and event.accepted:
                self._settings_loaded_at = event.t

    def stages(self) -> dict[str, str]:
        """Health of each part: ``ok``, ``not_loaded``, ``degraded``, ``failed``, ...

        ``pipeline`` is ``degraded`` for :data:`STAGE_FAILURE_WINDOW_S` after a call escalated
        because its STT, LLM or TTS failed (``appliance.pipeline.health``).
        """
        server = self._server
        models = server.models
        stages = {
            "stt": "ok" if models is not None else "not_loaded",
            "llm": "ok" if models is not None else "not_loaded",
            "tts": "ok" if models is not None else "not_loaded",
            "embedding": "ok" if models is not None and models.embedder else "not_loaded",
            "language_id": "ok" if models is not None and models.lid else "not_loaded",
            "knowledge_base": "ok" if getattr(server, "agent", None) else "not_loaded",
        }
        with self._lock:
            failed_at = self._stage_failure_mono
        recent = failed_at is not None and time.monotonic() - failed_at < STAGE_FAILURE_WINDOW_S
        stages["pipeline"] = "degraded" if recent else "ok"
        ua = getattr(server, "_ua", None)
        if ua is None:
            stages["sip"] = "not_started"
        else:
            stages["sip"] = "draining" if getattr(ua, "draining", False) else "ok"
        observer = server.audit
        if observer is None:
            stages["audit"] = "disabled"
        else:
            stages["audit"] = "ok" if observer.healthy else "failed"
        return stages

    def audit_status(self) -> dict[str, Any]:
        """``{"enabled", "records", "failed", "last_checkpoint": {"size", "t"} | None}``."""
        observer = self._server.audit
        if observer is None:
            return {"enabled": False, "records": 0, "failed": False, "last_checkpoint": None}
        cp = observer.log.last_checkpoint()
        return {
            "enabled": True,
            "records": observer.log.size,
            "failed": not observer.healthy,
            "last_checkpoint": None if cp is None else {"size": cp[0], "t": cp[1]},
        }

    async def status(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``status``: the agent's live state (see :mod:`appliance.app.control_ops`).

        ``ready``: the SIP user agent runs and takes calls; ``draining``: it refuses new ones
        (SIGTERM, or the audit log failed). ``uptime_s`` is in s since the process started.
        ``loop_lag``: the event loop's lag over the last minute
        (:class:`appliance.metrics.loop_lag.LoopLag` as a dict, s; no samples before serving).
        """
        server = self._server
        ua = getattr(server, "_ua", None)  # ApplianceServer's SIP user agent, once started
        draining = bool(getattr(ua, "draining", False))
        lag = getattr(server, "loop_lag", None)  # LoopLagMonitor (ApplianceServer)
        with self._lock:
            active = len(self._active)
            loaded_at = self._settings_loaded_at
        return {
            "version": self._version,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            "ready": ua is not None and not draining,
            "draining": draining,
            "active_calls": active,
            "max_calls": server.settings.sip.max_calls,
            "stages": self.stages(),
            "audit": await asyncio.to_thread(self.audit_status),  # waits on the log's lock
            "models": [dict(m) for m in self._models],
            "settings_loaded_at": loaded_at,
            "loop_lag": lag.snapshot().as_dict() if lag is not None else None,
        }
