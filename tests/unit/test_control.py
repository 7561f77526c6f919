"""The control socket (appliance.control) and the agent's operations on it (app.control_ops).

The protocol is exercised over a real Unix socket in ``tmp_path``; the operations run against
a real ``ApplianceServer`` (not started: no models, no SIP) holding a real audit log with
keys made in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.app.control_ops import ControlOps, register_all, start_control
from appliance.app.server import ApplianceServer
from appliance.audit.observer import AuditObserver
from appliance.audit.record import decode
from appliance.audit.service import open_audit
from appliance.audit.store import CALL_ID_SQL, Entry, connect, iter_records
from appliance.config.settings import ApplianceSettings
from appliance.control import MAX_MESSAGE, ControlClient, ControlError, ControlServer
from appliance.errors import ConfigError
from appliance.events import CallEnded, CallOffered, Escalated
from appliance.models.manifest import load_manifest

STORE = Path(__file__).resolve().parents[2] / "models" / "store"
ACTOR = "user:7"
CALLER_SAID = "Hi, this is Maria Lopez, born March 4 1982, I need to move my appointment."
AGENT_SAID = "Of course. Which day would suit you better?"


# --- the protocol --------------------------------------------------------------------------


@pytest.fixture()
async def control(tmp_path: Path) -> AsyncIterator[ControlServer]:
    server = ControlServer(tmp_path / "run" / "control.sock")

    async def echo(args: dict[str, Any], actor: str) -> dict[str, Any]:
        return {"args": args, "actor": actor}

    async def broken(args: dict[str, Any], actor: str) -> None:
        raise RuntimeError("secret patient detail")

    async def coded(args: dict[str, Any], actor: str) -> None:
        raise ControlError("not_found", "no call abc")

    server.register("echo", echo)
    server.register("broken", broken)
    server.register("coded", coded)
    await server.start()
    yield server
    await server.close()


def _raw(path: Path, data: bytes) -> dict[str, Any]:
    """Send raw bytes and read one answer line (the sender runs in its own thread)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))

        def send() -> None:
            try:
                sock.sendall(data)
            except OSError:
                pass  # the server answered and hung up before reading everything

        sender = threading.Thread(target=send)
        sender.start()
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        sender.join(10)
    return json.loads(answer)


async def test_a_request_round_trips_with_its_actor(control: ControlServer) -> None:
    client = ControlClient(control.path)
    assert await client.acall("echo", {"n": 1}, actor=ACTOR) == {
        "args": {"n": 1},
        "actor": ACTOR,
    }


async def test_unknown_op_and_coded_errors_reach_the_client(control: ControlServer) -> None:
    client = ControlClient(control.path)
    with pytest.raises(ControlError) as unknown:
        await client.acall("nope")
    assert unknown.value.code == "unknown_op"
    with pytest.raises(ControlError) as coded:
        await client.acall("coded")
    assert (coded.value.code, str(coded.value)) == ("not_found", "no call abc")


async def test_a_failing_handler_answers_internal_without_its_message(
    control: ControlServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ControlError) as exc:
        await ControlClient(control.path).acall("broken")
    assert exc.value.code == "internal"
    assert "secret" not in str(exc.value) and "secret" not in caplog.text
    assert "RuntimeError" in caplog.text


async def test_bad_json_and_bad_shapes_are_bad_requests(control: ControlServer) -> None:
    for line in (b"not json\n", b"[1, 2]\n", b'{"op": "echo", "args": [1]}\n'):
        answer = await asyncio.to_thread(_raw, control.path, line)
        assert answer["ok"] is False and answer["code"] == "bad_request", line


async def test_an_oversized_request_is_refused(control: ControlServer) -> None:
    big = {"op": "echo", "args": {"x": "a" * MAX_MESSAGE}}
    with pytest.raises(ControlError) as exc:
        await ControlClient(control.path).acall("echo", big["args"])
    assert exc.value.code == "bad_request"  # refused by the client before sending
    raw = json.dumps(big).encode() + b"\n"
    answer = await asyncio.to_thread(_raw, control.path, raw)
    assert answer["code"] == "bad_request"  # and by the server when sent anyway


