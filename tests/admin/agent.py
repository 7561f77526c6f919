"""The agent's side of the control socket for admin tests: the real operations, no SIP.

A real ``ApplianceServer`` (not started: no SIP, no calls) with its audit log open, its agent
runtime loaded from the real default models when given, and the real control operations
(``appliance.app.control_ops``) served on a Unix socket from an event loop in its own thread,
as in the agent process. ``config.reload`` re-reads the real settings file.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from appliance.app.control_ops import start_control
from appliance.app.control_ops_audit import AuditOps
from appliance.app.dialler import Dialler, DialResult, OutcomeStore, open_gate
from appliance.app.outbound import OutboundService
from appliance.app.server import ApplianceServer
from appliance.audio.bridge import AudioBridge
from appliance.audit.observer import AuditObserver
from appliance.audit.record import decode
from appliance.audit.service import open_audit
from appliance.audit.store import connect, iter_records
from appliance.config import load_settings
from appliance.control import ControlServer
from appliance.media.sip import CallHandle


class Agent:
    """The control socket of an agent built from ``settings_path``.

    Args:
        settings_path: The settings file the admin page uses too.
        models: The session's real ``ModelSet`` (tests/conftest.py ``models``) to load the agent
            runtime (workflows, knowledge base) so that ``config.reload`` and ``kb.*`` run for
            real; ``None`` for the audit-only operations.
    """

    def __init__(self, settings_path: Path, models: object | None = None) -> None:
        settings = load_settings(settings_path)
        self.server = ApplianceServer(
            settings,
            models=models,
            reload=lambda: load_settings(settings_path),  # type: ignore[arg-type]
        )
        if models is not None:
            self.server.agent = self.server._load_agent(settings)
        self.server.audit = AuditObserver(open_audit(settings.audit), checkpoint_on_call_end=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.control: ControlServer | None = None

    def start(self) -> Agent:
        future = asyncio.run_coroutine_threadsafe(start_control(self.server), self.loop)
        self.control = future.result(10)
        assert self.control is not None, "the control socket did not start"
        return self

    def stop(self) -> None:
        if self.control is not None:
            asyncio.run_coroutine_threadsafe(self.control.close(), self.loop).result(10)
            self.control = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        assert self.server.audit is not None
        self.server.audit.close()
        self.server.audit.log.close()

    def records(self, prefix: str = "Admin") -> list[tuple[str, dict[str, object]]]:
        """``(kind, meta)`` of the audit records whose kind starts with ``prefix``, in order."""
        db = connect(self.server.settings.audit.db)
        try:
            out = []
            for _, data in iter_records(db):
                record = decode(data)
                if record.kind.startswith(prefix):
                    out.append((record.kind, dict(record.meta)))
            return out
        finally:
            db.conn.close()


class RecordingPlacer:
    """The dialler's SIP side for admin tests: records each INVITE it is asked to send.

    Every dial is answered (200) with a call that has no media; with no conversation the
    dialler hangs up at once and records ``no-decision``. Only dials the real gate allowed reach
    :attr:`invites` (the dialler asks the gate first).
    """

    def __init__(self) -> None:
        self.invites: list[str] = []  # the request URIs, in order

    async def place(
        self, call_id: str, uri: str, headers: dict[str, str], ring_timeout_s: float
    ) -> DialResult:
        self.invites.append(uri)
        return DialResult(200, CallHandle(call_id=call_id, bridge=AudioBridge(16000)))


class DiallerOps(OutboundService):
    """The real ``outbound.*`` operations on a real dialler, without pjsua2 or a pipeline.

    The gate, consent, DNC and outcome files are the real ones of ``[outbound]``; INVITEs go to
    :class:`RecordingPlacer`. ``clock``: the dialler's (so the gate's and the preview's) clock.
    """

    def __init__(self, server: ApplianceServer, clock: Callable[[], datetime]) -> None:
        self.server = server
        settings = server.settings.outbound
        self.consent, self.dnc, self.gate = open_gate(settings, server.bus.emit)
        self.store = OutcomeStore(settings.outcomes_db)
        self.placer = RecordingPlacer()
        self.dialler = Dialler(settings, self.gate, self.placer, self.store, clock=clock)
        self.task = None
        self._audit = AuditOps(server)
        self._watches = {}


def serve_outbound(agent: Agent, clock: Callable[[], datetime]) -> DiallerOps:
    """Register :class:`DiallerOps` on a started ``agent``'s control socket; run its dialler.

    Stop it with ``stop_outbound`` before ``agent.close()``.
    """
    assert agent.control is not None, "start the agent first"
    ops = DiallerOps(agent.server, clock)
    ops.register(agent.control)

    async def run() -> None:
        ops.task = asyncio.create_task(ops.dialler.run_forever(), name="dialler")

    asyncio.run_coroutine_threadsafe(run(), agent.loop).result(5)
    return ops


def stop_outbound(agent: Agent, ops: DiallerOps) -> None:
    """Cancel the dialler on the agent's loop and close its files."""

    async def stop() -> None:
        if ops.task is not None:
            ops.task.cancel()

    asyncio.run_coroutine_threadsafe(stop(), agent.loop).result(5)
    ops.store.close()
    ops.consent.close()
    ops.dnc.close()
