"""Dashboard, alert and call pages on the real app (TestClient), with the real agent operations.

The agent side is ``tests.admin.agent.Agent``: a real (not started) ``ApplianceServer`` with
its audit log open and the real control operations on the admin's socket. Call data reaches
its audit log the way it does on a call: real events through its own ``AuditObserver``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from appliance.admin.alerts import AlertStore
from appliance.admin.rbac import Role
from appliance.events import (
    AgentSpoke,
    CallAnswered,
    CallEnded,
    CallOffered,
    DisclosurePlayed,
    Event,
    SlotFilled,
    TransferResult,
    TurnEnded,
)
from appliance.metrics.store import CallMetadataStore
from tests.admin.agent import Agent
from tests.admin.conftest import AdminEnv
from tests.unit.test_admin_queries import add_call

Client = Callable[..., TestClient]


@pytest.fixture
def seeded(admin_env: AdminEnv) -> float:
    """Three calls in the last hour in the agent's own metadata store; returns now.

    STT confidence on 4 of the 5 turns; call-b's transfer went through on the second REFER;
    call-a finished the FAQ, call-b reschedule (transferred).
    """
    now = time.time()
    store = CallMetadataStore(admin_env.settings.store.metadata_db)
    add_call(store, "call-a", now - 1800, [1.0, 1.4], confidence=[0.9, 0.35],
             workflows=[("faq", "resolved")])  # fmt: skip
    add_call(store, "call-b", now - 1200, [2.0], outcome="transferred", contained=False,
             transfer_appropriate=True, confidence=[0.7],
             transfers=[("attended", False, 480), ("attended", True, 200)],
             workflows=[("reschedule", "transferred")])  # fmt: skip
    add_call(store, "call-c", now - 600, [4.0, 6.0], scored=False, confidence=[None, 0.8])
    store.close()
    return now


def call_a_events(now: float) -> list[Event]:
    """What call-a put on the audit bus: disclosure, a caller turn, a slot, a failed transfer."""
    at = now - 1800
    return [
        CallOffered("call-a", source_ip="10.0.0.5", t=at - 1),
        CallAnswered("call-a", codec="PCMU", t=at),
        DisclosurePlayed("call-a", started=at, text="Hi, this is an automated system.", t=at + 1),
        TurnEnded("call-a", user_text="SECRET-WORDS", t=at + 5),
        SlotFilled(
            "call-a",
            workflow="reschedule",
            slot="date_of_birth",
            value="1990-01-02",
            confidence=0.93,
            confirmed=True,
            t=at + 10,
        ),
        AgentSpoke(
            "call-a",
            text="Let me put you through.",
            interrupted=False,
            source="template",
            t=at + 12,
        ),  # fmt: skip
        TransferResult("call-a", handoff_id="h-1", ok=False, status=486, t=at + 20),
        CallEnded("call-a", disposition="transferred", duration_s=60.0, t=at + 60),
    ]


def feed(agent: Agent, events: list[Event]) -> None:
    """Events through the agent's audit observer, as its event bus delivers them; written."""
    observer = agent.server.audit
    assert observer is not None
    for event in events:
        observer(event)
    assert observer.flush()


@pytest.fixture
def agents(admin_env: AdminEnv) -> Iterator[Callable[[], Agent]]:
    """Starts the agent (again, after a restart); every one started is closed at the end.

    Tests name it before ``signed_in``, so the agent outlives the admin's clients.
    """
    started: list[Agent] = []

    def start() -> Agent:
        started.append(Agent(admin_env.settings_path).start())
        return started[-1]

    yield start
    for a in started:
        a.close()


@pytest.fixture
def agent(agents: Callable[[], Agent], seeded: float) -> Agent:
    """The agent with call-a's records on its audit log."""
    a = agents()
    feed(a, call_a_events(seeded))
    return a


def phi_views(agent: Agent) -> list[tuple[str, str, str]]:
    """``(call_id, reason, actor)`` of each ``AdminPhiViewed`` record, the reason decrypted."""
    assert agent.server.audit is not None
    records = agent.server.audit.log.call_records("", decrypt=True)
    return [
        (r["meta"]["call_id"], r["content"]["reason"], r["meta"]["actor"])
        for r in records
        if r["kind"] == "AdminPhiViewed"
    ]


def break_audit_log(agent: Agent) -> int:
    """A record goes missing under the agent (a row past the end): its next write fails closed.

    Returns:
        The index of the stray row.
    """
    db = sqlite3.connect(agent.server.settings.audit.db)
    with db:
        (end,) = db.execute("SELECT MAX(idx) FROM records").fetchone()
        db.execute(
            "INSERT INTO records (idx, data, root) SELECT ?, data, root FROM records WHERE idx = 0",
            [end + 2],
        )
    db.close()
    feed(agent, [CallOffered("call-d", source_ip="10.0.0.5")])
    assert agent.server.audit is not None and not agent.server.audit.healthy
    return end + 2


