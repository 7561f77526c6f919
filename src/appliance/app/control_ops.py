"""What ``appliance serve`` answers on the control socket (:mod:`appliance.control`).

The admin page (``appliance admin``) is a separate, less-privileged process: it never holds
the audit keys or the models, and asks the agent over the socket instead. Operations (args and
results are JSON; every handler also gets the ``actor``, e.g. ``"user:7"``):

- ``status`` ``{}`` -> version, pid, uptime_s, ready, draining, active_calls, max_calls,
  stages, audit, models, settings_loaded_at (:mod:`appliance.app.control_ops_status`);
- ``audit.append`` ``{"kind": "Admin...", "meta": {...}}`` -> ``{"index"}``;
- ``call.timeline`` ``{"call_id"}`` -> ``{"call_id", "events"}`` (metadata only, no content);
- ``call.transcript`` ``{"call_id", "reason"}`` -> ``{"call_id", "turns", "events"}``
  (:mod:`appliance.app.control_ops_audit`);
- ``config.reload`` ``{}`` -> ``{"accepted"}``;
- ``kb.preview`` ``{"question"}`` -> ``{"matches": [{"entry_id", "score", "text"}]}``;
- ``kb.reload`` ``{}`` -> ``{"entries"}``;
- ``transfer.test`` ``{}`` -> ``{"webhook_status", "ok", "detail"}``.

Operations that change something are on the audit log with their actor
(``AdminConfigReloaded``, ``AdminKnowledgeReloaded``, ``AdminTransferTested``; opening a
transcript is ``AdminPhiViewed``). When the audit log is enabled but failed, they are refused
with ``unavailable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.agent.runtime import AgentRuntime
from appliance.app.control_ops_audit import AuditHolder, AuditOps, check_actor
from appliance.app.control_ops_status import StatusOps
from appliance.config.settings import ApplianceSettings
from appliance.control import ControlError, ControlServer
from appliance.events import EventBus
from appliance.models.engines import ModelSet

_LOGGER = logging.getLogger(__name__)

#: Bounds of a knowledge-base preview question, characters.
QUESTION_CHARS = (1, 300)
#: Entries a preview returns.
PREVIEW_MATCHES = 3


class AgentProcess(AuditHolder, Protocol):
    """What the operations need of the agent process (``ApplianceServer`` has all of it)."""

    settings: ApplianceSettings
    agent: AgentRuntime | None
    models: ModelSet | None
    bus: EventBus

    def reload_settings(self) -> bool:
        """Re-read the configuration (what SIGHUP does); whether it was accepted."""
        ...


@dataclass
class ControlOps:
    """The operations of one agent process, bound to it.

    Args:
        server: The running agent (an ``ApplianceServer``, or any object with the same
            attributes: see :class:`AgentProcess`).
    """

    server: AgentProcess

    def __post_init__(self) -> None:
        self.audit = AuditOps(self.server)
        self.status_ops = StatusOps(self.server)

    def register(self, control: ControlServer) -> None:
        """Register every operation on ``control``.

        Raises:
            ValueError: An op is already registered there.
        """
        control.register("status", self.status_ops.status)
        control.register("audit.append", self.audit.append)
        control.register("call.timeline", self.audit.timeline)
        control.register("call.transcript", self.audit.transcript)
        control.register("config.reload", self.config_reload)
        control.register("kb.preview", self.kb_preview)
        control.register("kb.reload", self.kb_reload)
        control.register("transfer.test", self.transfer_test)

    def _audit_ready(self, actor: str) -> None:
        """Refuse a change that could not be put on an enabled audit log."""
        check_actor(actor)
        if self.server.audit is not None:
            self.audit.log()

    async def _record(self, kind: str, actor: str, meta: dict[str, Any]) -> None:
        if self.server.audit is not None:
            await self.audit.record(kind, actor, meta)

    async def config_reload(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``config.reload``: apply the settings file as SIGHUP does -> ``{"accepted"}``.

        The reload runs on the event loop, as SIGHUP's does (it re-embeds the knowledge base:
        tens of ms to a few s on CPU). A refused file keeps the last good settings serving.

        Raises:
            ControlError: ``bad_request`` without an actor; ``unavailable`` when the audit log
                failed.
        """
        self._audit_ready(actor)
        accepted = self.server.reload_settings()
        await self._record("AdminConfigReloaded", actor, {"accepted": accepted})
        return {"accepted": accepted}

    async def kb_reload(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``kb.reload``: re-read the knowledge file and re-embed it -> ``{"entries"}``.

        A settings reload re-reads the knowledge base (``load_agent``), so this is one.

        Raises:
            ControlError: ``bad_request`` when the file (or the settings) were refused, the last
                good knowledge base still serving; ``unavailable`` when the agent has none yet
                or the audit log failed.
        """
        self._audit_ready(actor)
        accepted = self.server.reload_settings()
        agent = self.server.agent
        entries = len(agent.kb.answers) if agent is not None else 0
        await self._record(
            "AdminKnowledgeReloaded", actor, {"accepted": accepted, "entries": entries}
        )
        if not accepted:
            raise ControlError(
                "bad_request", "the knowledge base was refused; the last good one still serves"
            )
        return {"entries": entries}

    async def kb_preview(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``kb.preview``: the best :data:`PREVIEW_MATCHES` entries for a typed question.

        Returns:
            ``{"matches": [{"entry_id", "score" (cosine similarity), "text"}]}``, best first.

        Raises:
            ControlError: ``bad_request`` for a question outside :data:`QUESTION_CHARS`
                (blank counts as empty); ``unavailable`` before the agent is loaded.
        """
        question = args.get("question")
        low, high = QUESTION_CHARS
        if not isinstance(question, str) or not low <= len(question.strip()) <= high:
            raise ControlError("bad_request", f"question must be {low}-{high} characters")
        agent = self.server.agent
        if agent is None:
            raise ControlError("unavailable", "the agent is still loading")
        hits = await asyncio.to_thread(agent.kb.top, question.strip(), PREVIEW_MATCHES)
        return {
            "matches": [{"entry_id": h.entry_id, "score": h.score, "text": h.text} for h in hits]
        }

    async def transfer_test(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``transfer.test``: POST a synthetic handoff context to the CTI webhook.

        Returns:
            ``{"webhook_status": HTTP status or None (no answer), "ok": 2xx, "detail"}``.

        Raises:
            ControlError: ``unavailable`` when no webhook is configured or the audit log
                failed; ``bad_request`` without an actor.
        """
        self._audit_ready(actor)
        cfg = self.server.settings.transfer
        if not cfg.webhook_url:
            raise ControlError("unavailable", "no CTI webhook is configured ([transfer])")
        result = await asyncio.to_thread(
            post_test, cfg.webhook_url, test_context(), cfg.webhook_timeout_s
        )
        await self._record(
            "AdminTransferTested",
            actor,
            {"webhook_status": result["webhook_status"], "ok": result["ok"]},
        )
        return result


def register_all(server: AgentProcess, control: ControlServer) -> ControlOps:
    """Bind the operations to ``server`` and register them on ``control``."""
    ops = ControlOps(server)
    ops.register(control)
    return ops


async def start_control(server: AgentProcess) -> ControlServer | None:
    """Open the control socket (``[admin] control_socket``) with every operation.

    A socket that cannot be opened is logged and ``None`` returned: the agent serves calls
    without the admin page rather than not at all.
    """
    path = server.settings.admin.control_socket
    control = ControlServer(path)
    try:
        register_all(server, control)
        await control.start()
    except Exception:  # noqa: BLE001 - calls go on without the admin page
        _LOGGER.exception("control socket %s could not be opened; the admin page is off", path)
        return None
    _LOGGER.info("control socket listening on %s", path)
    return control


def test_context() -> dict[str, Any]:
    """A synthetic handoff context shaped like a real one, marked ``"test": true``.

    No caller, no patient: every field is a fixed placeholder.
    """
    return {
        "test": True,
        "handoff_id": f"test-{secrets.token_hex(4)}",
        "call_id": "test",
        "reason": "test",
        "intent": "test",
        "workflow": "",
        "stage": "",
        "risk_tier": "",
        "identity_verified": False,
        "slots": {},
        "actions": [],
        "summary": "Test screen-pop sent from the admin page; there is no caller.",
    }


def post_test(url: str, context: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """POST ``context`` as JSON to ``url`` (blocking), as the warm transfer does.

    Returns:
        ``{"webhook_status": HTTP status or None, "ok": 2xx, "detail": short text}``.
    """
    body = json.dumps(context, sort_keys=True).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "X-Handoff-ID": context["handoff_id"]},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return {"webhook_status": exc.code, "ok": False, "detail": f"answered {exc.code}"}
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"webhook_status": None, "ok": False, "detail": f"no answer: {reason}"}
    ok = 200 <= status < 300
    return {
        "webhook_status": status,
        "ok": ok,
        "detail": "delivered" if ok else f"answered {status}",
    }
