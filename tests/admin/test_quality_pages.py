"""Quality review and digest pages, and the /metrics endpoint, on the real app (TestClient).

The agent side is ``tests.admin.agent.Agent``: the real ``call.transcript`` and ``audit.append``
operations, reading transcripts the calls' events put on its audit log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from appliance.admin.rbac import Role
from appliance.events import AgentSpoke, CallAnswered, CallEnded, Event, TurnEnded, TurnLatency
from appliance.metrics.store import CallMetadataStore
from appliance.text.wer import word_edits
from tests.admin.agent import Agent
from tests.admin.conftest import AdminEnv
from tests.admin.test_dashboard_pages import feed, phi_views

HYPOTHESES = ["i like to move the my appointment tuesday 7", "can i speak to the reception list"]
REFERENCES = [
    "I'd like to move my appointment to Tuesday the 7th",
    "Can I speak to the receptionist",
]


def call_events(now: float) -> list[Event]:
    """Three answered calls from the last hour, as the agent's event bus carries them.

    The agent greets, the caller says the two :data:`HYPOTHESES` (what the recogniser heard);
    one turn's latency each.
    """
    events: list[Event] = []
    for i in range(3):
        call_id, at = f"opaque-call-{i}", now - 3600 + 600 * i
        events += [
            CallAnswered(call_id, codec="PCMU", t=at),
            AgentSpoke(call_id, text="Hello.", interrupted=False, source="greeting", t=at + 1),
            TurnEnded(call_id, user_text=HYPOTHESES[0], t=at + 4),
            TurnLatency(
                call_id,
                endpointing_s=0.4,
                stt_s=0.3,
                llm_ttft_s=None,
                tts_ttfa_s=0.2,
                voice_to_voice_s=1.1,
                agent_s=0.2,
                reply_s=0.5,
                t=at + 5,
            ),
            TurnEnded(call_id, user_text=HYPOTHESES[1], t=at + 7),
            CallEnded(call_id, disposition="caller_hangup", duration_s=9, t=at + 9),
        ]
    return events


@pytest.fixture
def calls() -> list[Event]:
    return call_events(time.time())


@pytest.fixture
def calls_db(admin_env: AdminEnv, calls: list[Event]) -> Path:
    """The calls' metadata in the agent's metadata store (it keeps the kinds it stores)."""
    db = admin_env.settings.store.metadata_db
    store = CallMetadataStore(db)
    for event in calls:
        store.on_event(event)
    store.close()
    return db


@pytest.fixture
def agent(admin_env: AdminEnv, calls: list[Event]) -> Iterator[Agent]:
    """The real agent operations, the calls' records on its audit log (sealed transcripts).

    Tests name it before ``signed_in``, so the agent outlives the admin's clients.
    """
    a = Agent(admin_env.settings_path).start()
    feed(a, calls)
    yield a
    a.close()


def test_roles_reach_only_their_pages(signed_in: Callable[..., TestClient]) -> None:
    viewer = signed_in(Role.VIEWER)
    for path in ("/quality", "/quality/digest", "/quality/1", "/quality/1/done"):
        assert viewer.get(path).status_code == 403, path
    assert viewer.post("/quality/sample", data={"csrf_token": viewer.csrf}).status_code == 403  # type: ignore[attr-defined]
    owner = signed_in(Role.OWNER)
    assert owner.get("/quality").status_code == 403
    page = owner.get("/quality/digest")
    assert page.status_code == 200 and 'id="digest"' in page.text
    reviewer = signed_in(Role.QUALITY_REVIEWER)
    assert reviewer.get("/quality").status_code == 200
    assert reviewer.get("/quality/999").status_code == 404
    assert reviewer.get("/quality/abc").status_code == 422


def test_draw_review_and_wer(
    agent: Agent,
    signed_in: Callable[..., TestClient],
    calls_db: Path,
    admin_app: Any,
) -> None:
    c = signed_in(Role.QUALITY_REVIEWER)
    csrf = c.csrf  # type: ignore[attr-defined]
    assert c.post("/quality/sample", data={"size": "2", "days": "1"}).status_code == 403  # no CSRF
    bad = c.post("/quality/sample", data={"size": "0", "days": "1", "csrf_token": csrf})
    assert bad.status_code == 422 and "Sample size" in bad.text
    r = c.post("/quality/sample", data={"size": "2", "days": "1", "csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/quality"
    index = c.get("/quality").text
    ids = re.findall(r'data-sample="(\d+)"', index)
    assert len(ids) == 2 and "to review" in index

    sid = ids[0]
    page = c.get(f"/quality/{sid}")
    assert page.status_code == 200
    for hyp in HYPOTHESES:
        assert hyp in page.text
    # The agent put the view on its audit log: which call, why (sealed), who.
    call_id, reason, actor = phi_views(agent)[-1]
    assert call_id.startswith("opaque-call-") and reason == f"quality review sample {sid}"
    assert actor == f"user:{c.user.user.id}"  # type: ignore[attr-defined]

    form = {"csrf_token": csrf, "ref_0": REFERENCES[0], "ref_1": REFERENCES[1]}
    done = c.post(f"/quality/{sid}", data=form)
    assert done.status_code == 303 and done.headers["location"] == f"/quality/{sid}/done"
    result = c.get(done.headers["location"]).text
    edits = [word_edits(r, h) for r, h in zip(REFERENCES, HYPOTHESES, strict=True)]
    words, errors = sum(e.reference_words for e in edits), sum(e.errors for e in edits)
    assert errors / words > 0.08  # word_edits is checked against jiwer in tests/unit
    assert f"{words} words, {errors} errors: WER {errors / words * 100:.1f} %" in result
    index = c.get("/quality").text
    assert 'id="wer-alert"' in index and "<svg" in index and "style=" not in index
    too_few = c.post(f"/quality/{sid}", data={"csrf_token": csrf, "ref_0": "x"})
    assert too_few.status_code == 422

    outbox = admin_app.state.ctx.db.execute(
        "SELECT kind, meta FROM audit_outbox WHERE kind LIKE 'AdminQuality%'"
    ).fetchall()
    kinds = [row[0] for row in outbox]
    assert "AdminQualityReviewed" in kinds and "AdminQualitySampled" in kinds
    stored = "\n".join(admin_app.state.ctx.db.iterdump()).lower()
    for text in HYPOTHESES + [r.lower() for r in REFERENCES]:
        assert text not in stored

    digest = c.get("/quality/digest").text
    assert "breach" in digest


def test_review_when_agent_is_down(signed_in: Callable[..., TestClient], calls_db: Path) -> None:
    c = signed_in(Role.QUALITY_REVIEWER)
    csrf = c.csrf  # type: ignore[attr-defined]
    c.post("/quality/sample", data={"size": "1", "days": "1", "csrf_token": csrf})
    sid = re.findall(r'data-sample="(\d+)"', c.get("/quality").text)[0]
    page = c.get(f"/quality/{sid}")
    assert page.status_code == 503 and "not reachable" in page.text
    saved = c.post(f"/quality/{sid}", data={"csrf_token": csrf, "ref_0": "hello"})
    assert saved.status_code == 503 and "Nothing was saved" in saved.text


def test_metrics_needs_its_token(client: TestClient, admin_env: AdminEnv, calls_db: Path) -> None:
    assert client.get("/metrics").status_code == 401
    token_file = admin_env.settings.admin.metrics_token_file
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": token}).status_code == 401
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert fams["appliance_agent_up"].samples[0].value == 0  # no agent in this test
    counts = [
        s for s in fams["appliance_voice_to_voice_seconds"].samples if s.name.endswith("_count")
    ]
    assert counts[0].value == 3
    assert "opaque-call" not in r.text


def test_every_app_has_its_quality_tables_before_any_request(admin_env: AdminEnv) -> None:
    """The quality tables come with the app, not with a first request.

    They were made per id() of a connection: a new connection at a freed one's address was
    taken as migrated, and the first draw on it failed with "no such table" (seen in CI).
    """
    import gc
    import sqlite3

    from appliance.admin.web import create_app

    for _ in range(3):
        app = create_app(admin_env.settings, settings_path=admin_env.settings_path)
        db: sqlite3.Connection = app.state.ctx.db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"quality_samples", "quality_turns"} <= tables
        db.close()
        del app, db
        gc.collect()
