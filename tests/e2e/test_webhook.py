"""Unit tests of the webhook receiver used by the end-to-end tests (no appliance needed)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.webhook import WebhookReceiver


def _post(
    url: str, payload: object, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> int:
    data = json.dumps(payload).encode()
    req = urllib.request.Request(  # noqa: S310 - local test server
        url,
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_records_json_bodies_and_headers() -> None:
    with WebhookReceiver() as hook:
        assert hook.url.startswith("http://127.0.0.1:") and hook.url.endswith("/")
        payload = {"event": "call.ended", "n": 1}
        assert _post(hook.url + "events", payload, headers={"X-Signature": "abc"}) == 200
        req = urllib.request.Request(hook.url, data=b"not json", method="POST")  # noqa: S310
        urllib.request.urlopen(req, timeout=5).close()  # noqa: S310
        first, second = hook.wait(2, timeout=5)
    assert first["method"] == "POST" and first["path"] == "/events"
    assert first["json"] == {"event": "call.ended", "n": 1}
    assert first["headers"]["content-type"] == "application/json"
    assert first["headers"]["x-signature"] == "abc"
    assert first["status"] == 200
    assert second["json"] is None and second["body"] == "not json"
    assert hook.json_bodies() == [{"event": "call.ended", "n": 1}, None]


def test_fails_first_requests_then_succeeds() -> None:
    with WebhookReceiver(fail_status=503, fail_count=2) as hook:
        codes = [_post(hook.url, {"attempt": i}) for i in range(3)]
        assert codes == [503, 503, 200]
        assert [r["status"] for r in hook.wait(3)] == [503, 503, 200]
    with WebhookReceiver(fail_status=500) as hook:
        assert [_post(hook.url, {}) for _ in range(2)] == [500, 500]


def test_wait_times_out_and_wakes_up_on_arrival() -> None:
    with WebhookReceiver() as hook:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="0 of 1"):
            hook.wait(1, timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        threading.Timer(0.1, _post, args=(hook.url, {"late": True})).start()
        (late,) = hook.wait(1, timeout=5)
    assert late["json"] == {"late": True}


def test_slow_answer_and_sender_timeout() -> None:
    with WebhookReceiver(delay_s=0.5) as hook:
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            _post(hook.url, {"slow": True}, timeout=0.1)
        (attempt,) = hook.wait(1, timeout=5)  # still recorded though the sender gave up
    assert attempt["json"] == {"slow": True}


def test_stop_closes_the_port() -> None:
    with WebhookReceiver() as hook:
        port = hook.port
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    with pytest.raises(RuntimeError, match="not started"):
        _ = WebhookReceiver().url
