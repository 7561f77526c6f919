"""Dashboard, alert and call pages on the real app (TestClient), with a fake agent on the socket."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.admin.rbac import Role
from appliance.control import ControlError, ControlServer
from appliance.metrics.store import CallMetadataStore
from tests.admin.conftest import AdminEnv
from tests.unit.test_admin_queries import add_call

Client = Callable[..., TestClient]


@pytest.fixture
def seeded(admin_env: AdminEnv) -> float:
    """Three calls in the last hour in the agent's own metadata store; returns now."""
    now = time.time()
    store = CallMetadataStore(admin_env.settings.store.metadata_db)
    add_call(store, "call-a", now - 1800, [1.0, 1.4])
    add_call(store, "call-b", now - 1200, [2.0], outcome="transferred", contained=False,
             transfer_appropriate=True)  # fmt: skip
    add_call(store, "call-c", now - 600, [4.0, 6.0], scored=False)
    store.close()
    return now


class FakeAgent:
    """A real ControlServer on the admin's socket, answering like the agent would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status: dict[str, Any] = {"audit": {"failed": False}, "stages": {"stt": "ok"}}
        self.requests: list[tuple[str, dict[str, Any], str]] = []
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path)
        for op in ("status", "call.timeline", "call.transcript"):
            self.server.register(op, self._handler(op))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def _handler(self, op: str) -> Any:
        async def handle(args: dict[str, Any], actor: str) -> Any:
            self.requests.append((op, args, actor))
            if op == "status":
                return self.status
            if args.get("call_id") != "call-a":
                raise ControlError("not_found", "no such call")
            if op == "call.timeline":
                return {
                    "events": [
                        {"t": time.time() - 1799, "kind": "DisclosurePlayed", "meta": {}},
                        {
                            "t": time.time() - 1790,
                            "kind": "SlotFilled",
                            "meta": {"slot": "date_of_birth", "confirmed": True},
                        },  # fmt: skip
                        {
                            "t": time.time() - 1780,
                            "kind": "TransferResult",
                            "meta": {"ok": False, "status": 486},
                        },  # fmt: skip
                    ]
                }
            return {
                "turns": [{"t": time.time() - 1795, "speaker": "caller", "text": "SECRET-WORDS"}],
                "events": [{"kind": "SlotFilled", "value": "1990-01-02"}],
            }

        return handle

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def agent(admin_env: AdminEnv) -> Iterator[FakeAgent]:
    fake = FakeAgent(admin_env.settings.admin.control_socket)
    yield fake
    fake.close()


def test_viewer_sees_dashboard_but_no_calls(signed_in: Client, seeded: float) -> None:
    c = signed_in(Role.VIEWER)
    r = c.get("/")
    assert r.status_code == 200
    assert "<svg" in r.text and "Voice-to-voice" in r.text
    assert "no STT confidence column" in r.text
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
    assert s["stt_confidence"] is None
    assert len(api["series"]) == 48
    assert {a["rule"] for a in api["alerts"]} >= {"v2v_p90", "wer", "model_stage"}
    for bad in ("bucket=year", "window_hours=0", "window_hours=99999", "window_hours=x"):
        assert c.get(f"/api/dashboard/summary?{bad}").status_code == 422, bad


def test_alert_fires_on_load_and_is_listed_with_history(
    signed_in: Client, seeded: float, agent: FakeAgent
) -> None:
    c = signed_in(Role.OWNER)
    agent.status = {"audit": {"failed": True}, "stages": {"stt": "ok", "tts": "failed"}}
    r = c.get("/")
    assert "Audit log verification failing" in r.text and "firing" in r.text
    # 1 h window: 1.0 1.4 2.0 4.0 6.0 -> P90 6.0 > 3.5 (warning), P99 6.0 > 5 (alert)
    api = c.get("/api/dashboard/summary").json()
    firing = {a["rule"] for a in api["alerts"] if a["firing"]}
    assert firing == {"v2v_p90", "v2v_p99", "audit_verification", "model_stage"}
    agent.status = {"audit": {"failed": False}, "stages": {"stt": "ok", "tts": "ok"}}
    c.get("/")
    r = c.get("/dashboard/alerts?rule=audit_verification")
    assert r.status_code == 200
    assert r.text.count('<tr class="alert-') == 2  # fired, then cleared
    assert c.get("/dashboard/alerts?rule=nope").status_code == 422
    assert ("status", {}, f"user:{c.user.user.id}") in agent.requests  # type: ignore[attr-defined]


def test_call_list_search_and_paging(signed_in: Client, seeded: float) -> None:
    c = signed_in(Role.CONTACT_CENTRE_LEAD)
    r = c.get("/calls")
    assert r.status_code == 200 and "3 calls" in r.text
    assert r.text.index("call-c") < r.text.index("call-a")  # newest first
    assert "3/4 checks" in r.text or "4/4 checks" in r.text
    assert "1 call" in c.get("/calls?outcome=transferred").text
    assert "1 call" in c.get("/calls?outcome=unscored").text
    assert "0 calls" in c.get("/calls?q=zzz").text
    api = c.get("/api/calls?per_page=2").json()
    assert api["total"] == 3 and [x["call_id"] for x in api["calls"]] == ["call-c", "call-b"]
    api = c.get("/api/calls?per_page=2&page=2").json()
    assert [x["call_id"] for x in api["calls"]] == ["call-a"]
    for bad in ("page=0", "per_page=500", "outcome=great", "since=2025-13-01", "q=" + "x" * 200):
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
    signed_in: Client, seeded: float, agent: FakeAgent
) -> None:
    c = signed_in(Role.QUALITY_REVIEWER)
    r = c.get("/calls/call-a")
    assert r.status_code == 200
    assert 'name="reason"' in r.text and "SECRET-WORDS" not in r.text
    assert "SlotFilled" in r.text and "date_of_birth" in r.text and "TransferResult" in r.text
    assert "metadata-only" not in r.text
    # No CSRF token: refused; a blank reason: asked again, nothing fetched.
    assert c.post("/calls/call-a/transcript", data={"reason": "QA review"}).status_code == 403
    r = c.post("/calls/call-a/transcript", data={"csrf_token": c.csrf, "reason": "  "})
    assert r.status_code == 400 and "State why" in r.text
    assert not [q for q in agent.requests if q[0] == "call.transcript"]
    r = c.post(
        "/calls/call-a/transcript", data={"csrf_token": c.csrf, "reason": "QA   review of call"}
    )
    assert r.status_code == 200 and "SECRET-WORDS" in r.text
    op, args, actor = [q for q in agent.requests if q[0] == "call.transcript"][0]
    assert args == {"call_id": "call-a", "reason": "QA review of call"}
    assert actor == f"user:{c.user.user.id}"  # type: ignore[attr-defined]
    # A call the agent has no transcript for: the page says so, no error page.
    r = c.post(
        "/calls/call-b/transcript",
        data={"csrf_token": c.csrf, "reason": "QA review of a complaint"},
    )
    assert r.status_code == 200 and "no transcript" in r.text
