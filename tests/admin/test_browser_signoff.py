"""The two-person sign-off in headless Chromium, against the real agent operations.

A platform engineer asks to switch the medium tier on and works the pre-deployment checklist
(the test transfer reaches a real CTI webhook through the agent). The requester cannot review;
the compliance officer reviews; the owner signs off; the low tier's gate, computed from scored
calls in the metadata database, lets the owner apply it; the agent reloads its settings and runs
the medium tier. Every step is on the audit log.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.admin.governance import CHECKLIST
from appliance.admin.rbac import Role
from appliance.config import load_settings
from appliance.events import CallScored
from appliance.metrics.store import CallMetadataStore
from tests.admin.agent import Agent
from tests.admin.browser import AdminServer, browser_sign_in, needs_browser, start_admin, stop_admin
from tests.e2e.webhook import WebhookReceiver

pytestmark = [pytest.mark.browser, needs_browser]


@pytest.fixture
def box(tmp_path: Path, models: object) -> Iterator[tuple[AdminServer, Agent, WebhookReceiver]]:
    root = tmp_path / "box"
    root.mkdir()
    with WebhookReceiver() as cti:
        server = start_admin(root, extra=f'[transfer]\nwebhook_url = "{cti.url}"\n')
        dropins = server.settings_path.with_name("appliance.toml.d")
        dropins.mkdir()
        (dropins / "50-site.toml").write_text('[agent]\nenabled_tiers = ["low"]\n')
        agent = Agent(server.settings_path, models).start()
        try:
            yield server, agent, cti
        finally:
            agent.close()
            stop_admin(server)


def _scores(db: Path, contained: int, transferred: int) -> None:
    """Scored calls as the agent writes them: enough contained calls to meet the low gate."""
    store = CallMetadataStore(db)
    flags = {"disclosure_ok": True, "identity_before_phi_ok": True, "no_card_number_ok": True}
    for i in range(contained + transferred):
        done = i < contained
        s = CallScored(
            f"call-{i}",
            outcome="resolved" if done else "transferred",
            contained=done,
            transfer_appropriate=None if done else True,
            sentiment=0.2,
            judge="rules",
            **flags,
        )
        store.record_score(s.call_id, s)
    store.close()


def test_two_person_sign_off_in_the_browser(box, new_page) -> None:  # noqa: ANN001
    server, agent, cti = box
    engineer = server.make_user(Role.PLATFORM_ENGINEER, username="eng")
    compliance = server.make_user(Role.COMPLIANCE_OFFICER, username="cco")
    owner = server.make_user(Role.OWNER, username="owner")

    page = new_page()
    browser_sign_in(page, server, *engineer)
    page.goto(server.url + "/workflows")
    form = page.locator("form:has(input[name=kind][value=tier])")
    form.locator("select[name=action]").select_option("enable")
    form.locator("select[name=tier]").select_option("medium")
    form.locator("textarea[name=reason]").fill("Reschedules are ready for the medium tier")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/workflows/changes/*")
    change_url = page.url
    for key, _label in CHECKLIST:
        if key == "warm_transfer":
            page.click("button:has-text('Run a test transfer')")
        else:
            item = page.locator(f"form:has(input[name=item][value={key}])")
            item.locator("textarea[name=notes]").fill(f"evidence for {key}")
            item.locator("button[type=submit]").click()
        page.wait_for_load_state()
    assert cti.wait(1)[0]["json"]["test"] is True  # the CTI system got a context payload
    page.click("button:has-text('Send for review')")
    page.wait_for_load_state()
    # The requester has no review form, and a forged review is refused.
    assert page.locator("#compliance-review form").count() == 0
    response = page.request.post(
        change_url + "/review",
        form={"decision": "approve", "notes": "self", "csrf_token": _csrf(page)},
    )
    assert response.status == 403

    reviewer = new_page()
    browser_sign_in(reviewer, server, *compliance)
    reviewer.goto(change_url)
    assert reviewer.locator("#owner-signoff form").count() == 0  # not the owner
    reviewer.fill("#compliance-review textarea[name=notes]", "controls and disclosures checked")
    reviewer.click("#compliance-review button[value=approve]")
    reviewer.wait_for_load_state()

    boss = new_page()
    browser_sign_in(boss, server, *owner)
    boss.goto(change_url)
    boss.fill("#owner-signoff textarea[name=notes]", "go")
    boss.click("#owner-signoff button[value=approve]")
    boss.wait_for_load_state()
    assert "approved" in boss.inner_text("#change-state")

    # The low tier's gate is not met yet (no scored calls): applying is refused.
    boss.click("button:has-text('Apply')")
    boss.wait_for_load_state()
    assert "gate" in boss.inner_text("main").lower()
    settings = load_settings(server.settings_path)
    assert settings.agent.enabled_tiers == ["low"]
    _scores(settings.store.metadata_db, contained=9, transferred=1)
    boss.goto(change_url)
    boss.click("button:has-text('Apply')")
    boss.wait_for_load_state()
    admin_dropin = server.settings_path.with_name("appliance.toml.d") / "60-admin.toml"
    assert tomllib.loads(admin_dropin.read_text())["agent"]["enabled_tiers"] == ["low", "medium"]
    assert agent.server.settings.agent.enabled_tiers == ["low", "medium"]  # the agent reloaded

    kinds = [k for k, _ in _wait_records(agent, "AdminSignedOff")]
    for kind in (
        "AdminChangeRequested",
        "AdminTransferTested",
        "AdminComplianceReviewed",
        "AdminSignedOff",
        "AdminChangeApplied",
    ):
        assert kind in kinds, kinds
    actors = {k: m["actor"] for k, m in agent.records()}
    assert actors["AdminComplianceReviewed"] != actors["AdminChangeRequested"]
    assert actors["AdminSignedOff"] not in (
        actors["AdminChangeRequested"],
        actors["AdminComplianceReviewed"],
    )


def _csrf(page) -> str:  # noqa: ANN001
    return str(page.locator("meta[name=csrf-token]").get_attribute("content"))


def _wait_records(agent: Agent, kind: str, timeout: float = 15.0) -> list[tuple[str, dict]]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = agent.records()
        if kind in [k for k, _ in records] and "AdminChangeApplied" in [k for k, _ in records]:
            return records
        time.sleep(0.2)
    return agent.records()
