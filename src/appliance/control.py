"""The local control socket between ``appliance admin`` and ``appliance serve``.

The admin page runs in its own process with fewer privileges and never shares the agent's
address space (shared/ARCHITECTURE.md, "appliance admin"). What it needs from the agent (its
live state, an audit record appended with the agent's keys, a transcript opened for a stated
reason, a knowledge-base preview, a browser test call) goes over this socket.

Protocol: a Unix stream socket; one request per connection, each a single line of UTF-8 JSON
(at most :data:`MAX_MESSAGE` bytes) answered by a single line:

- request: ``{"op": "status", "args": {...}, "actor": "user:7"}``
- answer: ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "code": "not_found", "error": "no call abc"}``

``code`` is one of :data:`ERROR_CODES`. ``actor`` names who asked (``"user:<id>"`` for a
signed-in administrator, ``"service:<name>"`` otherwise) so that the agent can put it in the
audit records it writes. The socket file is created with mode 0660: only the agent's user and
the admin group can connect; nothing listens on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

_LOGGER = logging.getLogger(__name__)

#: Largest request or answer line, bytes (a transcript or an SDP fits easily).
MAX_MESSAGE = 4 * 1024 * 1024
#: Error codes an answer may carry.
ERROR_CODES = ("bad_request", "unknown_op", "not_found", "forbidden", "unavailable", "internal")

Handler = Callable[[dict[str, Any], str], Awaitable[Any]]


class ControlError(ApplianceError):
    """A control request failed: ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code if code in ERROR_CODES else "internal"
        self.args = (message,)  # str(exc) is the message alone, as answers carry it


class ControlClient:
    """Blocking client: one connection per :meth:`call`.

    Args:
        path: The socket file, e.g. ``/run/appliance/control.sock``.
        timeout: Seconds for connect, send and answer together.
    """

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(
        self, op: str, args: dict[str, Any] | None = None, actor: str = "", timeout: float = 0.0
    ) -> Any:
        """Send one request and return its ``result``.

        Raises:
            ControlError: ``unavailable`` when the agent cannot be reached or does not answer in
                time; otherwise the code the agent answered with.
        """
        request = json.dumps({"op": op, "args": args or {}, "actor": actor}).encode() + b"\n"
        if len(request) > MAX_MESSAGE:
            raise ControlError("bad_request", f"request too large ({len(request)} bytes)")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout or self.timeout)
                sock.connect(str(self.path))
                sock.sendall(request)
                data = bytearray()
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > MAX_MESSAGE:
                        raise ControlError("internal", "answer too large")
        except (OSError, TimeoutError) as exc:
            raise ControlError("unavailable", f"agent not reachable at {self.path}: {exc}") from exc
        try:
            answer = json.loads(bytes(data))
        except ValueError as exc:
            raise ControlError("internal", "malformed answer from the agent") from exc
        if not isinstance(answer, dict):
            raise ControlError("internal", "malformed answer from the agent")
        if answer.get("ok"):
            return answer.get("result")
        raise ControlError(str(answer.get("code", "internal")), str(answer.get("error", "")))

    async def acall(
        self, op: str, args: dict[str, Any] | None = None, actor: str = "", limit_s: float = 0.0
    ) -> Any:
        """:meth:`call` in a worker thread, for async callers (``limit_s``: its ``timeout``)."""
        return await asyncio.to_thread(self.call, op, args, actor, limit_s)


class ControlServer:
    """The agent's side: dispatches requests to registered async handlers.

    A handler gets ``(args, actor)`` and returns something JSON-able; it raises
    :class:`ControlError` for an answer with a code. Any other exception is answered as
    ``internal`` and logged with its type only (arguments may hold content).
    """

    def __init__(self, path: Path, mode: int = 0o660) -> None:
        self.path = Path(path)
        self.mode = mode
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None

    def register(self, op: str, handler: Handler) -> None:
        """Answer requests for ``op`` with ``handler``.

        Raises:
            ValueError: ``op`` is already registered.
        """
        if op in self._handlers:
            raise ValueError(f"control op {op!r} registered twice")
        self._handlers[op] = handler

    @property
    def ops(self) -> list[str]:
        """The registered operation names."""
        return sorted(self._handlers)

    async def start(self) -> None:
        """Listen on the socket file (replacing a stale one) with :attr:`mode`.

        Raises:
            OSError: The socket cannot be created.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o777 & ~self.mode)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_MESSAGE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def dispatch(self, request: Any) -> dict[str, Any]:
        """Answer one decoded request (also used by tests without a socket)."""
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "code": "bad_request", "error": "expected {op, args, actor}"}
        op = request["op"]
        args = request.get("args") or {}
        actor = str(request.get("actor") or "")
        if not isinstance(args, dict):
            return {"ok": False, "code": "bad_request", "error": "args must be an object"}
        handler = self._handlers.get(op)
        if handler is None:
            return {"ok": False, "code": "unknown_op", "error": f"unknown op {op!r}"}
        try:
            return {"ok": True, "result": await handler(args, actor)}
        except ControlError as exc:
            return {"ok": False, "code": exc.code, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the agent stays up; the admin gets an answer
            _LOGGER.error("control op %s failed: %s", op, type(exc).__name__)
            return {"ok": False, "code": "internal", "error": f"{op} failed"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), timeout=10.0)
                request = json.loads(line)
            except (ValueError, asyncio.LimitOverrunError, TimeoutError):
                answer: dict[str, Any] = {
                    "ok": False,
                    "code": "bad_request",
                    "error": "expected one line of JSON",
                }
            else:
                answer = await self.dispatch(request)
            writer.write(json.dumps(answer, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
