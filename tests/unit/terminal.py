"""A stand-in payment terminal: an HTTP server on 127.0.0.1 that records each POST.

Usage::

    with PaymentTerminal(status=200) as terminal:
        handler = LuhnHandoff(terminal.url)
        ...
        assert terminal.bodies == [{"handoff_id": "...", "pan": "...", "expiry": "...", ...}]
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PaymentTerminal:
    """Answers every POST with ``status``; ``bodies`` holds the parsed JSON bodies in order.

    Args:
        status: HTTP status of every answer.
    """

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[Any] = []
        self.content_types: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/pay`` (after entering the context)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/pay"

    def __enter__(self) -> PaymentTerminal:
        terminal = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                terminal.bodies.append(json.loads(self.rfile.read(length)))
                terminal.content_types.append(self.headers.get("Content-Type", ""))
                self.send_response(terminal.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # keep card numbers out of the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
