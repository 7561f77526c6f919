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
