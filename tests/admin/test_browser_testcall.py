"""Talk to the agent in headless Chromium: a real browser test call through both processes.

``appliance serve`` (the agent, with its control socket) and ``appliance admin`` run as their
own processes. Chromium's fake capture device plays a WAV (``--use-file-for-fake-audio-capture``)
made from a recorded Harvard sentence (``shared/data/speech/osr``) between silences; the page's
button places the call, the agent discloses, hears the sentence and answers, the hang-up button
ends it, and the call is scored and counted as a WebRTC test call.
"""

from __future__ import annotations

import sqlite3
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.admin.rbac import Role
from tests.admin.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    AdminServer,
    browser_sign_in,
    needs_browser,
    start_admin,
    stop_admin,
)
from tests.conftest import read_pcm, speech_dir
from tests.e2e.server import ApplianceProcess, free_udp_port

pytestmark = [pytest.mark.browser, pytest.mark.e2e, needs_browser]

RATE = 16000


def caller_wav(path: Path) -> Path:
    """10 s of silence (the disclosure plays), one sentence, then 12 s of silence (a reply).

    Chromium loops the file, so the caller says the sentence again about every 25 s.
    """
    sentence = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", RATE)[: 3 * RATE]
    pcm = np.concatenate([np.zeros(10 * RATE, np.int16), sentence, np.zeros(12 * RATE, np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture
def both(tmp_path: Path, store: Path) -> Iterator[tuple[ApplianceProcess, AdminServer]]:
    """The agent and the admin page, sharing one control socket."""
    root = tmp_path / "box"
    (root / "agent").mkdir(parents=True)
    agent = ApplianceProcess(
        root / "agent",
        sip_port=free_udp_port(),
        rtp_port=45600,
        max_calls=1,
        extra_toml=f'[admin]\ncontrol_socket = "{root / "run" / "control.sock"}"\n',
    )
    agent.start()
    try:
        admin = start_admin(root)
    except BaseException:
        agent.stop()
        raise
    yield agent, admin
    stop_admin(admin)
    assert agent.stop() == 0, agent.log()[-3000:]


def wait_kind(agent: ApplianceProcess, kind: str, after: float, timeout_s: float) -> dict:
    """The first event of ``kind`` stamped after ``after`` (epoch s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in agent.events():
            if e["kind"] == kind and float(e["t"]) > after:
                return e
        time.sleep(0.2)
    raise AssertionError(f"no {kind} in {timeout_s} s:\n{agent.log()[-3000:]}")


def test_talk_to_the_agent_button(
    both: tuple[ApplianceProcess, AdminServer], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    agent, admin = both
    wav = caller_wav(tmp_path / "caller.wav")
    username, secret = admin.make_user(Role.CONTACT_CENTRE_LEAD)
    args = [
        *CHROMIUM_ARGS,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            context = browser.new_context(ignore_https_errors=True, permissions=["microphone"])
            page = context.new_page()
            browser_sign_in(page, admin, username, secret)
            page.goto(admin.url + "/testcall")
            started = time.time()
            page.click("#tc-start")
            page.wait_for_selector("#tc-status[data-state=live]", timeout=30_000)
            call_id = page.inner_text("#tc-call-id").strip()
            assert len(call_id) == 12, page.inner_text("main")

            answered = wait_kind(agent, "CallAnswered", started, 30)
            assert answered["call_id"] == call_id and answered["channel"] == "webrtc"
            wait_kind(agent, "DisclosurePlayed", started, 60)
            turn = wait_kind(agent, "TurnEnded", started, 90)
            assert turn["call_id"] == call_id and str(turn["user_text"]).strip()
            reply = wait_kind(agent, "AgentSpoke", float(turn["t"]), 60)
            assert reply["call_id"] == call_id
            # The page plays the agent's audio track.
            assert page.evaluate(
                "document.getElementById('tc-audio').srcObject.getAudioTracks().length"
            )

            page.click("#tc-hangup")
            page.wait_for_selector("#tc-status[data-state=idle]", timeout=10_000)
            ended = wait_kind(agent, "CallEnded", started, 30)
            assert ended["call_id"] == call_id
            scored = wait_kind(agent, "CallScored", started, 30)
            assert scored["call_id"] == call_id and scored["disclosure_ok"] is True
        finally:
            browser.close()

    row = None
    for _ in range(50):
        with sqlite3.connect(agent.workdir / "calls.sqlite") as conn:
            row = conn.execute("SELECT channel FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        if row is not None:
            break
        time.sleep(0.1)
    assert row == ("webrtc",)
