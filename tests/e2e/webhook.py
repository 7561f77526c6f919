"""A tiny HTTP server on 127.0.0.1 that records webhook deliveries for end-to-end tests.

Usage::

    with WebhookReceiver() as hook:
        ...  # configure the appliance to POST to hook.url, place a call
        (delivery,) = hook.wait(1, timeout=10)
        assert delivery["json"]["event"] == "call.ended"
        assert delivery["headers"]["content-type"] == "application/json"

It can fail on purpose (``fail_status``, for the first ``fail_count`` requests or all of them)
and answer slowly (``delay_s``) to exercise the sender's retries and timeouts. Every request is
recorded, failed ones included, so tests can count delivery attempts.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    """Records HTTP requests (JSON bodies) on 127.0.0.1; a context manager.

    Attributes:
        fail_status: Answer with this status instead of ``ok_status`` (None: never fail).
        fail_count: How many requests get ``fail_status`` before it answers ``ok_status``
            (None: all of them).
        ok_status: The status of a successful delivery.
        delay_s: Wait this long before answering each request.
        requests: One dict per request received, in order: "method", "path", "headers"
            (lower-case names), "body" (raw text), "json" (the parsed body, or None if it is
            not JSON), "status" (the answer), "time" (``time.monotonic()`` at arrival) and
            "answered" (False while the answer is still being sent, e.g. during ``delay_s``).
    """

    def __init__(
        self,
        *,
        fail_status: int | None = None,
        fail_count: int | None = None,
        ok_status: int = 200,
        delay_s: float = 0.0,
    ) -> None:
        self.fail_status = fail_status
        self.fail_count = fail_count
        self.ok_status = ok_status
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("WebhookReceiver is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. "http://127.0.0.1:40123/" (any path is accepted)."""
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> WebhookReceiver:
        """Bind a free port and serve in a daemon thread."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                receiver._handle(self)

            do_PUT = do_POST  # noqa: N815
            do_GET = do_POST  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` requests have arrived and been answered.

        Returns:
            A copy of the list of requests received so far.

        Raises:
            TimeoutError: Fewer than ``n`` arrived within ``timeout`` seconds.
        """
        with self._cond:

            def answered() -> int:
                return sum(1 for r in self.requests if r["answered"])

            if not self._cond.wait_for(lambda: answered() >= n, timeout=timeout):
                raise TimeoutError(f"{answered()} of {n} webhook requests arrived in {timeout} s")
            return list(self.requests)

    def json_bodies(self) -> list[Any]:
        """The parsed JSON bodies received so far, in order."""
        with self._cond:
            return [r["json"] for r in self.requests]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        text = raw.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        with self._cond:
            failing = self.fail_status is not None and (
                self.fail_count is None or len(self.requests) < self.fail_count
            )
            status = self.fail_status if failing else self.ok_status
            record = {
                "method": handler.command,
                "path": handler.path,
                "headers": {k.lower(): v for k, v in handler.headers.items()},
                "body": text,
                "json": parsed,
                "status": status,
                "time": time.monotonic(),
                "answered": False,
            }
            self.requests.append(record)  # in order of arrival
        if self.delay_s:
            time.sleep(self.delay_s)
        reply = json.dumps({"ok": not failing}).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(reply)))
            handler.end_headers()
            handler.wfile.write(reply)
        except OSError:
            pass  # the sender gave up (its timeout); the attempt still counts
        with self._cond:
            record["answered"] = True
            self._cond.notify_all()