async def test_socket_mode_is_0660(control: ControlServer) -> None:
    assert stat.S_IMODE(control.path.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(control.path.stat().st_mode)


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens: a crashed agent's socket
    with pytest.raises(ControlError):
        ControlClient(path, timeout=1).call("status")
    server = ControlServer(path)

    async def ok(args: dict[str, Any], actor: str) -> str:
        return "ok"

    server.register("status", ok)
    await server.start()
    try:
        assert await ControlClient(path).acall("status") == "ok"
    finally:
        await server.close()
    assert not path.exists()


# --- the operations, on a real audit log --------------------------------------------------


def _settings(tmp_path: Path, **transfer: Any) -> ApplianceSettings:
    return ApplianceSettings.model_validate(
        {
            "audit": {
                "db": str(tmp_path / "audit" / "audit.sqlite"),
                "kek_file": str(tmp_path / "keys" / "kek"),
                "signing_key_file": str(tmp_path / "keys" / "signing.key"),
                "checkpoint_file": str(tmp_path / "audit" / "checkpoints.log"),
            },
            "store": {"metadata_db": str(tmp_path / "calls.sqlite")},
            "admin": {"control_socket": str(tmp_path / "run" / "control.sock")},
            "models": {"store": str(STORE)},
            "transfer": transfer,
        }
    )


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ApplianceServer]:
    """An ApplianceServer that was not started, with its audit log open (as after start)."""
    settings = _settings(tmp_path)
    srv = ApplianceServer(settings)
    log = open_audit(settings.audit)
    log.append(
        [
            Entry(kind="CallAnswered", call_id="c1", meta={"codec": "PCMU"}, t=100.0),
            Entry(kind="TurnEnded", call_id="c1", content={"user_text": CALLER_SAID}, t=101.0),
            Entry(kind="CallAnswered", call_id="c2", meta={"codec": "PCMA"}, t=101.5),
            Entry(
                kind="AgentSpoke",
                call_id="c1",
                meta={"interrupted": False, "source": "template"},
                content={"text": AGENT_SAID},
                t=102.0,
            ),
            Entry(kind="CallEnded", call_id="c1", meta={"disposition": "caller_hangup"}, t=103.0),
        ]
    )
    srv.audit = AuditObserver(log, checkpoint_on_call_end=False)
    yield srv
    srv.audit.close()
    srv.audit.log.close()


def _records(srv: ApplianceServer) -> list[Any]:
    assert srv.audit is not None
    db = connect(srv.settings.audit.db)
    try:
        return [decode(data) for _, data in iter_records(db)]
    finally:
        db.conn.close()


async def test_ops_are_registered_under_their_names(server: ApplianceServer) -> None:
    control = ControlServer(server.settings.admin.control_socket)
    register_all(server, control)
    assert control.ops == sorted(
        [
            "status",
            "audit.append",
            "call.timeline",
            "call.transcript",
            "config.reload",
            "kb.preview",
            "kb.reload",
            "transfer.test",
        ]
    )


async def test_audit_append_round_trips_over_the_socket(server: ApplianceServer) -> None:
    control = await start_control(server)
    assert control is not None
    try:
        client = ControlClient(server.settings.admin.control_socket)
        meta = {"user": "it-admin", "ok": True, "n": 3, "ratio": 0.5, "none": None}
        result = await client.acall("audit.append", {"kind": "AdminLogin", "meta": meta}, ACTOR)
    finally:
        await control.close()
    record = _records(server)[result["index"]]
    assert (record.kind, record.call_id) == ("AdminLogin", "")
    assert record.meta == {**meta, "actor": ACTOR}


