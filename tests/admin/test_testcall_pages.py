"""Talk to the agent (``/testcall``): who may call, what is forwarded, what is audited.

The agent side here answers ``webrtc.offer`` with a real aiortc peer
(:class:`~appliance.pipeline.webrtc.WebRTCPeer`), and the offers come from a real aiortc
client; the whole call through ``appliance serve`` is ``tests/pipeline/test_webrtc.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from fastapi.testclient import TestClient

from appliance.admin.rbac import Role
from appliance.audio.bridge import AudioBridge
from appliance.control import ControlError, ControlServer
from appliance.pipeline.webrtc import WebRTCOfferError, WebRTCPeer

from .conftest import AdminEnv


class WebRTCAgent:
    """``webrtc.offer`` / ``webrtc.hangup`` answered with real aiortc peers on a control socket."""

    def __init__(self, env: AdminEnv) -> None:
        self.server = ControlServer(env.settings.admin.control_socket)
        self.server.register("webrtc.offer", self._offer)
        self.server.register("webrtc.hangup", self._hangup)
        self.peers: dict[str, WebRTCPeer] = {}
        self.actors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _offer(self, args: dict[str, Any], actor: str) -> dict[str, str]:
        self.actors.append(actor)
        peer = WebRTCPeer(AudioBridge(16000))
        try:
            sdp = await peer.answer(str(args["sdp"]))
        except WebRTCOfferError as exc:
            await peer.close()
            raise ControlError("bad_request", str(exc)) from exc
        call_id = uuid.uuid4().hex[:12]
        self.peers[call_id] = peer
        return {"sdp": sdp, "type": "answer", "call_id": call_id}

    async def _hangup(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        peer = self.peers.pop(str(args["call_id"]), None)
        if peer is None:
            raise ControlError("not_found", "no such test call")
        await peer.close()
        return {"call_id": args["call_id"], "ended": True}

    def __enter__(self) -> WebRTCAgent:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        for peer in list(self.peers.values()):
            asyncio.run_coroutine_threadsafe(peer.close(), self.loop).result(5)
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def agent(admin_env: AdminEnv) -> Iterator[WebRTCAgent]:
    with WebRTCAgent(admin_env) as running:
        yield running


def browser_offer() -> str:
    """An audio offer with its ICE candidates, made by a real aiortc client."""

    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        await pc.close()
        return sdp

    return asyncio.run(make())


def post_json(c: TestClient, path: str, body: dict[str, Any], csrf: bool = True) -> Any:
    headers = {"X-CSRF-Token": c.csrf} if csrf else {}  # type: ignore[attr-defined]
    return c.post(path, json=body, headers=headers)


def outbox(c: TestClient) -> list[tuple[str, dict[str, Any]]]:
    rows = c.app.state.ctx.db.execute("SELECT kind, meta FROM audit_outbox ORDER BY id")  # type: ignore[attr-defined]
    return [(k, json.loads(m)) for k, m in rows.fetchall()]


def test_viewer_cannot_place_a_test_call(signed_in: Callable[..., TestClient]) -> None:
    c = signed_in(Role.VIEWER)
    assert c.get("/testcall").status_code == 403
    r = post_json(c, "/api/testcall/offer", {"sdp": "v=0", "type": "offer"})
    assert r.status_code == 403
    assert post_json(c, "/api/testcall/hangup", {"call_id": "0" * 12}).status_code == 403


def test_signed_out_gets_login_or_401(client: TestClient) -> None:
    r = client.get("/testcall")
    assert r.status_code in (302, 303, 307) and "/login" in r.headers["location"]
    assert client.post("/api/testcall/offer", json={"sdp": "v=0"}).status_code == 401


def test_page_is_csp_clean_and_links_its_script(signed_in: Callable[..., TestClient]) -> None:
    c = signed_in(Role.CONTACT_CENTRE_LEAD)
    r = c.get("/testcall")
    assert r.status_code == 200
    html = r.text
    assert 'id="tc-start"' in html and 'id="tc-hangup"' in html and "<audio" in html
    assert '<script src="/static/testcall.js"' in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert not re.search(r"\sstyle=|\son[a-z]+=", html)
    assert 'href="/testcall"' in html  # in the navigation
    js = c.get("/static/testcall.js")
    assert js.status_code == 200 and "X-CSRF-Token" in js.text
    assert "iceGatheringState" in js.text  # non-trickle: the offer waits for all candidates
    assert c.get("/static/testcall.css").status_code == 200


def test_offer_needs_the_csrf_token(signed_in: Callable[..., TestClient]) -> None:
    c = signed_in(Role.OWNER)
    r = post_json(c, "/api/testcall/offer", {"sdp": browser_offer()}, csrf=False)
    assert r.status_code == 403


def test_malformed_requests_are_422(signed_in: Callable[..., TestClient]) -> None:
    c = signed_in(Role.OWNER)
    for body in ({"sdp": "", "type": "offer"}, {"sdp": "v=0", "type": "answer"}, {}):
        assert post_json(c, "/api/testcall/offer", body).status_code == 422
    huge = {"sdp": "a" * (64 * 1024 + 1)}
    assert post_json(c, "/api/testcall/offer", huge).status_code == 422
    for call_id in ("", "xyz", "0" * 13, "../../etc"):
        r = post_json(c, "/api/testcall/hangup", {"call_id": call_id})
        assert r.status_code == 422


def test_no_agent_is_503_and_audited(signed_in: Callable[..., TestClient]) -> None:
    c = signed_in(Role.OWNER)
    r = post_json(c, "/api/testcall/offer", {"sdp": browser_offer(), "type": "offer"})
    assert r.status_code == 503 and r.json()["error"] == "unavailable"
    records = [m for k, m in outbox(c) if k == "AdminTestCall"]
    assert [(m.get("call_id"), m["outcome"]) for m in records] == [(None, "refused_unavailable")]
    assert records[0]["actor"] == f"user:{c.user.user.id}"  # type: ignore[attr-defined]


def test_offer_and_hangup_through_the_control_socket(
    signed_in: Callable[..., TestClient], agent: WebRTCAgent
) -> None:
    c = signed_in(Role.QUALITY_REVIEWER)
    r = post_json(c, "/api/testcall/offer", {"sdp": browser_offer(), "type": "offer"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["type"] == "answer"
    assert "m=audio" in answer["sdp"] and "a=candidate:" in answer["sdp"]
    assert re.fullmatch(r"[0-9a-f]{12}", answer["call_id"])
    assert agent.actors == [f"user:{c.user.user.id}"]  # type: ignore[attr-defined]

    # An offer the agent cannot answer comes back as 400, not 5xx.
    r = post_json(c, "/api/testcall/offer", {"sdp": "v=0\r\ns=-\r\n", "type": "offer"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"

    call_id = answer["call_id"]
    r = post_json(c, "/api/testcall/hangup", {"call_id": call_id})
    assert r.status_code == 200 and r.json() == {"call_id": call_id, "ended": True}
    assert post_json(c, "/api/testcall/hangup", {"call_id": call_id}).status_code == 404

    records = [m for k, m in outbox(c) if k == "AdminTestCall"]
    assert [(m.get("call_id"), m["outcome"]) for m in records] == [
        (call_id, "placed"),
        (None, "refused_bad_request"),
        (call_id, "hung_up"),
    ]
    assert not any("sdp" in json.dumps(m) for m in records)  # no SDP (addresses) in the audit
