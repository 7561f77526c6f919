"""The settings and system pages on a real app, real files and a real control socket."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.admin.config_writer import dropin_path
from appliance.admin.rbac import Role
from appliance.audit.service import open_audit
from appliance.audit.store import Entry
from appliance.config import load_settings
from appliance.control import ControlServer

from .conftest import AdminEnv


class FakeAgent:
    """A control server on the admin's socket answering ``config.reload`` and ``status``."""

    def __init__(self, path: Path) -> None:
        self.calls: list[tuple[str, str]] = []
        self.server = ControlServer(path)
        self.server.register("config.reload", self._reload)
        self.server.register("status", self._status)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _reload(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        self.calls.append(("config.reload", actor))
        return {"accepted": True}

    async def _status(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        return {
            "version": "9.8.7",
            "uptime_s": 3723.0,
            "ready": True,
            "draining": False,
            "active_calls": 1,
            "max_calls": 2,
            "stages": {"stt": "ok", "tts": "failed"},
            "audit": {"enabled": True, "records": 12, "failed": False, "last_checkpoint": None},
            "models": [{"name": "whisper-tiny.en", "path": "model.bin", "sha256": "ab" * 32}],
            "settings_loaded_at": 0,
        }

    def __enter__(self) -> FakeAgent:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def agent(admin_env: AdminEnv) -> Iterator[FakeAgent]:
    with FakeAgent(admin_env.settings.admin.control_socket) as fake:
        yield fake


def dropin(env: AdminEnv) -> dict[str, Any]:
    path = dropin_path(env.settings_path)
    return tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def form(c: TestClient, group: str, **fields: str) -> Any:
    return c.post(f"/settings/{group}", data={"csrf_token": c.csrf, **fields})  # type: ignore[attr-defined]


def test_viewer_and_reviewer_get_403(signed_in: Callable[..., TestClient]) -> None:
    viewer = signed_in(Role.VIEWER)
    assert viewer.get("/settings").status_code == 403
    assert viewer.get("/api/settings").status_code == 403
    assert viewer.get("/system").status_code == 403
    r = viewer.post(
        "/api/settings",
        json={"clinic": {"name": "X"}},
        headers={"X-CSRF-Token": viewer.csrf},  # type: ignore[attr-defined]
    )
    assert r.status_code == 403


def test_signed_out_is_sent_to_login(client: TestClient) -> None:
    r = client.get("/settings")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.get("/api/settings").status_code == 401


def test_contact_centre_lead_sees_only_transfer(
    signed_in: Callable[..., TestClient], admin_env: AdminEnv
) -> None:
    lead = signed_in(Role.CONTACT_CENTRE_LEAD)
    page = lead.get("/settings")
    assert page.status_code == 200
    assert 'action="/settings/transfer"' in page.text
    assert 'action="/settings/trunk"' not in page.text
    assert lead.get("/api/settings").json() == {"transfer": {"target": "", "webhook_url": ""}}
    assert form(lead, "trunk", **{"sip.allowed_peers": "10.0.0.5"}).status_code == 403
    r = lead.post(
        "/api/settings",
        json={"sip": {"bind": "10.0.0.1:5060"}},
        headers={"X-CSRF-Token": lead.csrf},  # type: ignore[attr-defined]
    )
    assert r.status_code == 403
    assert dropin(admin_env) == {}

    r = form(
        lead,
        "transfer",
        **{"transfer.target": "sip:frontdesk@10.0.0.5", "transfer.webhook_url": ""},
    )
    assert r.status_code == 200, r.text
    assert "applies when the agent starts" in r.text
    assert dropin(admin_env) == {"transfer": {"target": "sip:frontdesk@10.0.0.5"}}


@pytest.mark.parametrize(
    ("peers", "needle"),
    [
        ("0.0.0.0/0", "too wide"),
        ("garbage", "not an IP address"),
        ("10.0.0.5/24", "host bits set"),
        ("", "at least one trunk peer"),
    ],
)
def test_bad_trunk_peers_get_a_clear_error(
    signed_in: Callable[..., TestClient], admin_env: AdminEnv, peers: str, needle: str
) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    r = form(engineer, "trunk", **{"sip.allowed_peers": peers, "sip.bind": "127.0.0.1:5060"})
    assert r.status_code == 422
    assert needle in r.text
    assert "settings-field-error" in r.text
    assert not dropin_path(admin_env.settings_path).exists()
    r = engineer.post(
        "/api/settings",
        json={"sip": {"allowed_peers": [peers]}},
        headers={"X-CSRF-Token": engineer.csrf},  # type: ignore[attr-defined]
    )
    assert r.status_code == 422 and needle in r.json()["detail"]


def test_disclosure_without_the_ai_statement_is_refused(
    signed_in: Callable[..., TestClient], admin_env: AdminEnv
) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    r = form(engineer, "disclosure", **{"agent.disclosure": "Hello, you've reached {clinic}."})
    assert r.status_code == 422
    assert "automated system" in r.text
    assert not dropin_path(admin_env.settings_path).exists()
    # The same through the API, and through a hand-written drop-in the loader refuses too.
    r = engineer.post(
        "/api/settings",
        json={"agent": {"disclosure": "Hi, I'm Sarah from {clinic}."}},
        headers={"X-CSRF-Token": engineer.csrf},  # type: ignore[attr-defined]
    )
    assert r.status_code == 422

    r = form(engineer, "disclosure", **{"agent.disclosure": "Hi, this is {clinic}'s AI assistant."})
    assert r.status_code == 200
    assert load_settings(admin_env.settings_path).agent.disclosure == (
        "Hi, this is {clinic}'s AI assistant."
    )


def test_valid_trunk_change_lands_in_the_dropin_reloads_and_says_restart(
    signed_in: Callable[..., TestClient], admin_env: AdminEnv, agent: FakeAgent
) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    r = form(
        engineer,
        "trunk",
        **{"sip.allowed_peers": "10.0.0.5\n192.168.10.0/24", "sip.bind": "127.0.0.1:5070"},
    )
    assert r.status_code == 200, r.text
    assert "Saved and applied." in r.text
    assert "restart" in r.text
    assert dropin(admin_env) == {
        "sip": {"allowed_peers": ["10.0.0.5/32", "192.168.10.0/24"], "bind": "127.0.0.1:5070"}
    }
    settings = load_settings(admin_env.settings_path)
    assert settings.sip.allowed_peers == ["10.0.0.5/32", "192.168.10.0/24"]
    assert agent.calls == [("config.reload", f"user:{engineer.user.user.id}")]  # type: ignore[attr-defined]
    # The change is on the admin audit outbox with its keys (no values).
    rows = admin_env_outbox(engineer)
    changed = [m for k, m in rows if k == "AdminSettingsChanged"]
    assert changed and changed[-1]["keys"] == "sip.allowed_peers,sip.bind"
    assert changed[-1]["restart_needed"] is True

    # Undo puts the drop-in back as it was (it did not exist).
    r = engineer.post("/settings/rollback", data={"csrf_token": engineer.csrf})  # type: ignore[attr-defined]
    assert r.status_code == 200 and "Rolled back" in r.text
    assert not dropin_path(admin_env.settings_path).exists()


def admin_env_outbox(c: TestClient) -> list[tuple[str, dict[str, Any]]]:
    ctx = c.app.state.ctx  # type: ignore[attr-defined]
    rows = ctx.db.execute("SELECT kind, meta FROM audit_outbox ORDER BY id").fetchall()
    return [(kind, json.loads(meta)) for kind, meta in rows]


def test_api_settings_rejects_garbage_without_5xx(signed_in: Callable[..., TestClient]) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    headers = {"X-CSRF-Token": engineer.csrf}  # type: ignore[attr-defined]
    for body in [
        {"clinic": {"name": ""}},
        {"clinic": {"nope": "x"}},
        {"models": {"llm": "x"}},
        {"transfer": {"target": "not a uri"}},
        {"transfer": {"webhook_url": "http://8.8.8.8/"}},
        {"sip": {"bind": "nonsense"}},
        {"clinic": "flat"},
        [1, 2],
        {"clinic": {"name": ["a", "b"]}},
    ]:
        r = engineer.post("/api/settings", json=body, headers=headers)
        assert r.status_code == 422, (body, r.text)
    r = engineer.post("/api/settings", json={"clinic": {"name": "Oak Clinic"}}, headers=headers)
    assert r.status_code == 200
    assert r.json()["changed"] == ["clinic.name"] and r.json()["restart_needed"] is False
    assert engineer.get("/api/settings").json()["clinic"] == {"name": "Oak Clinic"}


def test_csrf_is_required(signed_in: Callable[..., TestClient], admin_env: AdminEnv) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    r = engineer.post("/settings/clinic", data={"clinic.name": "Evil Clinic"})
    assert r.status_code == 403
    assert not dropin_path(admin_env.settings_path).exists()


def test_system_page_without_the_agent(signed_in: Callable[..., TestClient]) -> None:
    officer = signed_in(Role.COMPLIANCE_OFFICER)
    page = officer.get("/system")
    assert page.status_code == 200
    assert "not reachable" in page.text
    assert "Disk" in page.text
    data = officer.get("/api/system").json()
    assert data["agent"] is None and data["agent_error"]
    assert data["disk"]["total"] > 0


def test_system_page_with_the_agent(signed_in: Callable[..., TestClient], agent: FakeAgent) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    page = engineer.get("/system")
    assert page.status_code == 200
    assert "9.8.7" in page.text and "1h 2m" in page.text
    assert "ab" * 32 in page.text
    assert "failed" in page.text
    # The engineer views but may not verify.
    assert "/system/verify" not in page.text
    r = engineer.post("/system/verify", data={"csrf_token": engineer.csrf})  # type: ignore[attr-defined]
    assert r.status_code == 403


def test_update_history_checkpoint_and_verification(
    signed_in: Callable[..., TestClient], admin_env: AdminEnv
) -> None:
    log = open_audit(admin_env.settings.audit)
    log.append(
        [
            Entry(
                kind="ServiceStarted",
                meta={"version": "1.0.0", "previous_version": "", "previous_exit": ""},
            ),
            Entry(kind="CallAnswered", call_id="c1", meta={"x": 1}),
            Entry(
                kind="ServiceStarted",
                meta={"version": "1.1.0", "previous_version": "1.0.0", "previous_exit": "unclean"},
            ),
        ]
    )
    log.checkpoint()
    log.close()

    officer = signed_in(Role.COMPLIANCE_OFFICER)
    data = officer.get("/api/system").json()
    assert [
        (s["version"], s["previous_version"], s["previous_exit"]) for s in data["update_history"]
    ] == [
        ("1.1.0", "1.0.0", "unclean"),
        ("1.0.0", "", ""),
    ]
    assert data["checkpoint"]["signature_ok"] is True
    assert data["checkpoint"]["size"] >= 4  # the KeyCreated record, then ours

    page = officer.get("/system")
    assert "ended uncleanly" in page.text and "/system/verify" in page.text
    r = officer.post("/system/verify", data={"csrf_token": officer.csrf})  # type: ignore[attr-defined]
    assert r.status_code == 200
    assert "OK: " in r.text and "records" in r.text
    kinds = [k for k, _ in admin_env_outbox(officer)]
    assert "AdminAuditVerified" in kinds

    # Tampering with a record is found.
    conn = sqlite3.connect(admin_env.settings.audit.db)
    conn.execute(
        "UPDATE records SET data = CAST(replace(CAST(data AS TEXT), '1.0.0', '6.6.6') AS BLOB)"
        " WHERE idx = 1"
    )
    conn.commit()
    conn.close()
    r = officer.post(
        "/api/system/verify",
        headers={"X-CSRF-Token": officer.csrf},  # type: ignore[attr-defined]
    )
    assert r.status_code == 200
    assert r.json()["ok"] is False and r.json()["first_bad_index"] is not None