@pytest.mark.parametrize(
    ("args", "actor"),
    [
        ({"kind": "CallEnded", "meta": {}}, ACTOR),  # not an admin kind
        ({"kind": "AdminX", "meta": {}}, ACTOR),  # too short
        ({"kind": "Admin" + "x" * 41, "meta": {}}, ACTOR),  # too long
        ({"kind": "AdminLog-in", "meta": {}}, ACTOR),
        ({"kind": "AdminLogin\n", "meta": {}}, ACTOR),
        ({"kind": "AdminLogin", "meta": {}}, "user:7\n"),
        ({"kind": "AdminLogin", "meta": {"k": {"nested": 1}}}, ACTOR),
        ({"kind": "AdminLogin", "meta": {"k": [1]}}, ACTOR),
        ({"kind": "AdminLogin", "meta": {"k": float("nan")}}, ACTOR),
        ({"kind": "AdminLogin", "meta": {f"k{i}": i for i in range(33)}}, ACTOR),
        ({"kind": "AdminLogin", "meta": {"k": "x" * 4100}}, ACTOR),
        ({"kind": "AdminLogin", "meta": "flat"}, ACTOR),
        ({"kind": 5, "meta": {}}, ACTOR),
        ({"kind": "AdminLogin", "meta": {}}, ""),  # nobody asked
        ({"kind": "AdminLogin", "meta": {}}, "user:7\nAdminLogin"),  # one token only
    ],
)
async def test_audit_append_refuses_bad_input_and_writes_nothing(
    server: ApplianceServer, args: dict[str, Any], actor: str
) -> None:
    before = len(_records(server))
    with pytest.raises(ControlError) as exc:
        await ControlOps(server).audit.append(args, actor)
    assert exc.value.code == "bad_request"
    assert len(_records(server)) == before


async def test_audit_append_takes_an_anonymous_actor(server: ApplianceServer) -> None:
    """The admin page records failed sign-ins as ``anonymous`` (admin.audit_outbox)."""
    args = {"kind": "AdminLoginThrottled", "meta": {"address": "10.0.0.8"}}
    result = await ControlOps(server).audit.append(args, "anonymous")
    assert _records(server)[result["index"]].meta["actor"] == "anonymous"


async def test_audit_append_accepts_the_limits(server: ApplianceServer) -> None:
    meta = {f"k{i}": i for i in range(32)}
    result = await ControlOps(server).audit.append(
        {"kind": "Admin" + "x" * 40, "meta": meta}, ACTOR
    )
    assert _records(server)[result["index"]].meta["k31"] == 31


async def test_audit_ops_are_unavailable_when_the_log_is_off_or_failed(
    server: ApplianceServer, tmp_path: Path
) -> None:
    assert server.audit is not None
    server.audit.healthy = False
    ops = ControlOps(server)
    args = {"kind": "AdminLogin", "meta": {}}
    with pytest.raises(ControlError) as failed:
        await ops.audit.append(args, ACTOR)
    assert failed.value.code == "unavailable"
    with pytest.raises(ControlError) as view:
        await ops.audit.transcript({"call_id": "c1", "reason": "complaint #42 review"}, ACTOR)
    assert view.value.code == "unavailable"
    disabled = ApplianceServer(_settings(tmp_path / "off"))
    with pytest.raises(ControlError) as off:
        await ControlOps(disabled).audit.append(args, ACTOR)
    assert off.value.code == "unavailable"


async def test_call_timeline_has_the_calls_records_in_order_without_content(
    server: ApplianceServer,
) -> None:
    result = await ControlOps(server).audit.timeline({"call_id": "c1"}, ACTOR)
    assert result["call_id"] == "c1"
    assert [e["kind"] for e in result["events"]] == [
        "CallAnswered",
        "TurnEnded",
        "AgentSpoke",
        "CallEnded",
    ]
    assert [e["t"] for e in result["events"]] == [100.0, 101.0, 102.0, 103.0]
    assert result["events"][0]["meta"] == {"codec": "PCMU"}
    text = json.dumps(result)
    assert "Maria" not in text and "Which day" not in text and "content" not in text


async def test_call_timeline_not_found_and_bad_ids(server: ApplianceServer) -> None:
    ops = ControlOps(server)
    with pytest.raises(ControlError) as missing:
        await ops.audit.timeline({"call_id": "nope"}, ACTOR)
    assert missing.value.code == "not_found"
    bad_ids = ({"call_id": ""}, {"call_id": "a b"}, {"call_id": "c1\n"}, {"call_id": 3}, {})
    for bad in (*bad_ids, {"call_id": "x" * 65}):
        with pytest.raises(ControlError) as exc:
            await ops.audit.timeline(bad, ACTOR)
        assert exc.value.code == "bad_request", bad


