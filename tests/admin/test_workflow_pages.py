"""Workflows page: two-person sign-off, gated apply, rollback, on the real app (TestClient)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.admin.governance import CHECKLIST
from appliance.admin.rbac import Role
from appliance.events import CallScored
from appliance.metrics.store import CallMetadataStore
from tests.admin.agent import Agent
from tests.admin.conftest import AdminEnv
from tests.e2e.webhook import WebhookReceiver


@pytest.fixture
def cti() -> Iterator[WebhookReceiver]:
    """The clinic's CTI system: a real HTTP server that records the handoff context."""
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def agent(admin_env: AdminEnv, models: object, cti: WebhookReceiver) -> Iterator[Agent]:
    """The real agent operations (test transfer to the CTI webhook, settings reload)."""
    dropins = admin_env.settings_path.with_name("appliance.toml.d")
    dropins.mkdir(exist_ok=True)
    (dropins / "40-cti.toml").write_text(f'[transfer]\nwebhook_url = "{cti.url}"\n')
    a = Agent(admin_env.settings_path, models).start()
    yield a
    a.close()


@pytest.fixture
def low_only(admin_env: AdminEnv) -> Path:
    """The site runs only the low tier (a drop-in below the admin's own)."""
    dropins = admin_env.settings_path.with_name("appliance.toml.d")
    dropins.mkdir(exist_ok=True)
    (dropins / "50-site.toml").write_text('[agent]\nenabled_tiers = ["low"]\n')
    return dropins / "60-admin.toml"


def _scores(db: Path, contained: int, transferred: int) -> None:
    store = CallMetadataStore(db)
    flags = {"disclosure_ok": True, "identity_before_phi_ok": True, "no_card_number_ok": True}
    for i in range(contained + transferred):
        done = i < contained
        s = CallScored(
            f"c{i}",
            outcome="resolved" if done else "transferred",
            contained=done,
            transfer_appropriate=None if done else True,
            sentiment=0.1,
            judge="rules",
            **flags,
        )
        store.record_score(s.call_id, s)
    store.close()


def _post(c: TestClient, path: str, **data: str) -> Any:
    return c.post(path, data={"csrf_token": c.csrf, **data})  # type: ignore[attr-defined]


def _open_tier_change(c: TestClient) -> int:
    r = _post(c, "/workflows/changes", kind="tier", action="enable", tier="medium", reason="ready")
    assert r.status_code == 303, r.text
    m = re.fullmatch(r"/workflows/changes/(\d+)", r.headers["location"])
    assert m
    return int(m.group(1))


def _ready(c: TestClient, cid: int) -> None:
    """Work the whole checklist (the test transfer through the agent) and send for review."""
    base = f"/workflows/changes/{cid}"
    for key, _ in CHECKLIST:
        if key == "warm_transfer":
            r = _post(c, f"{base}/transfer-test")
        else:
            r = _post(c, f"{base}/checklist", item=key, notes=f"done: {key}")
        assert r.status_code == 303, r.text
    assert _post(c, f"{base}/submit").status_code == 303


def test_viewer_gets_403(signed_in: Callable[..., TestClient]) -> None:
    viewer = signed_in(Role.VIEWER)
    assert viewer.get("/workflows").status_code == 403
    assert viewer.get("/api/gates").status_code == 403
    assert viewer.get("/api/workflows").status_code == 403
    r = _post(viewer, "/workflows/changes", kind="tier", tier="medium", reason="x")
    assert r.status_code == 403


