"""Prometheus endpoint: a real metrics DB and a real control socket in, parseable text out."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.admin.prometheus import check_bearer, exposition, metrics_token
from appliance.control import ControlClient, ControlServer
from appliance.events import (
    CallAnswered,
    CallEnded,
    CallRejected,
    CallScored,
    TransferAttempted,
    TransferResult,
    TurnEnded,
    TurnLatency,
)
from appliance.metrics.store import CallMetadataStore

T = 1_780_000_000.0
SECRET = "my date of birth is 4 March 1982"


def _score(call_id: str, outcome: str, contained: bool, **flags: bool) -> CallScored:
    return CallScored(
        call_id,
        outcome=outcome,
        contained=contained,
        transfer_appropriate=None,
        disclosure_ok=flags.get("disclosure_ok", True),
        identity_before_phi_ok=flags.get("identity_before_phi_ok", True),
        no_card_number_ok=True,
        sentiment=0.2,
        judge="rules",
        summary=SECRET,
        t=T + 100,
    )


@pytest.fixture
def metrics_db(tmp_path: Path) -> Path:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    v2v = [0.8, 1.2, 2.9, 4.0]
    for i, secs in enumerate(v2v):
        cid = f"secret-call-{i}"
        store.on_event(CallAnswered(cid, codec="PCMU", t=T + i))
        store.on_event(TurnEnded(cid, user_text=SECRET, t=T + i + 5))
        store.on_event(
            TurnLatency(
                cid,
                endpointing_s=0.3,
                stt_s=0.2,
                llm_ttft_s=None if i % 2 else 0.4,
                tts_ttfa_s=0.15,
                voice_to_voice_s=secs,
                agent_s=0.1,
                reply_s=secs - 0.4,
                listening="free",
                t=T + i + 6,
            )
        )
        store.on_event(
            CallEnded(
                cid,
                disposition="agent_hangup" if i else "caller_hangup",
                duration_s=30.0,
                t=T + i + 30,
            )
        )
    store.on_event(CallRejected("-", status=503, reason="at_capacity", t=T))
    store.on_event(CallRejected("-", status=503, reason="at_capacity", t=T))
    store.on_event(CallRejected("-", status=403, reason="peer", t=T))
    store.on_event(
        TransferAttempted(
            "secret-call-1",
            mode="attended",
            target="sip:dr.jones@clinic.example",
            handoff_id="H-SECRET",
            t=T + 10,
        )  # fmt: skip
    )
    for i, (mode, ok, status) in enumerate(
        [("attended", False, 480), ("attended", True, 200), ("blind", True, 202), ("", False, 0)]
    ):
        store.on_event(
            TransferResult(
                "secret-call-1",
                handoff_id="H-SECRET",
                ok=ok,
                status=status,
                mode=mode,
                t=T + 11 + i,
            )  # fmt: skip
        )
    store.record_score("secret-call-0", _score("secret-call-0", "resolved", True))
    store.record_score("secret-call-1", _score("secret-call-1", "transferred", False))
    store.record_score(
        "secret-call-2", _score("secret-call-2", "resolved", True, disclosure_ok=False)
    )
    store.close()
    return db


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[ControlClient]:
    """A real control socket answering ``status`` like the agent does."""
    sock = Path(f"/tmp/prom-{os.getpid()}-{id(tmp_path)}.sock")
    loop = asyncio.new_event_loop()
    server = ControlServer(sock)
    seen: list[str] = []

    async def status(args: dict[str, Any], actor: str) -> dict[str, Any]:
        seen.append(actor)
        return {
            "version": "1.0",
            "ready": True,
            "draining": False,
            "active_calls": 2,
            "max_calls": 4,
            "stages": {"stt": "ok", "tts": "failed"},
            "audit": {"enabled": True, "records": 10, "failed": False},
        }

    server.register("status", status)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        client = ControlClient(sock, timeout=5)
        yield client
        assert seen and all(a == "service:prometheus" for a in seen)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        sock.unlink(missing_ok=True)


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fam: Any, suffix: str = "", **labels: str) -> float:
    for s in fam.samples:
        if s.name == fam.name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {fam.name}{suffix} {labels}")


def test_exposition_counts_and_histograms(metrics_db: Path, agent: ControlClient) -> None:
    text = exposition(metrics_db, agent).decode()
    fams = _families(text)
    assert _value(fams["appliance_calls"], "_total", disposition="agent_hangup") == 3
    assert _value(fams["appliance_calls"], "_total", disposition="caller_hangup") == 1
    assert _value(fams["appliance_calls_scored"], "_total", outcome="resolved") == 2
    assert _value(fams["appliance_calls_contained"], "_total") == 2
    assert _value(fams["appliance_escalations"], "_total") == 1
    assert _value(fams["appliance_compliance_flags"], "_total", check="disclosure") == 1
    assert _value(fams["appliance_compliance_flags"], "_total", check="no_card_number") == 0
    assert _value(fams["appliance_sip_rejections"], "_total", status="503") == 2
    assert _value(fams["appliance_sip_rejections"], "_total", status="403") == 1

    v2v = fams["appliance_voice_to_voice_seconds"]
    assert _value(v2v, "_count") == 4
    assert _value(v2v, "_sum") == pytest.approx(0.8 + 1.2 + 2.9 + 4.0)
    assert _value(v2v, "_bucket", le="1.0") == 1
    assert _value(v2v, "_bucket", le="3.5") == 3
    assert _value(v2v, "_bucket", le="+Inf") == 4
    stages = fams["appliance_turn_stage_seconds"]
    assert _value(stages, "_count", stage="endpointing") == 4
    assert _value(stages, "_count", stage="llm_ttft") == 2  # templated turns have none
    assert _value(stages, "_sum", stage="agent") == pytest.approx(0.4)

    transfers = fams["appliance_transfers"]
    assert transfers.type == "counter"
    assert _value(transfers, "_total", mode="attended", result="ok") == 1
    assert _value(transfers, "_total", mode="attended", result="failed") == 1
    assert _value(transfers, "_total", mode="blind", result="ok") == 1
    assert _value(transfers, "_total", mode="unknown", result="failed") == 1  # no mode recorded
    assert len(transfers.samples) == 4  # only the label sets seen

    assert _value(fams["appliance_agent_up"]) == 1
    assert _value(fams["appliance_agent_active_calls"]) == 2
    assert _value(fams["appliance_agent_draining"]) == 0
    assert _value(fams["appliance_audit_failed"]) == 0
    assert _value(fams["appliance_stage_failed"], stage="tts") == 1
    assert _value(fams["appliance_stage_failed"], stage="stt") == 0

    # No content, no call ids.
    for leak in ("secret-call", SECRET, "1982", "March", "dr.jones", "H-SECRET"):
        assert leak not in text


def test_agent_down_and_no_database(tmp_path: Path) -> None:
    down = ControlClient(tmp_path / "absent.sock", timeout=1)
    fams = _families(exposition(tmp_path / "none.sqlite", down).decode())
    assert _value(fams["appliance_agent_up"]) == 0
    assert "appliance_agent_active_calls" not in fams
    assert fams["appliance_voice_to_voice_seconds"].samples == []  # no turns yet
    assert fams["appliance_transfers"].samples == []
    assert not (tmp_path / "none.sqlite").exists()  # read-only: nothing created


def test_token_is_created_once_private_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "metrics-token"
    token = metrics_token(path)
    assert len(token) == 64 and int(token, 16) >= 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert metrics_token(path) == token
    assert check_bearer(f"Bearer {token}", token)
    assert check_bearer(f"bearer {token}", token)
    assert not check_bearer(None, token)
    assert not check_bearer("", token)
    assert not check_bearer(token, token)  # no scheme
    assert not check_bearer(f"Basic {token}", token)
    assert not check_bearer(f"Bearer {token[:-1]}0" if token[-1] != "0" else "Bearer x", token)
    assert not check_bearer("Bearer ", "")