def repair_audit_log(env: AdminEnv, stray: int) -> None:
    db = sqlite3.connect(env.settings.audit.db)
    with db:
        db.execute("DELETE FROM records WHERE idx = ?", [stray])
    db.close()


def test_viewer_sees_dashboard_but_no_calls(signed_in: Client, seeded: float) -> None:
    c = signed_in(Role.VIEWER)
    r = c.get("/")
    assert r.status_code == 200
    assert "<svg" in r.text and "Voice-to-voice" in r.text
    assert "STT confidence P50" in r.text and "25.0% of 4 turns below 0.5" in r.text
    assert "no STT confidence column" not in r.text
    assert "attended 1/2" in r.text  # warm-transfer success from the transfer results
    assert "Transfer success is per transfer" in r.text
    assert "The agent is not reachable" in r.text
    for url in ("/calls", "/calls/call-a", "/api/calls", "/calls?page=2"):
        assert c.get(url).status_code == 403, url
    r = c.post("/calls/call-a/transcript", data={"csrf_token": c.csrf, "reason": "audit check"})
    assert r.status_code == 403
    assert 'href="/calls"' not in r.text


def test_signed_out_gets_login_or_401(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.get("/api/dashboard/summary").status_code == 401
    assert client.get("/api/calls").status_code == 401


def test_dashboard_without_metrics_db(signed_in: Client) -> None:
    r = signed_in(Role.OWNER).get("/?bucket=week")
    assert r.status_code == 200 and "No call figures" in r.text


def test_dashboard_figures_buckets_and_validation(signed_in: Client, seeded: float) -> None:
    c = signed_in(Role.OWNER)
    for bucket in ("hour", "day", "week"):
        r = c.get(f"/?bucket={bucket}")
        assert r.status_code == 200 and r.text.count("<svg") >= 6
        assert "style=" not in r.text and "<script" not in r.text
    assert c.get("/?bucket=month").status_code == 422
    api = c.get("/api/dashboard/summary?bucket=hour").json()
    assert api["available"] is True
    s = api["summary"]
    assert s["calls"] == 3 and s["scored"] == 2
    assert s["containment_rate"] == 0.5 and s["transfer_success_rate"] == 1.0
    # 1.0 1.4 2.0 4.0 6.0: nearest-rank P50 2.0, P90 6.0
    assert s["latency"] == {"turns": 5, "p50": 2.0, "p90": 6.0, "p99": 6.0}
    # 0.9 0.35 0.7 0.8 -> nearest-rank P50 0.7; one of four below 0.5
    assert s["stt_confidence"] == {"turns": 4, "p50": 0.7, "low_share": 0.25}
    assert s["transfer"]["source"] == "transfer_results"
    assert (s["transfer"]["transfers"], s["transfer"]["success_rate"]) == (2, 0.5)
    assert (
        api["series"][-1]["stt_confidence"]["turns"] + api["series"][-2]["stt_confidence"]["turns"]
        == 4
    )  # the last hour's turns fall in the last two hour buckets
    assert len(api["series"]) == 48
    assert {a["rule"] for a in api["alerts"]} >= {"v2v_p90", "wer", "model_stage"}
    for bad in ("bucket=year", "window_hours=0", "window_hours=99999", "window_hours=x"):
        assert c.get(f"/api/dashboard/summary?{bad}").status_code == 422, bad


def test_alert_fires_on_load_and_is_listed_with_history(
    agents: Callable[[], Agent], signed_in: Client, seeded: float, admin_env: AdminEnv
) -> None:
    c = signed_in(Role.OWNER)
    agent = agents()
    stray = break_audit_log(agent)  # the agent's status now reports audit failed, stage failed
    r = c.get("/")
    assert "Audit log verification failing" in r.text and "firing" in r.text
    # 1 h window: 1.0 1.4 2.0 4.0 6.0 -> P90 6.0 > 3.5 (warning), P99 6.0 > 5 (alert)
    api = c.get("/api/dashboard/summary").json()
    firing = {a["rule"] for a in api["alerts"] if a["firing"]}
    # call-b's first REFER failed: 1 of 2 transfer results (the scores alone would say 0%).
    assert firing == {
        "v2v_p90", "v2v_p99", "transfer_failures", "audit_verification", "model_stage"
    }  # fmt: skip
    # The failing stage named is the one the agent reported.
    history = AlertStore(Path(c.app.state.ctx.db_path)).history(rule="model_stage")  # type: ignore[attr-defined]
    assert history[0]["state"] == "fired" and history[0]["detail"] == "audit"
    # The log is mended and the agent restarted: its status is healthy again.
    agent.close()
    repair_audit_log(admin_env, stray)
    agents()
    c.get("/")
    r = c.get("/dashboard/alerts?rule=audit_verification")
    assert r.status_code == 200
    assert r.text.count('<tr class="alert-') == 2  # fired, then cleared
    assert c.get("/dashboard/alerts?rule=nope").status_code == 422


def test_call_list_search_and_paging(signed_in: Client, seeded: float) -> None:
    c = signed_in(Role.CONTACT_CENTRE_LEAD)
    r = c.get("/calls")
    assert r.status_code == 200 and "3 calls" in r.text
    assert r.text.index("call-c") < r.text.index("call-a")  # newest first
    assert "3/4 checks" in r.text or "4/4 checks" in r.text
    assert "1 call" in c.get("/calls?outcome=transferred").text
    assert "reschedule: transferred" in r.text and "faq: resolved" in r.text  # workflow column
    assert "not recorded" not in r.text
    r = c.get("/calls?workflow=reschedule")
    assert "1 call" in r.text and "call-b" in r.text and "call-a" not in r.text
    assert '<option value="faq"' in r.text
    api = c.get("/api/calls?workflow=faq").json()
    assert [x["call_id"] for x in api["calls"]] == ["call-a"]
    assert api["calls"][0]["workflows"] == [{"workflow": "faq", "outcome": "resolved"}]
    assert "1 call" in c.get("/calls?outcome=unscored").text
    assert "0 calls" in c.get("/calls?q=zzz").text
    api = c.get("/api/calls?per_page=2").json()
    assert api["total"] == 3 and [x["call_id"] for x in api["calls"]] == ["call-c", "call-b"]
    api = c.get("/api/calls?per_page=2&page=2").json()
    assert [x["call_id"] for x in api["calls"]] == ["call-a"]
    for bad in ("page=0", "per_page=500", "outcome=great", "since=2025-13-01", "q=" + "x" * 200,
                "workflow=a%20b", "workflow=" + "w" * 65):  # fmt: skip
        assert c.get(f"/api/calls?{bad}").status_code == 422, bad


def test_timeline_without_agent_is_metadata_only(signed_in: Client, seeded: float) -> None:
    c = signed_in(Role.CONTACT_CENTRE_LEAD)
    r = c.get("/calls/call-a")
    assert r.status_code == 200
    assert "metadata-only timeline" in r.text and "Turn 2" in r.text
    assert 'name="reason"' not in r.text  # no PHI access: no transcript form
    assert c.get("/calls/nope").status_code == 404
    assert c.get("/calls/bad%20id").status_code == 422
    r = c.post("/calls/call-a/transcript", data={"csrf_token": c.csrf, "reason": "need it"})
    assert r.status_code == 403


def test_reviewer_opens_transcript_for_a_reason(
    agent: Agent, signed_in: Client, seeded: float
) -> None:
    c = signed_in(Role.QUALITY_REVIEWER)
    r = c.get("/calls/call-a")
    assert r.status_code == 200
    assert 'name="reason"' in r.text and "SECRET-WORDS" not in r.text
    assert "SlotFilled" in r.text and "date_of_birth" in r.text and "TransferResult" in r.text
    assert "1990-01-02" not in r.text  # the slot's value is sealed content, not timeline meta
    assert "metadata-only" not in r.text
    # No CSRF token: refused; a blank reason: asked again, nothing fetched.
    assert c.post("/calls/call-a/transcript", data={"reason": "QA review"}).status_code == 403
    r = c.post("/calls/call-a/transcript", data={"csrf_token": c.csrf, "reason": "  "})
    assert r.status_code == 400 and "State why" in r.text
    assert not phi_views(agent)
    r = c.post(
        "/calls/call-a/transcript", data={"csrf_token": c.csrf, "reason": "QA   review of call"}
    )
    assert r.status_code == 200 and "SECRET-WORDS" in r.text
    assert "Let me put you through." in r.text
    # The agent put the view on its audit log: who, which call, and why (sealed).
    assert phi_views(agent) == [("call-a", "QA review of call", f"user:{c.user.user.id}")]  # type: ignore[attr-defined]
    # A call the agent has no transcript for: the page says so, no error page.
    r = c.post(
        "/calls/call-b/transcript",
        data={"csrf_token": c.csrf, "reason": "QA review of a complaint"},
    )
    assert r.status_code == 200 and "no transcript" in r.text