def test_two_person_sign_off_gate_apply_and_rollback(
    signed_in: Callable[..., TestClient],
    admin_env: AdminEnv,
    agent: Agent,
    cti: WebhookReceiver,
    low_only: Path,
) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    compliance = signed_in(Role.COMPLIANCE_OFFICER)
    owner = signed_in(Role.OWNER)
    page = engineer.get("/workflows")
    assert page.status_code == 200 and "faq" in page.text and "low gate: not met" in page.text

    cid = _open_tier_change(engineer)
    base = f"/workflows/changes/{cid}"
    # Sending for review needs the whole checklist.
    assert _post(engineer, f"{base}/submit").status_code == 409
    _ready(engineer, cid)
    tested = [m for k, m in agent.records() if k == "AdminTransferTested"]
    assert tested and tested[-1]["actor"] == f"user:{engineer.user.user.id}"  # type: ignore[attr-defined]
    assert cti.wait(1)[0]["json"]["test"] is True  # the CTI system got a context payload
    assert "delivered" in engineer.get(base).text

    # The requester can neither review nor sign off, even holding both roles.
    assert _post(engineer, f"{base}/review", decision="approve", notes="self").status_code == 403
    both = signed_in(Role.OWNER, Role.COMPLIANCE_OFFICER)
    other = _open_tier_change(both)
    _ready(both, other)
    r = _post(both, f"/workflows/changes/{other}/review", decision="approve", notes="mine")
    assert r.status_code == 403 and "asked for the change" in r.text
    r = _post(compliance, f"/workflows/changes/{other}/review", decision="approve", notes="ok")
    assert r.status_code == 303
    r = _post(both, f"/workflows/changes/{other}/signoff", decision="approve")
    assert r.status_code == 403
    # The owner cannot sign before the compliance review.
    assert _post(owner, f"{base}/signoff", decision="approve").status_code == 409
    r = _post(compliance, f"{base}/review", decision="approve", notes="controls confirmed")
    assert r.status_code == 303
    # A compliance officer cannot sign off; the owner can.
    assert _post(compliance, f"{base}/signoff", decision="approve").status_code == 403
    assert _post(owner, f"{base}/signoff", decision="approve", notes="go").status_code == 303
    text = owner.get(base).text
    assert "approved" in text and owner.user.user.username in text  # type: ignore[attr-defined]

    # The low tier's gate is not met (no scored calls): applying is refused, nothing written.
    r = _post(owner, f"{base}/apply")
    assert r.status_code == 409 and "gate" in r.text
    assert not low_only.exists()
    _scores(admin_env.settings.store.metadata_db, contained=9, transferred=1)
    assert engineer.get("/api/gates").json()["gates"]["low"]["met"] is True
    r = _post(owner, f"{base}/apply")
    assert r.status_code == 200 and "reloaded" in r.text, r.text
    assert tomllib.loads(low_only.read_text())["agent"]["enabled_tiers"] == ["low", "medium"]
    assert engineer.get("/api/workflows").json()["enabled_tiers"] == ["low", "medium"]
    reloads = [m for k, m in agent.records() if k == "AdminConfigReloaded"]
    assert reloads and reloads[-1]["actor"] == f"user:{owner.user.user.id}"  # type: ignore[attr-defined]
    assert agent.server.settings.agent.enabled_tiers == ["low", "medium"]  # the agent runs it

    assert _post(owner, f"{base}/rollback", reason="").status_code == 422
    r = _post(owner, f"{base}/rollback", reason="complaints rose")
    assert r.status_code == 200 and "Rolled back" in r.text
    assert "enabled_tiers" not in low_only.read_text()
    assert engineer.get("/api/workflows").json()["enabled_tiers"] == ["low"]
    ctx = owner.app.state.ctx  # type: ignore[attr-defined]
    kinds = [row[0] for row in ctx.db.execute("SELECT kind FROM audit_outbox ORDER BY id")]
    for kind in (
        "AdminChangeRequested",
        "AdminComplianceReviewed",
        "AdminSignedOff",
        "AdminChangeApplied",
        "AdminRolledBack",
    ):
        assert kind in kinds


def test_invalid_workflow_is_refused_with_its_error(
    signed_in: Callable[..., TestClient],
) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    r = _post(
        engineer,
        "/workflows/changes",
        kind="workflow",
        reason="x",
        workflow_text="schema: 1\nid: faq\nversion: 2\n",
    )
    assert r.status_code == 422 and "proposed.yaml" in r.text
    r = _post(engineer, "/workflows/changes", kind="nonsense", reason="x")
    assert r.status_code == 422
    assert engineer.get("/workflows/changes/99999").status_code == 404
    # Ids beyond SQLite's integers are refused as input, never a 500.
    assert engineer.get(f"/workflows/changes/{10**30}").status_code == 422
    assert _post(engineer, f"/workflows/changes/{10**30}/submit").status_code == 422


def test_api_shapes(signed_in: Callable[..., TestClient]) -> None:
    lead = signed_in(Role.CONTACT_CENTRE_LEAD)
    gates = lead.get("/api/gates").json()
    assert set(gates["gates"]) == {"low", "medium"}
    assert gates["gates"]["low"]["met"] is False
    assert gates["required_gate"]["medium"] == "low"
    wfs = lead.get("/api/workflows").json()
    assert {w["id"] for w in wfs["workflows"]} >= {"faq", "billing"}
    assert all(w["valid"] for w in wfs["workflows"])
