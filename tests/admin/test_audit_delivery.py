"""Admin records reach the agent's audit log over the real control socket, and wait when it is down.

The agent side is a real (not started) ``ApplianceServer`` with its audit log open and its real
control operations on a Unix socket, on an event loop in its own thread, as in the agent process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from appliance.admin.rbac import Role
from tests.admin.agent import Agent
from tests.admin.conftest import AdminEnv, sign_in


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
