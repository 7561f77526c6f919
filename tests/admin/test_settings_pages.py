"""The settings and system pages on a real app, real files and the real agent operations.

The agent side is ``tests.admin.agent.Agent``: a real (not started) ``ApplianceServer`` with
the session's models loaded, its audit log open and the real control operations on the admin's
socket (``config.reload`` re-reads the same settings files).
"""

from __future__ import annotations

import json
import re
import sqlite3
import tomllib
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.admin.config_writer import dropin_path
from appliance.admin.rbac import Role
from appliance.admin.routes.system import duration
from appliance.audit.service import open_audit
from appliance.audit.store import Entry
from appliance.config import load_settings
from appliance.models.manifest import load_manifest
from appliance.models.store import STORE_MANIFEST
from tests.admin.agent import Agent

from .conftest import AdminEnv


@pytest.fixture
def agent(admin_env: AdminEnv, models: object, store: Path) -> Iterator[Agent]:
    """The real agent operations (``config.reload``, ``status``) on the admin's socket.

    The agent reads the model store the session loaded, so ``status`` lists its digests.
    Tests name it before ``signed_in``, so the agent outlives the admin's clients.
    """
    dropins = admin_env.settings_path.with_name("appliance.toml.d")
    dropins.mkdir(exist_ok=True)
    (dropins / "40-models.toml").write_text(f'[models]\nstore = "{store}"\n')
    a = Agent(admin_env.settings_path, models).start()
    yield a
    a.close()


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
    agent: Agent, signed_in: Callable[..., TestClient], admin_env: AdminEnv
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
    # The agent reloaded for the engineer (on its audit log); [sip] waits for a restart.
    actor = f"user:{engineer.user.user.id}"  # type: ignore[attr-defined]
    assert agent.records("AdminConfigReloaded") == [
        ("AdminConfigReloaded", {"accepted": True, "actor": actor})
    ]
    assert agent.server.settings.sip.bind != "127.0.0.1:5070"
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


def test_system_page_with_the_agent(
    agent: Agent, signed_in: Callable[..., TestClient], store: Path
) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    page = engineer.get("/system")
    assert page.status_code == 200
    assert f'<td class="mono">{version("appliance")}</td>' in page.text
    # Up for: the agent's uptime as the page writes durations (3723 s is "1h 2m").
    assert re.search(r"<th>Up for</th><td>(\d+d )?(\d+h )?\d+m( \d+s)?</td>", page.text)
    assert duration(3723.0) == "1h 2m"
    # The digests of the models in use, from the store's manifest.
    in_use = agent.server.settings.models.stt
    stt = next(m for m in load_manifest(store / STORE_MANIFEST).models if m.dest == in_use)
    assert stt.files and all(f.sha256 in page.text for f in stt.files)
    # Stage health: the loaded models are ok; SIP is not started in this agent (no calls).
    assert '<th>stt</th><td class="status-ok">ok</td>' in page.text
    assert '<th>sip</th><td class="status-bad">not_started</td>' in page.text
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
