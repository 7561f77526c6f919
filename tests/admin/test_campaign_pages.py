"""Campaigns page: proposal with the gates' dry run, two-person sign-off, start, outcomes.

The real app (TestClient) against the real agent operations (``tests/admin/agent.py``): the
``outbound.*`` ops of ``appliance.app.outbound`` over a real dialler, the real TCPA gate and
real consent, DNC and outcome files; only the SIP side is a recorder of the INVITEs the gate
let through. The calendar is the demo calendar with three appointments tomorrow: one patient
with consent (New York), one without (Chicago), one on the DNC list (San Francisco). The
dialler's clock is tomorrow 17:00 UTC, inside the calling window of all three zones.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.admin.rbac import Role
from appliance.agent.calendar import seed_demo
from appliance.agent.calendar.schema import fmt
from appliance.config import load_settings
from appliance.control import ControlClient, ControlError
from appliance.policy.consent import ConsentStore
from appliance.policy.dnc import DncList
from tests.admin.agent import Agent, DiallerOps, serve_outbound, stop_outbound
from tests.admin.conftest import AdminEnv

R = Role
NY = "+12125550134"  # consent for reminders
CHICAGO = "+13125550134"  # no consent
SF = "+14155550134"  # consent, but on the DNC list
PATIENT_NAMES = ("Lopez", "Carter", "Brown", "Maria", "James", "Robert")


_T0 = time.monotonic()


def dial_clock() -> datetime:
    """Tomorrow 17:00 UTC (12:00 in New York, 11:00 in Chicago, 09:00 in San Francisco), running.

    The clock moves with real time (the dialler's rate limiter measures time by it).
    """
    start = datetime.combine(date.today() + timedelta(days=1), datetime.min.time(), UTC)
    return start.replace(hour=17) + timedelta(seconds=time.monotonic() - _T0)


def seed_box(root: Path, settings_path: Path) -> None:
    """The calendar, consent and DNC files the agent's dialler reads, and ``[outbound]`` on."""
    dropins = settings_path.with_name("appliance.toml.d")
    dropins.mkdir(exist_ok=True)
    (dropins / "40-outbound.toml").write_text(
        f"""[outbound]
enabled = true
trunk_uri = "sip:{{number}}@pbx.clinic.test"
caller_id = "+12125550100"
consent_db = "{root}/outbound/consent.sqlite"
dnc_db = "{root}/outbound/dnc.sqlite"
outcomes_db = "{root}/outbound/dialler.sqlite"
max_concurrent = 1
rate_per_minute = 60
"""
    )
    settings = load_settings(settings_path)
    (root / "outbound").mkdir(exist_ok=True)
    seed_demo(settings.scheduling.db, date.today()).close()
    tomorrow = fmt(datetime.combine(date.today() + timedelta(days=1), datetime.min.time()))
    conn = sqlite3.connect(settings.scheduling.db)
    with conn:
        conn.execute("UPDATE appointments SET start = ?, status = 'booked'", [tomorrow])
        conn.executemany(
            "INSERT INTO patient_details (patient_id, phone) VALUES (?, ?)",
            [("pat-demo-1", NY), ("pat-demo-2", CHICAGO), ("pat-demo-4", SF)],
        )
    conn.close()
    events: list[object] = []
    out = settings.outbound
    dnc = DncList(out.dnc_db, events.append)
    consent = ConsentStore(out.consent_db, events.append, dnc=dnc)
    for number in (NY, SF):
        consent.capture(number, "reminders", method="written", source="import", evidence="form")
    dnc.add_opt_out(SF, method="written", source="admin", evidence="asked at the desk")
    consent.close()
    dnc.close()


@pytest.fixture
def dialler(admin_env: AdminEnv) -> Iterator[tuple[Agent, DiallerOps]]:
    seed_box(admin_env.root, admin_env.settings_path)
    agent = Agent(admin_env.settings_path).start()
    ops = serve_outbound(agent, dial_clock)
    yield agent, ops
    stop_outbound(agent, ops)
    agent.close()


def _propose(c: TestClient, name: str = "December reminders", days: int = 2) -> str:
    r = c.post(
        "/campaigns",
        data={
            "name": name,
            "days": str(days),
            "scope": "reminders",
            "reason": "no-shows",
            "csrf_token": c.csrf,  # type: ignore[attr-defined]
        },
    )
    assert r.status_code == 303, r.text
    return str(r.headers["location"])


def _step(c: TestClient, url: str, step: str, decision: str = "approve") -> int:
    data = {"decision": decision, "notes": f"{step} ok", "csrf_token": c.csrf}  # type: ignore[attr-defined]
    return c.post(f"{url}/{step}", data=data).status_code


def _wait(agent: Agent, kinds: set[str], timeout: float = 10.0) -> list[tuple[str, dict]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = agent.records()
        if kinds <= {k for k, _ in records}:
            return records
        time.sleep(0.1)
    return agent.records()


def _no_phi(html: str) -> None:
    for number in (NY, CHICAGO, SF):
        assert number[2:] not in html.replace("-", "").replace(" ", ""), "a number on the page"
    for name in PATIENT_NAMES:
        assert name not in html, f"a patient name on the page: {name}"


def test_roles_on_the_campaign_steps(signed_in, dialler) -> None:  # noqa: ANN001
    viewer = signed_in(R.VIEWER)
    assert viewer.get("/campaigns").status_code == 200
    assert 'id="propose"' not in viewer.get("/campaigns").text
    for role in (R.VIEWER, R.QUALITY_REVIEWER, R.COMPLIANCE_OFFICER, R.PLATFORM_ENGINEER):
        c = signed_in(role)
        r = c.post(
            "/campaigns",
            data={"name": "x", "days": "2", "reason": "r", "csrf_token": c.csrf},
        )
        assert r.status_code == 403, role
    lead = signed_in(R.CONTACT_CENTRE_LEAD)
    url = _propose(lead)
    assert _step(lead, url, "review") == 403  # no compliance_review
    assert _step(viewer, url, "review") == 403
    owner = signed_in(R.OWNER)
    assert _step(owner, url, "signoff") == 409  # the review comes first
    cco = signed_in(R.COMPLIANCE_OFFICER)
    assert _step(cco, url, "signoff") == 403  # no sign_off
    assert cco.post(f"{url}/start", data={"csrf_token": cco.csrf}).status_code == 403
    # No CSRF token: refused before any rule runs.
    assert cco.post(f"{url}/review", data={"decision": "approve", "notes": "n"}).status_code == 403
    assert dialler[1].placer.invites == []


def test_the_proposal_shows_the_gates_dry_run_and_no_phi(signed_in, dialler) -> None:  # noqa: ANN001
    agent, ops = dialler
    lead = signed_in(R.CONTACT_CENTRE_LEAD)
    url = _propose(lead)
    page = lead.get(url).text
    assert 'id="proposed-appointments">3<' in page
    assert 'data-reason="no-consent">1<' in page and 'data-reason="dnc">1<' in page
    assert "outside" not in page  # the dialler's clock is inside every zone's window
    _no_phi(page)
    viewer = signed_in(R.VIEWER)
    seen = viewer.get(url)
    assert seen.status_code == 200 and 'id="now-appointments">3<' in seen.text
    assert "no-shows" not in seen.text and "Proposed by" not in seen.text  # counts only
    _no_phi(seen.text)
    campaign = viewer.get("/api/campaigns").json()["campaigns"][0]
    assert campaign["preview"] == {"appointments": 3, "refused": {"dnc": 1, "no-consent": 1}}
    # The dry run dialled nothing and recorded no refusal for a dial never tried.
    assert ops.placer.invites == [] and ops.store.summary("admin-1") == {}
    kinds = {k for k, _ in _wait(agent, {"AdminCampaignProposed"})}
    assert "AdminOutboundStarted" not in kinds


def test_two_people_neither_the_proposer_then_start(signed_in, dialler) -> None:  # noqa: ANN001
    agent, ops = dialler
    proposer = signed_in(R.CONTACT_CENTRE_LEAD, R.COMPLIANCE_OFFICER)
    url = _propose(proposer)
    assert _step(proposer, url, "review") == 403  # the proposer cannot review
    both = signed_in(R.COMPLIANCE_OFFICER, R.OWNER)
    assert both.post(f"{url}/start", data={"csrf_token": both.csrf}).status_code == 409
    assert _step(both, url, "review") == 303
    assert _step(both, url, "review") == 409  # reviewed already
    assert _step(both, url, "signoff") == 403  # the reviewer cannot also sign off
    assert "Started" not in both.get(url).text
    # Nothing was queued before both sign-offs.
    assert ops.placer.invites == []
    assert "AdminOutboundStarted" not in {k for k, _ in agent.records()}
    owner = signed_in(R.OWNER)
    assert owner.post(f"{url}/start", data={"csrf_token": owner.csrf}).status_code == 409
    assert _step(owner, url, "signoff") == 303
    assert "approved" in owner.get(url).text
    assert ops.placer.invites == []  # signed off, not started yet

    assert owner.post(f"{url}/start", data={"csrf_token": owner.csrf}).status_code == 303
    assert owner.post(f"{url}/start", data={"csrf_token": owner.csrf}).status_code == 409
    deadline = time.monotonic() + 10
    while sum(ops.store.summary("admin-1").values()) != 3 or "" in ops.store.summary("admin-1"):
        assert time.monotonic() < deadline, ops.store.summary("admin-1")
        time.sleep(0.05)
    # The gate let one dial through; the other two were refused with no INVITE.
    assert ops.placer.invites == ["sip:+12125550134@pbx.clinic.test"]
    assert ops.store.summary("admin-1") == {
        "no-decision": 1,
        "refused:dnc": 1,
        "refused:no-consent": 1,
    }
    page = owner.get(url).text
    assert 'id="jobs-queued">3<' in page
    assert 'id="out-placed">1<' in page and 'id="out-answered">1<' in page
    assert 'id="out-running">0<' in page and 'id="out-opted-out">0<' in page
    assert 'data-reason="dnc">1<' in page and 'data-reason="no-consent">1<' in page
    _no_phi(page)
    viewer = signed_in(R.VIEWER)
    seen = viewer.get(url).text
    assert 'id="out-placed">1<' in seen and "signoff ok" not in seen
    _no_phi(seen)

    kinds = (
        "AdminCampaignProposed",
        "AdminCampaignReviewed",
        "AdminCampaignSignedOff",
        "AdminCampaignStarted",
        "AdminOutboundStarted",
    )
    records = _wait(agent, set(kinds))
    got = {k: m for k, m in records if k in kinds}
    assert set(got) == set(kinds), records
    assert [k for k, _ in records].count("AdminOutboundStarted") == 1  # one start only
    actors = {k: m["actor"] for k, m in got.items()}
    assert len({actors[k] for k in kinds[:3]}) == 3  # three different people
    assert actors["AdminOutboundStarted"] == actors["AdminCampaignStarted"]
    assert got["AdminOutboundStarted"]["campaign"] == "admin-1"
    assert got["AdminCampaignStarted"]["jobs"] == 3
    assert got["AdminCampaignProposed"]["appointments"] == 3
    assert got["AdminCampaignSignedOff"]["decision"] == "approved"
    text = json.dumps([m for _, m in records])
    assert "2125550134" not in text and "no-shows" not in text and "ok" not in text


def test_a_rejection_ends_the_campaign(signed_in, dialler) -> None:  # noqa: ANN001
    lead = signed_in(R.CONTACT_CENTRE_LEAD)
    url = _propose(lead, "rejected one")
    cco = signed_in(R.COMPLIANCE_OFFICER)
    assert _step(cco, url, "review", "reject") == 303
    owner = signed_in(R.OWNER)
    assert _step(owner, url, "signoff") == 409
    assert owner.post(f"{url}/start", data={"csrf_token": owner.csrf}).status_code == 409
    assert "rejected" in owner.get(url).text
    assert dialler[1].placer.invites == []


def test_bad_proposals_are_refused_and_lose_nothing(signed_in, dialler) -> None:  # noqa: ANN001
    lead = signed_in(R.CONTACT_CENTRE_LEAD)
    _propose(lead, "first")
    for data, status in (
        ({"name": "first", "days": "2"}, 422),  # the name is taken
        ({"name": "<script>", "days": "2"}, 422),
        ({"name": "too far", "days": "15"}, 422),
        ({"name": "none ahead", "days": "0"}, 422),
        ({"name": "billing", "days": "2", "scope": "billing"}, 422),
        ({"name": "no reason", "days": "2", "reason": " "}, 422),
    ):
        body = {"reason": "why", "scope": "reminders", **data, "csrf_token": lead.csrf}
        r = lead.post("/campaigns", data=body)
        assert r.status_code == status, (data, r.status_code)
        assert 'role="alert"' in r.text
    assert [c["name"] for c in lead.get("/api/campaigns").json()["campaigns"]] == ["first"]
    assert lead.get("/campaigns/99").status_code == 404


def test_no_dialler_on_the_agent_no_campaign(signed_in, admin_env: AdminEnv) -> None:  # noqa: ANN001
    """Outbound off on the agent (no ``outbound.*`` ops): the proposal is refused, not faked."""
    agent = Agent(admin_env.settings_path).start()
    try:
        lead = signed_in(R.CONTACT_CENTRE_LEAD)
        r = lead.post(
            "/campaigns",
            data={"name": "n", "days": "2", "reason": "r", "csrf_token": lead.csrf},
        )
        assert r.status_code == 503 and "dialler" in r.text
        assert lead.get("/api/campaigns").json()["campaigns"] == []
    finally:
        agent.close()


def test_the_preview_op_refuses_bad_days_and_records_nothing(dialler) -> None:  # noqa: ANN001
    """``outbound.preview`` on the control socket itself, as the page calls it."""
    agent, ops = dialler
    client = ControlClient(agent.server.settings.admin.control_socket, timeout=5.0)
    for days in (0, 15, "2", True, None):
        with pytest.raises(ControlError) as refused:
            client.call("outbound.preview", {"days": days}, "user:1")
        assert refused.value.code == "bad_request", days
    assert client.call("outbound.preview", {"days": 2}, "user:1") == {
        "appointments": 3,
        "refused": {"dnc": 1, "no-consent": 1},
    }
    assert client.call("outbound.preview", {"days": 1}, "user:1")["appointments"] == 3
    assert ops.placer.invites == [] and agent.records("AdminOutbound") == []