def test_call_records_use_the_call_id_index(server: ApplianceServer) -> None:
    db = connect(server.settings.audit.db)
    try:
        plan = db.execute(
            f"EXPLAIN QUERY PLAN SELECT idx, data FROM records WHERE {CALL_ID_SQL} = ? "
            "ORDER BY idx",
            ["c1"],
        ).fetchall()
    finally:
        db.conn.close()
    assert "USING INDEX records_call_id" in " ".join(str(row[-1]) for row in plan)
    assert server.audit is not None
    assert [r["index"] for r in server.audit.log.call_records("c2")] == [3]  # after KeyCreated


async def test_call_transcript_records_the_view_before_returning(
    server: ApplianceServer,
) -> None:
    reason = "Patient complaint #4411: checking what was said"
    result = await ControlOps(server).audit.transcript({"call_id": "c1", "reason": reason}, ACTOR)
    assert result["turns"] == [
        {"t": 101.0, "speaker": "caller", "text": CALLER_SAID},
        {"t": 102.0, "speaker": "agent", "text": AGENT_SAID},
    ]
    assert [e["kind"] for e in result["events"]][0] == "CallAnswered"
    last = _records(server)[-1]
    assert last.kind == "AdminPhiViewed" and last.call_id == ""
    assert last.meta == {"actor": ACTOR, "call_id": "c1"}
    assert last.sealed is not None and reason.encode() not in last.sealed
    assert server.audit is not None
    (opened,) = [
        r for r in server.audit.log.call_records("", decrypt=True) if r["kind"] == "AdminPhiViewed"
    ]
    assert opened["content"] == {"reason": reason}


@pytest.mark.parametrize("reason", ["too short", " " * 20 + "short" + " " * 20, "x" * 501, 42])
async def test_call_transcript_refuses_a_reason_outside_10_to_500_chars(
    server: ApplianceServer, reason: object
) -> None:
    before = len(_records(server))
    with pytest.raises(ControlError) as exc:
        await ControlOps(server).audit.transcript({"call_id": "c1", "reason": reason}, ACTOR)
    assert exc.value.code == "bad_request"
    assert len(_records(server)) == before  # nothing opened, nothing recorded


async def test_call_transcript_of_a_shredded_call_is_not_found(server: ApplianceServer) -> None:
    assert server.audit is not None
    assert server.audit.log.shred(call_id="c1") == 1
    before = len(_records(server))
    with pytest.raises(ControlError) as exc:
        await ControlOps(server).audit.transcript(
            {"call_id": "c1", "reason": "quality review of the call"}, ACTOR
        )
    assert (exc.value.code, str(exc.value)) == ("not_found", "content was shredded")
    assert len(_records(server)) == before
    # the metadata survives shredding: the timeline still answers
    timeline = await ControlOps(server).audit.timeline({"call_id": "c1"}, ACTOR)
    assert len(timeline["events"]) == 4


async def test_status_reports_calls_audit_models_and_stages(server: ApplianceServer) -> None:
    ops = ControlOps(server)
    assert server.audit is not None
    server.audit.log.checkpoint()
    server.bus.emit(CallOffered("a1", source_ip="10.0.0.9"))
    server.bus.emit(CallOffered("a2", source_ip="10.0.0.9"))
    server.bus.emit(CallEnded("a1", disposition="caller_hangup", duration_s=3.0))
    status = await ops.status_ops.status({}, ACTOR)
    assert status["active_calls"] == 1
    assert status["max_calls"] == server.settings.sip.max_calls
    assert status["ready"] is False and status["draining"] is False  # SIP never started
    assert 0 <= status["uptime_s"] < 86400 * 365
    assert status["audit"]["enabled"] is True and status["audit"]["failed"] is False
    assert status["audit"]["records"] == 6  # KeyCreated and the five above
    assert status["audit"]["last_checkpoint"]["size"] == 6
    assert status["stages"]["audit"] == "ok" and status["stages"]["stt"] == "not_loaded"
    assert status["stages"]["pipeline"] == "ok"
    server.bus.emit(Escalated("a2", reason="stage_failure"))
    server.audit.healthy = False
    later = await ops.status_ops.status({}, ACTOR)
    assert later["stages"]["pipeline"] == "degraded"
    assert later["stages"]["audit"] == "failed" and later["audit"]["failed"] is True
    manifest = load_manifest(STORE / "manifest.toml")
    embedding = server.settings.models.embedding
    expected = {
        f"{m.dest}/{f.path}" if f.path != "." else m.dest: f.sha256
        for m in manifest.models
        if m.dest == embedding
        for f in m.files
    }
    got = {m["path"]: m["sha256"] for m in status["models"] if m["path"].startswith(embedding)}
    assert got == expected and expected
    json.dumps(status)  # JSON-able as it is


