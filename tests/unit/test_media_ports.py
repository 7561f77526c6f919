"""Media ports: callbacks never raise into pjmedia, failures count per call, ports are reused."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pjsua2 as pj
import pytest

from appliance.audio.bridge import AudioBridge
from appliance.config.settings import SipSettings
from appliance.media.callbacks import guarded
from appliance.media.ports import MediaPort, PortPool
from appliance.media.sip import SipUserAgent
from tests.e2e.server import free_udp_port

FRAME = bytes(640)  # 20 ms of 16 kHz 16-bit mono


def _audio_frame(pcm: bytes) -> pj.MediaFrame:
    frame = pj.MediaFrame()
    frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
    frame.buf = pj.ByteVector(pcm)
    frame.size = len(pcm)
    return frame


class _Boom(AudioBridge):
    def put_inbound(self, pcm: bytes) -> None:
        raise RuntimeError("bridge broke")

    def take_outbound(self) -> bytes:
        raise RuntimeError("bridge broke")


def test_frames_flow_through_an_attached_port() -> None:
    port = MediaPort("t")
    bridge = AudioBridge(16000)
    port.bridge = bridge
    port.onFrameReceived(_audio_frame(b"\x01\x00" * 320))
    assert bridge.drain_inbound() == [b"\x01\x00" * 320]
    bridge.put_outbound(b"\x02\x00" * 320)
    out = pj.MediaFrame()
    port.onFrameRequested(out)
    assert out.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and bytes(out.buf) == b"\x02\x00" * 320


def test_an_idle_port_sends_nothing_and_takes_nothing() -> None:
    port = MediaPort("idle")
    port.onFrameReceived(_audio_frame(FRAME))
    out = pj.MediaFrame()
    port.onFrameRequested(out)
    assert out.type == pj.PJMEDIA_FRAME_TYPE_NONE and out.size == 0
    assert port.idle_errors == 0


def test_callback_failures_are_counted_per_call_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = MediaPort("boom")
    bridge = _Boom(16000)
    port.bridge = bridge
    with caplog.at_level(logging.WARNING):
        for _ in range(50):  # one second of frames, both directions
            port.onFrameReceived(_audio_frame(FRAME))  # must not raise
            port.onFrameRequested(pj.MediaFrame())
    assert bridge.stats.callback_errors == 100
    logged = [r for r in caplog.records if "media callback failed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # with its traceback


def test_guarded_callbacks_log_the_traceback_and_return(caplog: pytest.LogCaptureFixture) -> None:
    class Thing:
        @guarded("test")
        def onSomething(self, prm: object) -> None:  # noqa: N802
            raise ValueError("no")

    with caplog.at_level(logging.ERROR):
        assert Thing().onSomething(None) is None
    assert any(r.exc_info and "test callback failed" in r.getMessage() for r in caplog.records)


def test_the_pool_reuses_ports_after_their_cooldown() -> None:
    """On a real endpoint (null audio device): a released port comes back, never destroyed."""
    loop = asyncio.new_event_loop()
    ua = SipUserAgent(SipSettings(bind=f"127.0.0.1:{free_udp_port()}", rtp_port=47900), loop, None)
    ua.start()
    try:
        results: dict[str, object] = {}
        done = threading.Event()

        def on_thread() -> None:
            pool: PortPool = ua._ports
            a = pool.acquire(AudioBridge(16000))
            b = pool.acquire(AudioBridge(16000))
            pool.release(a)
            c = pool.acquire(AudioBridge(16000))  # a is cooling down: a new port
            results["early"] = (a is c, pool.size)
            pool.release(b)
            pool.release(c)
            time.sleep(PortPool.COOLDOWN_S + 0.1)
            d = pool.acquire(AudioBridge(16000))
            e = pool.acquire(AudioBridge(16000))
            results["later"] = ({id(d), id(e)} <= {id(a), id(b), id(c)}, pool.size)
            results["detached"] = a.bridge is None or a is d or a is e
            done.set()

        ua.submit(on_thread)
        assert done.wait(10)
        assert results["early"] == (False, 3)
        assert results["later"] == (True, 3)
        assert results["detached"]
    finally:
        ua.stop()
        loop.close()
