"""A reminder campaign through the two-person sign-off in headless Chromium, three people.

``appliance admin`` as a subprocess over real HTTPS, the real ``outbound.*`` operations of the
agent on a real dialler, gate and consent/DNC/outcome files (``tests/admin/agent.py``; only
the INVITEs go to a recorder). A contact-centre lead proposes the campaign and sees the gates'
dry run; the lead has no review form; the compliance officer reviews; the owner signs off and
starts it; the gate lets one of the three dials through, and the page shows the outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.admin.rbac import Role
from tests.admin.agent import Agent, DiallerOps, serve_outbound, stop_outbound
from tests.admin.browser import AdminServer, browser_sign_in, needs_browser, start_admin, stop_admin
from tests.admin.test_campaign_pages import NY, dial_clock, seed_box

pytestmark = [pytest.mark.browser, needs_browser]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[AdminServer, Agent, DiallerOps]]:
    root = tmp_path / "box"
    root.mkdir()
    server = start_admin(root)
    seed_box(root, server.settings_path)
    agent = Agent(server.settings_path).start()
    ops = serve_outbound(agent, dial_clock)
    try:
        yield server, agent, ops
    finally:
        stop_outbound(agent, ops)
        agent.close()
        stop_admin(server)


def test_propose_review_sign_off_and_start_in_the_browser(box, new_page) -> None:  # noqa: ANN001
    server, agent, ops = box
    lead = server.make_user(Role.CONTACT_CENTRE_LEAD, username="lead")
    compliance = server.make_user(Role.COMPLIANCE_OFFICER, username="cco")
    owner = server.make_user(Role.OWNER, username="owner")

    page = new_page()
    browser_sign_in(page, server, *lead)
    page.click("nav a:has-text('Campaigns')")
    page.fill("#propose input[name=name]", "December reminders")
    page.fill("#propose input[name=days]", "2")
    page.fill("#propose textarea[name=reason]", "no-shows are up")
    page.click("#propose button[type=submit]")
    page.wait_for_url("**/campaigns/*")
    url = page.url
    assert page.inner_text("#proposed-appointments") == "3"
    assert page.inner_text("#counts [data-reason=dnc]") == "1"
    assert page.locator("#compliance-review form").count() == 0  # the proposer cannot review

    reviewer = new_page()
    browser_sign_in(reviewer, server, *compliance)
    reviewer.goto(url)
    assert reviewer.locator("#owner-signoff form").count() == 0
    assert reviewer.locator("#start form").count() == 0
    reviewer.fill("#compliance-review textarea[name=notes]", "consent sources checked")
    reviewer.click("#compliance-review button[value=approve]")
    reviewer.wait_for_load_state()
    assert "approved" in reviewer.inner_text("#compliance-review")

    boss = new_page()
    browser_sign_in(boss, server, *owner)
    boss.goto(url)
    assert ops.placer.invites == []
    boss.fill("#owner-signoff textarea[name=notes]", "go")
    boss.click("#owner-signoff button[value=approve]")
    boss.wait_for_load_state()
    assert "approved" in boss.inner_text("#campaign-state")
    boss.click("#start button[type=submit]")
    boss.wait_for_load_state()
    assert boss.inner_text("#jobs-queued") == "3"
    deadline = time.monotonic() + 10
    while boss.inner_text("#out-running") != "0":
        assert time.monotonic() < deadline, boss.inner_text("#outcomes")
        time.sleep(0.2)
        boss.reload()
    assert boss.inner_text("#out-placed") == "1"
    assert ops.placer.invites == [f"sip:{NY}@pbx.clinic.test"]
    refused = boss.inner_text("#out-refused")
    assert "dnc" in refused and "no-consent" in refused
    assert NY[2:] not in boss.content()

    kinds = {k for k, _ in agent.records()}
    deadline = time.monotonic() + 15
    while "AdminCampaignStarted" not in kinds and time.monotonic() < deadline:
        time.sleep(0.2)
        kinds = {k for k, _ in agent.records()}
    assert {
        "AdminCampaignProposed",
        "AdminCampaignReviewed",
        "AdminCampaignSignedOff",
        "AdminCampaignStarted",
        "AdminOutboundStarted",
    } <= kinds
