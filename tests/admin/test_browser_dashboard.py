"""The dashboard and a call's timeline drawn from real calls that sipp placed.

``appliance serve`` answers two sipp calls in which a real recorded speaker (OSR sentences from
``../shared/data/speech``) talks; then ``appliance admin`` runs on the same settings, and headless
Chromium signs in and reads the plots, the call list and a call's timeline. The timeline's
events come from the agent over the control socket; the transcript needs a PHI role and a
reason, and its view lands in the audit log.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.admin.rbac import Role
from appliance.audit.record import decode
from appliance.audit.store import connect, iter_records
from appliance.config import load_settings
from tests.admin.browser import browser_sign_in, free_port, launch_admin, needs_browser, stop_admin
from tests.conftest import speech_dir
from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import Pause, Play, render_uac_scenario, run_sipp, sipp_binary
from tests.e2e.speech import sentence_pcap

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    needs_browser,
    pytest.mark.skipif(sipp_binary() is None, reason="sipp is not installed"),
]


def _audit_kinds(settings_path: Path) -> list[tuple[str, dict[str, object]]]:
    settings = load_settings(settings_path)
    db = connect(settings.audit.db)
    try:
        return [(r.kind, dict(r.meta)) for r in (decode(d) for _, d in iter_records(db))]
    finally:
        db.conn.close()


def test_dashboard_and_timeline_from_calls_placed_by_sipp(tmp_path: Path, new_page) -> None:
    speech_dir()  # skips with a clear reason when ../shared/data/speech is absent
    work = tmp_path / "box"
    work.mkdir()
    agent = ApplianceProcess(
        work,
        sip_port=free_udp_port(),
        rtp_port=44600,
        extra_toml=f"[admin]\nport = {free_port()}\n",
    )
    agent.start()
    admin = None
    try:
        for i in (0, 1):
            pcap, _, _ = sentence_pcap(i, tmp_path / f"caller-{i}.pcap")
            steps = [Pause(8500), Play(str(pcap)), Pause(9000)]
            result = run_sipp(render_uac_scenario(steps=steps), agent.uri, timeout_s=60)
            assert result.returncode == 0, result.messages[-2000:]
        assert len(agent.wait_event("CallScored", count=2, timeout_s=60)) == 2
        call_ids = [str(e["call_id"]) for e in agent.events() if e["kind"] == "CallEnded"]

        admin = launch_admin(agent.config, work)
        name, secret = admin.make_user(Role.COMPLIANCE_OFFICER)
        page = new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        browser_sign_in(page, admin, name, secret)

        page.goto(admin.url + "/?bucket=hour")
        cards = page.locator(".card").all_inner_texts()
        calls_card = next(c for c in cards if c.startswith("Calls"))
        assert "2" in calls_card.split("\n")[1], cards
        charts = page.locator("figure svg.chart")
        assert charts.count() >= 5
        # The calls plot has a bar or point saying 2 calls in this hour; the latency plot has
        # points from the turns those calls had.
        calls_svg = charts.nth(0).inner_html()
        assert ": 2" in calls_svg, calls_svg[:2000]
        assert page.locator("figure svg.chart").nth(2).locator("circle").count() >= 1

        page.goto(admin.url + "/calls")
        rows = page.locator("table tbody tr")
        assert rows.count() == 2
        page.goto(admin.url + f"/calls/{call_ids[0]}")
        body = page.inner_text("main")
        assert "disclosure" in body.lower(), body[:3000]  # from the agent's audit records
        # The transcript: a PHI role, a stated reason, and the view on the audit record.
        page.fill("textarea[name=reason]", "compliance check of the disclosure wording")
        page.locator("textarea[name=reason]").locator("xpath=ancestor::form").locator(
            "button[type=submit]"
        ).click()
        page.wait_for_load_state()
        transcript = page.inner_text("main")
        agent_said = [e["text"] for e in agent.events() if e["kind"] == "AgentSpoke"]
        assert agent_said and agent_said[0][:30] in transcript
        views = [m for k, m in _audit_kinds(agent.config) if k == "AdminPhiViewed"]
        assert views and views[-1]["call_id"] == call_ids[0]
        assert not [e for e in errors if "Content Security Policy" in e], errors
    finally:
        if admin is not None:
            stop_admin(admin)
        assert agent.stop() == 0, agent.log()[-3000:]
