"""The push of signed checkpoints to ``[audit] witness_url``, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.app.witness import WitnessPush, checkpoint_if_grown, checkpoint_loop
from appliance.audit.checkpoint import open_note
from appliance.audit.observer import AuditObserver
from appliance.audit.service import KEY_NAME, open_audit, read_public_key
from appliance.audit.store import AuditLog, Entry
from appliance.config import load_settings
from appliance.config.settings import AuditSettings


class _Witness(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str]]
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length).decode("utf-8")
        type(self).received.append((self.headers["Content-Type"], body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture()
def witness() -> Iterator[tuple[str, type[_Witness]]]:
    handler = type("Handler", (_Witness,), {"received": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/checkpoints", handler
    server.shutdown()
    server.server_close()


def _settings(tmp_path: Path, url: str = "") -> AuditSettings:
    path = tmp_path / "appliance.toml"
    lines = [
        "[audit]",
        'db = "audit/audit.sqlite"',
        'kek_file = "keys/kek"',
        'signing_key_file = "keys/signing.key"',
        'checkpoint_file = "audit/checkpoints.log"',
        'origin = "test/audit"',
        "checkpoint_interval_s = 0.05",
        f'witness_url = "{url}"',
        "",
    ]
    path.write_text("\n".join(lines))
    return load_settings(path).audit


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/checkpoints"  # nothing listens there any more


def _grow(log: AuditLog, n: int = 1) -> None:
    for i in range(n):
        log.append([Entry("ConfigChanged", meta={"n": i})])


def test_each_new_signed_note_reaches_the_witness_once(
    tmp_path: Path, witness: tuple[str, type[_Witness]]
) -> None:
    url, handler = witness
    settings = _settings(tmp_path, url)
    log = open_audit(settings)
    public = read_public_key(settings.signing_key_file.with_suffix(".pub"))
    first = log.checkpoint()
    push = WitnessPush(url, settings.checkpoint_file)
    assert push.push_new() == 1
    _grow(log, 2)
    second = log.checkpoint()
    assert push.push_new() == 1
    assert push.push_new() == 0  # nothing new
    sizes = [open_note(body, public, KEY_NAME).size for _, body in handler.received]
    assert sizes == [first.size, second.size]
    assert all(ctype == "text/plain; charset=utf-8" for ctype, _ in handler.received)
    # A restart remembers what the witness already has.
    assert WitnessPush(url, settings.checkpoint_file).push_new() == 0
    log.close()


def test_a_dead_witness_does_not_raise_and_is_retried(
    tmp_path: Path, witness: tuple[str, type[_Witness]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = witness
    settings = _settings(tmp_path)
    log = open_audit(settings)
    log.checkpoint()
    log.close()
    note = settings.checkpoint_file.read_text()
    dead = WitnessPush(_dead_url(), settings.checkpoint_file, timeout=2.0)
    with caplog.at_level(logging.WARNING):
        assert dead.push_new() == 0
    assert "witness push failed" in caplog.text
    assert "test/audit" not in caplog.text and "127.0.0.1" not in caplog.text
    assert note.splitlines()[0] not in caplog.text
    # Refused by the witness (HTTP 503): not counted as received either.
    handler.status = 503
    refused = WitnessPush(url, settings.checkpoint_file)
    assert refused.push_new() == 0 and len(handler.received) == 1
    handler.status = 200
    assert refused.push_new() == 1  # the same note again, next time


def test_checkpoint_only_when_the_log_grew(tmp_path: Path) -> None:
    log = open_audit(_settings(tmp_path))
    size = checkpoint_if_grown(log)
    assert size == log.size
    assert checkpoint_if_grown(log) is None
    _grow(log)
    assert checkpoint_if_grown(log) == log.size
    log.close()


def test_the_loop_signs_and_pushes(tmp_path: Path, witness: tuple[str, type[_Witness]]) -> None:
    url, handler = witness
    settings = _settings(tmp_path, url)
    observer = AuditObserver(open_audit(settings), checkpoint_on_call_end=False)

    async def run() -> None:
        task = asyncio.create_task(checkpoint_loop(observer, settings))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if handler.received:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    observer.close()
    observer.log.close()
    assert handler.received, "the loop pushed no checkpoint"
    public = read_public_key(settings.signing_key_file.with_suffix(".pub"))
    assert open_note(handler.received[0][1], public, KEY_NAME).size >= 1
