"""Browser test calls over WebRTC (issue 12 item 5), with a real aiortc peer as the browser.

- The media layer: an aiortc client plays recorded speech (``shared/data/speech/osr``) into a
  :class:`~appliance.pipeline.webrtc.WebRTCPeer`; what reaches the call's bridge must follow the
  speech's loudness envelope, and agent audio put on the bridge must reach the client.
- The whole agent: ``appliance serve --test-events`` with a control socket; the offer goes in
  through ``webrtc.offer`` (what the admin page forwards), and the call must be disclosed,
  hear a caller turn, answer it, end on ``webrtc.hangup``, be scored, and be recorded in the
  metrics database with ``channel = 'webrtc'``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import wave
from pathlib import Path

import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from appliance.audio.bridge import AudioBridge
from appliance.control import ControlClient, ControlError
from appliance.pipeline.webrtc import WebRTCOfferError, WebRTCPeer
from tests.conftest import read_pcm, speech_dir
from tests.kit.webrtc import CallerTrack, Listener

RATE = 16000


def osr_wav(tmp_path: Path, seconds: float, start_s: float = 0.0) -> tuple[Path, np.ndarray]:
    """A 16 kHz WAV cut from the Harvard sentences recording, and its samples."""
    pcm = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", RATE)
    cut = pcm[int(start_s * RATE) : int((start_s + seconds) * RATE)]
    path = tmp_path / "caller.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(cut.tobytes())
    return path, cut


def envelope(pcm: np.ndarray, rate: int = RATE) -> np.ndarray:
    """RMS per 20 ms frame."""
    n = rate // 50
    frames = pcm[: len(pcm) // n * n].astype(np.float64).reshape(-1, n)
    return np.sqrt((frames**2).mean(axis=1))


def best_correlation(sent: np.ndarray, got: np.ndarray, max_lag: int = 150) -> float:
    """Highest Pearson correlation of two envelopes over lags of ``got`` up to 3 s."""
    best = -1.0
    for lag in range(min(max_lag, max(0, len(got) - 10))):
        n = min(len(sent), len(got) - lag)
        if n < 50:
            break
        r = float(np.corrcoef(sent[:n], got[lag : lag + n])[0, 1])
        best = max(best, r)
    return best


async def record(track: MediaStreamTrack, out: list[np.ndarray]) -> None:
    """Collect a received audio track as mono int16 at 48 kHz."""
    try:
        while True:
            frame = await track.recv()
            samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
            out.append(samples.mean(axis=1).astype(np.int16))
    except MediaStreamError:
        pass


async def test_peer_bridges_browser_audio_both_ways(tmp_path: Path) -> None:
    wav, sent = osr_wav(tmp_path, 5.0)
    bridge = AudioBridge(RATE, max_inbound_ms=60_000)
    connected, closed = asyncio.Event(), asyncio.Event()
    peer = WebRTCPeer(bridge, on_connected=connected.set, on_closed=closed.set)
    client = RTCPeerConnection()
    player = MediaPlayer(str(wav))
    client.addTrack(player.audio)
    received: list[np.ndarray] = []
    recorders: list[asyncio.Task[None]] = []
    client.on("track", lambda track: recorders.append(asyncio.create_task(record(track, received))))
    await client.setLocalDescription(await client.createOffer())
    answer = await peer.answer(client.localDescription.sdp)
    assert peer.codec == "opus"
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.wait_for(connected.wait(), 15)

    # The agent speaks 3 s of other speech while the caller's 5 s play.
    agent_pcm = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", RATE)[
        10 * RATE : 13 * RATE
    ]
    bridge.put_outbound(agent_pcm.tobytes())
    await asyncio.sleep(6.5)
    inbound = np.frombuffer(b"".join(bridge.drain_inbound()), dtype=np.int16)

    await client.close()
    await asyncio.wait_for(closed.wait(), 15)
    assert peer.closed
    for task in recorders:
        task.cancel()

    # Caller -> bridge: 20 ms frames at 16 kHz, the speech's envelope (Opus is lossy).
    assert len(inbound) >= 4.0 * RATE, len(inbound) / RATE
    assert bridge.stats.rx_dropped == 0
    r_in = best_correlation(envelope(sent), envelope(inbound))
    assert r_in > 0.8, r_in
    # Bridge -> browser: the agent's speech arrives, paced in real time.
    got = np.concatenate(received)
    assert len(got) >= 3.0 * 48000
    r_out = best_correlation(envelope(agent_pcm), envelope(got, 48000))
    assert r_out > 0.8, r_out
    assert bridge.queued_ms == 0


async def test_bad_offers_are_refused() -> None:
    peer = WebRTCPeer(AudioBridge(RATE))
    with pytest.raises(WebRTCOfferError, match="no audio"):
        await peer.answer("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n")
    with pytest.raises(WebRTCOfferError, match="larger"):
        await peer.answer("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + "a=x\r\n" * 20_000)
    with pytest.raises(WebRTCOfferError, match="malformed|cannot be answered"):
        await peer.answer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n")
    await peer.close()
    assert peer.closed

    # A video-only browser offer has no audio section either.
    client = RTCPeerConnection()
    client.addTransceiver("video")
    await client.setLocalDescription(await client.createOffer())
    other = WebRTCPeer(AudioBridge(RATE))
    with pytest.raises(WebRTCOfferError, match="no audio"):
        await other.answer(client.localDescription.sdp)
    await other.close()
    await client.close()


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory: pytest.TempPathFactory, store: Path):  # noqa: ANN201
    """``appliance serve --test-events`` with a control socket (and SIP on loopback)."""
    from tests.e2e.server import ApplianceProcess, free_udp_port

    work = tmp_path_factory.mktemp("webrtc-agent")
    proc = ApplianceProcess(
        work,
        sip_port=free_udp_port(),
        rtp_port=45400,
        max_calls=1,
        extra_toml=f'[admin]\ncontrol_socket = "{work / "control.sock"}"\n',
    )
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()[-3000:]


def call_events(proc: object, call_id: str) -> list[dict[str, object]]:
    return [e for e in proc.events() if e.get("call_id") == call_id]  # type: ignore[attr-defined]


async def wait_for(
    proc: object, call_id: str, kind: str, timeout_s: float, after: float = 0.0
) -> dict[str, object]:
    """The first event of ``kind`` for the call stamped after ``after`` (epoch s)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = [
            e
            for e in call_events(proc, call_id)
            if e["kind"] == kind and float(e["t"]) > after  # type: ignore[arg-type]
        ]
        if found:
            return found[0]
        if asyncio.get_running_loop().time() > deadline:
            log = proc.log()[-3000:]  # type: ignore[attr-defined]
            raise AssertionError(f"no {kind} for call {call_id} in {timeout_s} s\n{log}")
        await asyncio.sleep(0.2)


