"""The agent fails closed when its audit log cannot be written (a full tmpfs)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import Pause, WaitBye, render_uac_scenario, run_sipp, start_sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
]


def test_full_disk_refuses_new_calls_and_ends_current_with_notice(
    tmp_path: Path, tiny_fs: Path, store: Path
) -> None:
    (tmp_path / "w").mkdir()
    proc = ApplianceProcess(
        tmp_path / "w",
        sip_port=free_udp_port(),
        rtp_port=46500,
        extra_toml=f'[audit]\ndb = "{tiny_fs / "audit.sqlite"}"\n',
    )
    proc.start()
    try:
        # The caller stays on the line until the agent hangs up on it.
        active = start_sipp(
            render_uac_scenario(steps=[Pause(1000), WaitBye(timeout_ms=40000)]),
            proc.uri,
            timeout_s=60,
        )
        proc.wait_event("CallAnswered", timeout_s=10)
        with (tiny_fs / "filler").open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        deadline = time.monotonic() + 30
        while "failing closed" not in proc.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "failing closed" in proc.log(), proc.log()[-2000:]
        refused = run_sipp(render_uac_scenario(expect_status=503), proc.uri, timeout_s=20)
        assert refused.returncode == 0, refused.messages[-1500:]
        done = active.wait(45)
        assert done.returncode == 0, "the current call was not ended by the agent"
        (tiny_fs / "filler").unlink()  # space returns
    finally:
        code = proc.stop()
    assert code == 0, f"agent exited {code} after failing closed:\n{proc.log()[-1500:]}"
    from appliance.audit.service import verify_from_settings
    from appliance.config import load_settings

    report = verify_from_settings(load_settings(proc.config).audit)
    assert report.ok, report.summary()
