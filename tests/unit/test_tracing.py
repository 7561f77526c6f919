"""Turn traces: real events in, JSON-lines spans out, stage durations kept, no content."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.app.tracing import TurnTracer, check_local_endpoint, exporters
from appliance.config.settings import TelemetrySettings
from appliance.errors import ConfigError
from appliance.events import (
    AgentSpoke,
    CallAnswered,
    CallEnded,
    EventBus,
    IntentRecognized,
    ToolCalled,
    TurnEnded,
    TurnLatency,
)

T = 1_780_000_000.0
SECRET = "my date of birth is 4 March 1982"


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _duration(span: dict[str, Any]) -> float:
    return _seconds(span["end_time"]) - _seconds(span["start_time"])


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_turn_spans_from_real_events(tmp_path: Path) -> None:
    out = tmp_path / "traces" / "spans.jsonl"
    tracer = TurnTracer.from_settings(TelemetrySettings(traces_file=out))
    assert tracer is not None
    bus = EventBus()
    bus.subscribe(tracer.on_event)
    bus.emit(CallAnswered("c1", codec="PCMU", t=T))
    # Turn 1: a reschedule, with an intent and a tool call inside the dialogue stage.
    bus.emit(TurnEnded("c1", user_text=SECRET, t=T + 10.6))
    bus.emit(
        IntentRecognized("c1", intent="reschedule", confidence=0.91, method="embedding", t=T + 10.7)
    )
    bus.emit(
        ToolCalled(
            "c1",
            tool="calendar.reschedule",
            ok=True,
            idempotency_key="k1",
            arguments=json.dumps({"dob": "1982-03-04"}),
            result=json.dumps({"slot": "Tuesday 7 9:30"}),
            t=T + 10.9,
        )
    )
    bus.emit(
        TurnLatency(
            "c1",
            endpointing_s=0.6,
            stt_s=0.35,
            llm_ttft_s=0.25,
            tts_ttfa_s=0.2,
            voice_to_voice_s=1.5,
            agent_s=0.4,
            reply_s=0.5,
            listening="free",
            t=T + 11.5,
        )
    )
    bus.emit(AgentSpoke("c1", text="Your appointment is moved.", interrupted=False, source="llm"))
    # Turn 2: a templated reply (no LLM).
    bus.emit(
        TurnLatency(
            "c1",
            endpointing_s=0.3,
            stt_s=0.2,
            llm_ttft_s=None,
            tts_ttfa_s=0.1,
            voice_to_voice_s=0.7,
            agent_s=0.1,
            reply_s=0.3,
            listening="yes_no",
            t=T + 20.0,
        )
    )
    bus.emit(CallEnded("c1", disposition="caller_hangup", duration_s=21.0, t=T + 21))
    assert tracer.flush()
    tracer.shutdown()

    spans = _read(out)
    roots = [s for s in spans if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["turn", "turn"]
    assert [r["attributes"]["appliance.turn"] for r in roots] == [1, 2]
    first, second = roots
    assert _duration(first) == pytest.approx(1.5, abs=1e-6)
    assert _seconds(first["end_time"]) == pytest.approx(T + 11.5, abs=1e-6)

    def children(parent: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            s["name"]: s
            for s in spans
            if s["parent_id"] == parent["context"]["span_id"]
            and s["context"]["trace_id"] == parent["context"]["trace_id"]
        }

    kids = children(first)
    assert set(kids) == {"endpointing", "stt", "dialogue", "reply"}
    for name, expected in (("endpointing", 0.6), ("stt", 0.35), ("dialogue", 0.4), ("reply", 0.5)):
        assert _duration(kids[name]) == pytest.approx(expected, abs=1e-6), name
    # Stages tile the turn: endpointing + dialogue + reply == voice to voice.
    assert _seconds(kids["dialogue"]["start_time"]) == pytest.approx(
        _seconds(kids["endpointing"]["end_time"]), abs=1e-6
    )
    assert _seconds(kids["reply"]["end_time"]) == pytest.approx(T + 11.5, abs=1e-6)
    dialogue = children(kids["dialogue"])
    assert set(dialogue) == {"tool calendar.reschedule"}
    tool = dialogue["tool calendar.reschedule"]
    assert tool["attributes"] == {"tool": "calendar.reschedule", "ok": True}
    assert [e["name"] for e in kids["dialogue"]["events"]] == ["intent"]
    assert kids["dialogue"]["events"][0]["attributes"]["intent"] == "reschedule"
    reply = children(kids["reply"])
    assert _duration(reply["llm"]) == pytest.approx(0.25, abs=1e-6)
    assert _duration(reply["tts"]) == pytest.approx(0.2, abs=1e-6)

    kids2 = children(second)
    assert set(kids2) == {"endpointing", "stt", "dialogue", "reply"}
    assert set(children(kids2["reply"])) == {"tts"}  # templated: no LLM span
    assert children(kids2["dialogue"]) == {}  # turn 1's tool is not repeated
    assert second["attributes"]["appliance.listening"] == "yes_no"

    text = out.read_text()
    for content in (SECRET, "1982", "Tuesday", "moved", "dob"):
        assert content not in text
    assert oct(out.stat().st_mode & 0o777) == oct(0o600)


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    assert TurnTracer.from_settings(TelemetrySettings()) is None
    assert exporters(TelemetrySettings()) == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4318/v1/traces", "http://localhost:4318", "https://10.1.2.3/x"]
)
def test_local_collectors_are_accepted(url: str) -> None:
    assert check_local_endpoint(url) == url


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8:4318/v1/traces", "ftp://127.0.0.1/", "http:///x", "not a url"]
)
def test_public_or_malformed_collectors_are_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_local_endpoint(url)
    assert info.value.code == "telemetry_endpoint"