async def test_config_reload_refused_is_answered_and_audited(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    bad = tmp_path / "broken.toml"
    bad.write_text("[sip\nport = ")

    def reload() -> ApplianceSettings:
        from appliance.config import load_settings

        return load_settings(bad)

    srv = ApplianceServer(settings, reload=reload)
    with pytest.raises(ConfigError):
        reload()
    srv.audit = AuditObserver(open_audit(settings.audit), checkpoint_on_call_end=False)
    try:
        assert await ControlOps(srv).config_reload({}, ACTOR) == {"accepted": False}
        with pytest.raises(ControlError) as exc:
            await ControlOps(srv).kb_reload({}, ACTOR)
        assert exc.value.code == "bad_request"
        kinds = [(r.kind, r.meta) for r in _records(srv) if r.kind.startswith("Admin")]
        assert kinds == [
            ("AdminConfigReloaded", {"accepted": False, "actor": ACTOR}),
            ("AdminKnowledgeReloaded", {"accepted": False, "entries": 0, "actor": ACTOR}),
        ]
    finally:
        srv.audit.close()
        srv.audit.log.close()


# --- transfer.test against a real local webhook ---------------------------------------------


class _Webhook(BaseHTTPRequestHandler):
    status = 200
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture()
def webhook() -> Iterator[tuple[str, type[_Webhook]]]:
    handler = type("Hook", (_Webhook,), {"bodies": [], "status": 200})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/screen-pop", handler
    httpd.shutdown()
    httpd.server_close()


async def test_transfer_test_posts_a_marked_synthetic_context(
    tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, hook = webhook
    srv = ApplianceServer(_settings(tmp_path, webhook_url=url))
    srv.audit = AuditObserver(open_audit(srv.settings.audit), checkpoint_on_call_end=False)
    try:
        ops = ControlOps(srv)
        assert await ops.transfer_test({}, ACTOR) == {
            "webhook_status": 200,
            "ok": True,
            "detail": "delivered",
        }
        (body,) = hook.bodies
        assert body["test"] is True and body["handoff_id"].startswith("test-")
        assert body["slots"] == {} and body["identity_verified"] is False
        hook.status = 500
        result = await ops.transfer_test({}, ACTOR)
        assert (result["webhook_status"], result["ok"]) == (500, False)
        records = [r.meta for r in _records(srv) if r.kind == "AdminTransferTested"]
        assert records == [
            {"webhook_status": 200, "ok": True, "actor": ACTOR},
            {"webhook_status": 500, "ok": False, "actor": ACTOR},
        ]
    finally:
        srv.audit.close()
        srv.audit.log.close()


async def test_transfer_test_without_a_webhook_or_an_answer(tmp_path: Path) -> None:
    srv = ApplianceServer(_settings(tmp_path / "a"))  # audit disabled: nothing to record
    with pytest.raises(ControlError) as exc:
        await ControlOps(srv).transfer_test({}, ACTOR)
    assert exc.value.code == "unavailable"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = ApplianceServer(_settings(tmp_path / "b", webhook_url=f"http://127.0.0.1:{port}/"))
    result = await ControlOps(dead).transfer_test({}, ACTOR)
    assert result["webhook_status"] is None and result["ok"] is False


async def test_a_socket_that_cannot_open_does_not_stop_the_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    blocker = tmp_path / "run"
    blocker.write_text("a file where the socket's directory should be")
    assert await start_control(ApplianceServer(settings)) is None
    assert "control socket" in caplog.text


async def test_status_reports_the_event_loop_lag(server: ApplianceServer) -> None:
    server.loop_lag.start()
    await asyncio.sleep(0.35)
    server.loop_lag.stop()
    lag = (await ControlOps(server).status_ops.status({}, ACTOR))["loop_lag"]
    assert lag["samples"] >= 2 and 0 <= lag["p50_s"] <= lag["p99_s"] <= lag["max_s"]
