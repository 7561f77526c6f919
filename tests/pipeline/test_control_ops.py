"""Control-socket ops that need the real embedding model: ``kb.preview`` over a Unix socket.

The agent's knowledge base is the shipped one (``agent/knowledge/clinic.yaml``) embedded with
all-MiniLM-L6-v2 from the model store (the ``agent`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.agent.runtime import AgentRuntime
from appliance.app.control_ops import start_control
from appliance.app.server import ApplianceServer
from appliance.config.settings import ApplianceSettings
from appliance.control import ControlClient, ControlError

pytestmark = pytest.mark.pipeline


@pytest.fixture()
def server(agent: AgentRuntime, tmp_path: Path) -> ApplianceServer:
    settings = ApplianceSettings.model_validate(
        {
            "store": {"metadata_db": str(tmp_path / "calls.sqlite")},
            "admin": {"control_socket": str(tmp_path / "control.sock")},
        }
    )
    srv = ApplianceServer(settings)
    srv.agent = agent
    return srv


async def test_kb_preview_ranks_the_three_best_entries(server: ApplianceServer) -> None:
    control = await start_control(server)
    assert control is not None
    try:
        client = ControlClient(server.settings.admin.control_socket)
        result = await client.acall(
            "kb.preview", {"question": "is there somewhere to leave the car"}, "user:1"
        )
        with pytest.raises(ControlError) as empty:
            await client.acall("kb.preview", {"question": "   "}, "user:1")
        with pytest.raises(ControlError) as long:
            await client.acall("kb.preview", {"question": "parking " * 40}, "user:1")
    finally:
        await control.close()
    matches = result["matches"]
    assert len(matches) == 3
    assert matches[0]["entry_id"] == "parking"
    assert "park" in matches[0]["text"].lower()
    assert len({m["entry_id"] for m in matches}) == 3  # distinct entries, not examples
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.55 > scores[2]
    assert empty.value.code == "bad_request" and long.value.code == "bad_request"


async def test_kb_preview_before_the_agent_loaded(tmp_path: Path) -> None:
    settings = ApplianceSettings.model_validate(
        {"store": {"metadata_db": str(tmp_path / "calls.sqlite")}}
    )
    from appliance.app.control_ops import ControlOps

    with pytest.raises(ControlError) as exc:
        await ControlOps(ApplianceServer(settings)).kb_preview({"question": "hours?"}, "user:1")
    assert exc.value.code == "unavailable"


KNOWLEDGE = """\
schema: 1
entries:
  - id: flu_shots
    questions:
      - Do you give flu shots?
      - Can I get a flu vaccine?
    answer: Flu shots are given on weekday mornings at {clinic_name}.
  - id: hours
    questions:
      - When are you open?
    answer: "{clinic_hours}"
"""


async def test_kb_reload_reads_the_new_file_and_is_audited(
    models,
    tmp_path: Path,  # noqa: ANN001 - appliance.models.engines.ModelSet
) -> None:
    from appliance.app.control_ops import ControlOps
    from appliance.audit.observer import AuditObserver
    from appliance.audit.record import decode
    from appliance.audit.service import open_audit
    from appliance.audit.store import connect, iter_records

    doc = {
        "store": {"metadata_db": str(tmp_path / "calls.sqlite")},
        "scheduling": {"db": str(tmp_path / "calendar.sqlite")},
        "audit": {
            "db": str(tmp_path / "audit.sqlite"),
            "kek_file": str(tmp_path / "kek"),
            "signing_key_file": str(tmp_path / "signing.key"),
            "checkpoint_file": str(tmp_path / "checkpoints.log"),
        },
    }
    settings = ApplianceSettings.model_validate(doc)
    knowledge = tmp_path / "knowledge.yaml"
    knowledge.write_text(KNOWLEDGE)
    changed = ApplianceSettings.model_validate({**doc, "agent": {"knowledge_file": str(knowledge)}})
    srv = ApplianceServer(settings, models=models, reload=lambda: changed)
    srv.agent = srv._load_agent(settings)  # what run() does at start
    srv.audit = AuditObserver(open_audit(settings.audit), checkpoint_on_call_end=False)
    ops = ControlOps(srv)
    try:
        assert await ops.kb_reload({}, "user:3") == {"entries": 2}
        preview = await ops.kb_preview({"question": "can I get my flu jab here"}, "user:3")
    finally:
        srv.audit.close()
        srv.audit.log.close()
    assert [m["entry_id"] for m in preview["matches"]] == ["flu_shots", "hours"]
    db = connect(settings.audit.db)
    metas = [decode(d).meta for _, d in iter_records(db) if decode(d).kind.startswith("Admin")]
    db.conn.close()
    assert metas == [{"accepted": True, "entries": 2, "actor": "user:3"}]