@pytest.mark.pipeline
async def test_browser_test_call_through_the_agent(agent_process: object) -> None:
    proc = agent_process
    control = ControlClient(proc.workdir / "control.sock", timeout=30)  # type: ignore[attr-defined]
    mic = CallerTrack()
    client = RTCPeerConnection()
    client.addTrack(mic)
    listener = Listener()
    client.on("track", listener.attach)
    await client.setLocalDescription(await client.createOffer())
    offer = {"sdp": client.localDescription.sdp, "type": "offer"}
    answer = await control.acall("webrtc.offer", offer, actor="user:1")
    assert answer["type"] == "answer" and "m=audio" in answer["sdp"]
    call_id = answer["call_id"]
    await client.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

    # One call slot ([sip] max_calls = 1): a second test call is refused while this one runs.
    other = RTCPeerConnection()
    other.addTransceiver("audio")
    await other.setLocalDescription(await other.createOffer())
    with pytest.raises(ControlError) as refused:
        await control.acall("webrtc.offer", {"sdp": other.localDescription.sdp}, actor="user:1")
    assert refused.value.code == "unavailable"
    await other.close()

    answered = await wait_for(proc, call_id, "CallAnswered", 30)
    assert answered["channel"] == "webrtc" and answered["codec"] == "opus"

    # ... and so is a SIP call: the test call holds the only slot (503 + Retry-After).
    from tests.e2e.sipp import render_uac_scenario, run_sipp

    sip = await asyncio.to_thread(
        run_sipp,
        render_uac_scenario(expect_status=503),
        proc.uri,  # type: ignore[attr-defined]
        timeout_s=20,
    )
    assert sip.returncode == 0, sip.messages[-2000:]
    assert sip.received_header(503, "Retry-After") == "17"
    await wait_for(proc, call_id, "DisclosurePlayed", 60)
    await asyncio.sleep(4.0)  # the greeting after the disclosure
    sentence = read_pcm(speech_dir() / "osr" / "OSR_us_000_0034_8k.wav", RATE)[: 3 * RATE]
    mic.say(sentence)
    turn = await wait_for(proc, call_id, "TurnEnded", 60)
    heard_words = str(turn["user_text"]).lower()
    assert "gold ring" in heard_words or "girl" in heard_words, heard_words
    reply = await wait_for(proc, call_id, "AgentSpoke", 60, after=float(turn["t"]))  # type: ignore[arg-type]
    assert reply["source"] not in ("disclosure", "greeting") and reply["text"]
    latency = await wait_for(proc, call_id, "TurnLatency", 30)
    assert 0.0 < float(latency["voice_to_voice_s"]) < 30.0  # type: ignore[arg-type]
    await asyncio.sleep(3.0)  # let the reply play

    ended = await control.acall("webrtc.hangup", {"call_id": call_id}, actor="user:1")
    assert ended == {"call_id": call_id, "ended": True}
    with pytest.raises(ControlError) as gone:
        await control.acall("webrtc.hangup", {"call_id": call_id}, actor="user:1")
    assert gone.value.code in ("not_found",)
    end = await wait_for(proc, call_id, "CallEnded", 30)
    assert end["disposition"] == "caller_hangup"
    score = await wait_for(proc, call_id, "CallScored", 30)
    assert score["disclosure_ok"] is True
    await client.close()
    listener.stop()

    # The browser heard the agent: the disclosure and a reply, several seconds of speech, and
    # the reply's first audio arrived after the caller's last word.
    assert listener.voiced_seconds() > 3.0, listener.voiced_seconds()
    assert listener.first_voiced_after(mic.ends[0]) is not None

    # Metrics mark the call as a test call.
    db = proc.workdir / "calls.sqlite"  # type: ignore[attr-defined]
    for _ in range(50):
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT channel FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        if row is not None:
            break
        await asyncio.sleep(0.1)
    assert row == ("webrtc",)
