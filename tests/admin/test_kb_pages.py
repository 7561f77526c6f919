"""The knowledge-base page: edits land in a copy the agent loads, re-embed, preview.

The agent side is ``tests.admin.agent.Agent`` with the session's real models: its real
``kb.reload`` and ``kb.preview`` operations on the admin's socket.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from appliance.admin.config_writer import dropin_path
from appliance.admin.rbac import Role
from appliance.agent.kb import default_file
from appliance.config import load_settings
from tests.admin.agent import Agent

from .conftest import AdminEnv


@pytest.fixture
def agent(admin_env: AdminEnv, models: object) -> Iterator[Agent]:
    """The real agent operations, with the session's models.

    ``kb.reload`` re-reads the settings and re-embeds the configured file with the real
    embedding model; ``kb.preview`` searches it.

    Tests name it before ``signed_in``, so the agent outlives the admin's clients.
    """
    a = Agent(admin_env.settings_path, models).start()
    yield a
    a.close()


def post(c: TestClient, path: str, **data: str) -> Any:
    return c.post(path, data={"csrf_token": c.csrf, **data})  # type: ignore[attr-defined]


def outbox(c: TestClient) -> list[tuple[str, dict[str, Any]]]:
    rows = c.app.state.ctx.db.execute("SELECT kind, meta FROM audit_outbox ORDER BY id")  # type: ignore[attr-defined]
    return [(k, json.loads(m)) for k, m in rows.fetchall()]


def test_roles_without_edit_kb_get_403(signed_in: Callable[..., TestClient]) -> None:
    for role in (Role.VIEWER, Role.CONTACT_CENTRE_LEAD):
        c = signed_in(role)
        assert c.get("/kb").status_code == 403
        assert c.get("/api/kb").status_code == 403
        assert post(c, "/kb/entries", id="x", questions="q", answer="a").status_code == 403


def test_first_edit_copies_the_packaged_file_and_reloads(
    agent: Agent, signed_in: Callable[..., TestClient], admin_env: AdminEnv
) -> None:
    reviewer = signed_in(Role.QUALITY_REVIEWER)
    page = reviewer.get("/kb")
    assert page.status_code == 200 and 'id="entry-hours"' in page.text
    assert "shipped default" in page.text

    r = post(
        reviewer,
        "/kb/entries",
        id="flu_shots",
        questions="Do you have flu shots?\nCan I get a flu vaccine here?",
        answer="Yes, flu shots are available on weekdays.",
    )
    assert r.status_code == 200, r.text
    assert "re-embedded 8 entries" in r.text
    settings = load_settings(admin_env.settings_path)
    copy = settings.agent.knowledge_file
    assert copy is not None and copy.name == "knowledge.yaml" and copy != default_file()
    assert "knowledge_file" in dropin_path(admin_env.settings_path).read_text(encoding="utf-8")
    # The agent re-embedded once, for the reviewer, and serves the new entry.
    actor = f"user:{reviewer.user.user.id}"  # type: ignore[attr-defined]
    assert agent.records("AdminKnowledgeReloaded") == [
        ("AdminKnowledgeReloaded", {"accepted": True, "entries": 8, "actor": actor})
    ]
    assert agent.server.agent is not None
    assert "Yes, flu shots are available on weekdays." in agent.server.agent.kb.answers
    edited = [m for k, m in outbox(reviewer) if k == "AdminKnowledgeEdited"]
    assert edited[-1]["entry_id"] == "flu_shots" and edited[-1]["action"] == "add"
    assert set(edited[-1]) == {"actor", "at", "entry_id", "action"}  # never the text

    # Edit an existing entry's answer; the copy is now written in place.
    r = post(reviewer, "/kb/entries/parking", questions="Is there parking?", answer="Park behind.")
    assert r.status_code == 200, r.text
    api = reviewer.get("/api/kb").json()
    assert api["packaged"] is False
    assert {e["id"]: e["answer"] for e in api["entries"]}["parking"] == "Park behind."

    # Preview asks the agent which entry answers.
    r = post(reviewer, "/kb/preview", question="do you have flu shots")
    assert r.status_code == 200 and "flu_shots" in r.text
    r = reviewer.post(
        "/api/kb/preview",
        json={"question": "is there parking"},
        headers={"X-CSRF-Token": reviewer.csrf},  # type: ignore[attr-defined]
    )
    assert r.json()["matches"][0]["entry_id"] == "parking"
    # The packaged file is untouched.
    assert "Park behind." not in default_file().read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"id": "Bad Id", "questions": "q", "answer": "a"}, "entry id"),
        ({"id": "hours", "questions": "q", "answer": "a"}, "exists already"),
        ({"id": "x", "questions": "", "answer": "a"}, "at least one"),
        ({"id": "x", "questions": "q", "answer": "Call {doctor}"}, "unknown field"),
    ],
)
def test_bad_entries_are_refused_and_nothing_written(
    signed_in: Callable[..., TestClient], admin_env: AdminEnv, data: dict[str, str], needle: str
) -> None:
    reviewer = signed_in(Role.QUALITY_REVIEWER)
    r = post(reviewer, "/kb/entries", **data)
    assert r.status_code == 422 and needle in r.text
    assert not dropin_path(admin_env.settings_path).exists()
    assert load_settings(admin_env.settings_path).agent.knowledge_file is None


def test_without_the_agent_the_edit_is_saved(
    signed_in: Callable[..., TestClient], admin_env: AdminEnv
) -> None:
    reviewer = signed_in(Role.QUALITY_REVIEWER)
    r = post(reviewer, "/kb/entries/hours", questions="When are you open?", answer="Always.")
    assert r.status_code == 200 and "applies when the agent starts" in r.text
    path = load_settings(admin_env.settings_path).agent.knowledge_file
    assert path is not None and Path(path).exists()
    r = post(reviewer, "/kb/preview", question="when are you open")
    assert r.status_code == 409 and "not reachable" in r.text
    headers = {"X-CSRF-Token": reviewer.csrf}  # type: ignore[attr-defined]
    for body in [{"question": ""}, {"question": "x" * 301}, {"q": 1}, [1]]:
        r = reviewer.post("/api/kb/preview", json=body, headers=headers)
        assert r.status_code == 422, body
