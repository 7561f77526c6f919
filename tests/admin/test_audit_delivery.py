"""Admin records reach the agent's audit log over the real control socket, and wait when it is down.

The agent side is a real (not started) ``ApplianceServer`` with its audit log open and its real
control operations on a Unix socket, on an event loop in its own thread, as in the agent process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.admin.rbac import Role
from appliance.app.control_ops import start_control
from appliance.app.server import ApplianceServer
from appliance.audit.observer import AuditObserver
from appliance.audit.record import decode
from appliance.audit.service import open_audit
from appliance.audit.store import connect, iter_records
from appliance.config import load_settings
from appliance.control import ControlServer
from tests.admin.conftest import AdminEnv, sign_in


class Agent:
    """The agent's control socket served from a loop in a thread."""

    def __init__(self, settings_path: Path) -> None:
        settings = load_settings(settings_path)
        self.server = ApplianceServer(settings)
        self.server.audit = AuditObserver(open_audit(settings.audit), checkpoint_on_call_end=False)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.control: ControlServer | None = None

    def start(self) -> None:
        future = asyncio.run_coroutine_threadsafe(start_control(self.server), self.loop)
        self.control = future.result(10)
        assert self.control is not None

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

    def records(self) -> list[tuple[str, dict[str, object]]]:
        db = connect(self.server.settings.audit.db)
        try:
            out = []
            for _, data in iter_records(db):
                record = decode(data)
                if record.kind.startswith("Admin"):
                    out.append((record.kind, dict(record.meta)))
            return out
        finally:
            db.conn.close()


@pytest.fixture
def agent(admin_env: AdminEnv) -> Iterator[Agent]:
    a = Agent(admin_env.settings_path)
    a.start()
    yield a
    a.close()


def _wait(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sign_ins_reach_the_audit_log_and_wait_while_the_agent_is_down(
    agent: Agent, admin_app, client, make_user, clock
) -> None:  # noqa: ANN001
    made = make_user(Role.VIEWER)
    sign_in(client, made, clock)
    assert _wait(lambda: "AdminLogin" in [k for k, _ in agent.records()])
    kind, meta = next(r for r in agent.records() if r[0] == "AdminLogin")
    assert meta["actor"] == made.user.actor and meta["mfa"] == "totp"

    # The agent goes away: a failed sign-in and a sign-out wait in the outbox, in order.
    agent.stop()
    client.post("/login", data={"username": made.user.username, "password": "wrong wrong wrong"})
    client.post("/logout", data={"csrf_token": client.csrf})
    pending = [p["kind"] for p in admin_app.state.ctx.audit.pending()]
    assert pending[-2:] == ["AdminLoginFailed", "AdminLogout"]
    before = len(agent.records())

    # Back: the next flush delivers them, with the time they happened.
    agent.start()
    assert admin_app.state.ctx.audit.flush() >= 2
    kinds = [k for k, _ in agent.records()[before:]]
    assert kinds[-2:] == ["AdminLoginFailed", "AdminLogout"]
    failed = [m for k, m in agent.records() if k == "AdminLoginFailed"][-1]
    assert failed["actor"] == "anonymous" and failed["reason"] == "wrong"
    assert "wrong wrong wrong" not in {str(v) for v in failed.values()}  # never the password
    assert not admin_app.state.ctx.audit.pending()
