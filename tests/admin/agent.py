"""The agent's side of the control socket for admin tests: the real operations, no SIP.

A real ``ApplianceServer`` (not started: no SIP, no calls) with its audit log open, its agent
runtime loaded from the real default models when given, and the real control operations
(``appliance.app.control_ops``) served on a Unix socket from an event loop in its own thread,
as in the agent process. ``config.reload`` re-reads the real settings file.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from appliance.app.control_ops import start_control
from appliance.app.server import ApplianceServer
from appliance.audit.observer import AuditObserver
from appliance.audit.record import decode
from appliance.audit.service import open_audit
from appliance.audit.store import connect, iter_records
from appliance.config import load_settings
from appliance.control import ControlServer


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
