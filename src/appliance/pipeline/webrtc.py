"""WebRTC media for a browser test call: an aiortc peer connection bridged to an AudioBridge.

A test call from the admin page ("Talk to the agent") runs through the same call pipeline as a
SIP call. Rather than a second pipecat transport with its own pacing and barge-in rules, the
browser's audio is put on the same :class:`~appliance.audio.bridge.AudioBridge` that a pjsua2
media port feeds, so :class:`~appliance.pipeline.transport.PjsuaTransport` (20 ms frames at the
bridge clock, ``lead_ms`` pacing, protected disclosure audio on barge-in) is used unchanged::

    browser ─ Opus/SRTP ─► aiortc ─► decode (48 kHz stereo) ─► downmix (PyAV) ─► soxr ─► bridge
    bridge ─► BridgeAudioTrack (20 ms, real-time paced) ─► aiortc Opus encoder ─► browser

Signalling is non-trickle (RFC 8829 offer/answer with all ICE candidates in the SDP): the
browser gathers its candidates before sending the offer, and aiortc gathers ours before
:meth:`WebRTCPeer.answer` returns. No STUN/TURN server is configured: the admin page is on the
clinic LAN, host candidates suffice and nothing is contacted outside the box.

Resampling uses pipecat's stream resampler (soxr, as the TTS output does); PyAV only converts
the decoder's stereo layout to mono at the same rate. aiortc's Opus encoder resamples the
16 kHz agent audio to 48 kHz itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from av import AudioFrame, AudioResampler
from pipecat.audio.utils import create_stream_resampler

from appliance.audio.bridge import PTIME_MS, AudioBridge

_LOGGER = logging.getLogger(__name__)

#: Largest SDP offer accepted, bytes (a browser's audio-only offer is 2 to 6 KB).
MAX_SDP_BYTES = 64 * 1024


class WebRTCOfferError(ValueError):
    """The SDP offer cannot be answered (malformed, too large, or without audio)."""


class BridgeAudioTrack(MediaStreamTrack):
    """The agent's voice as an aiortc audio track, read from a call's bridge.

    Each :meth:`recv` returns one 20 ms frame of 16-bit mono PCM at ``bridge.sample_rate`` Hz
    (silence when nothing is queued) and is paced to real time like aiortc's own
    ``AudioStreamTrack``, so the bridge's outbound queue drains at the wire rate, exactly as
    pjmedia's clock drains it on a SIP call.
    """

    kind = "audio"

    def __init__(self, bridge: AudioBridge) -> None:
        super().__init__()
        self._bridge = bridge
        self._samples = bridge.sample_rate * PTIME_MS // 1000
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> AudioFrame:
        """The next 20 ms of agent audio.

        Raises:
            MediaStreamError: The track was stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        rate = self._bridge.sample_rate
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self._samples
            wait = self._start + self._pts / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(self._bridge.take_outbound())
        frame.pts = self._pts
        frame.sample_rate = rate
        frame.time_base = fractions.Fraction(1, rate)
        return frame


class WebRTCPeer:
    """One browser's peer connection, its audio bridged both ways to ``bridge``.

    Args:
        bridge: The call's audio bridge (16-bit mono PCM, 20 ms frames at its clock rate).
        on_connected: Called once when ICE and DTLS are up and the browser's audio track is
            there (the moment a SIP call's media would be ready).
        on_closed: Called once when the connection ends, failed, or is closed by either side.

    Attributes:
        codec: The negotiated audio codec, e.g. ``"opus"`` (after :meth:`answer`).
    """

    def __init__(
        self,
        bridge: AudioBridge,
        *,
        on_connected: Callable[[], None] | None = None,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.bridge = bridge
        self.codec = ""
        self._on_connected = on_connected
        self._on_closed = on_closed
        self._pc = RTCPeerConnection()
        self._output = BridgeAudioTrack(bridge)
        self._remote: MediaStreamTrack | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._connected = False
        self._closed = False
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._closed

    async def answer(self, sdp: str) -> str:
        """Answer the browser's offer; returns the answer SDP with our ICE candidates.

        Raises:
            WebRTCOfferError: The offer is too large, malformed, or has no audio section.
        """
        if len(sdp.encode()) > MAX_SDP_BYTES:
            raise WebRTCOfferError(f"SDP offer larger than {MAX_SDP_BYTES} bytes")
        if "\nm=audio " not in "\n" + sdp.replace("\r\n", "\n"):
            raise WebRTCOfferError("SDP offer has no audio section")
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc raises many types for a bad SDP
            raise WebRTCOfferError(f"malformed SDP offer ({type(exc).__name__})") from exc
        self._pc.addTrack(self._output)
        try:
            answer = await self._pc.createAnswer()
            await self._pc.setLocalDescription(answer)
        except Exception as exc:  # noqa: BLE001 - e.g. no codec in common
            raise WebRTCOfferError(f"offer cannot be answered ({type(exc).__name__})") from exc
        local = str(self._pc.localDescription.sdp)
        for media in SessionDescription.parse(local).media:
            if media.kind == "audio" and media.rtp.codecs and media.port:
                self.codec = media.rtp.codecs[0].mimeType.split("/")[-1].lower()
                break
        if not self.codec:
            raise WebRTCOfferError("no audio codec in common with the offer")
        return local

    async def close(self) -> None:
        """End the connection (idempotent); ``on_closed`` is called once."""
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._receiver
            self._receiver = None
        self._output.stop()
        with contextlib.suppress(Exception):
            await self._pc.close()
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_closed is not None:
            self._on_closed()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._remote is not None:
            return
        self._remote = track
        self._receiver = asyncio.create_task(self._receive(track), name="webrtc-receive")
        self._maybe_connected()

    async def _on_state(self) -> None:
        state = self._pc.connectionState
        _LOGGER.debug("WebRTC connection state %s", state)
        if state == "connected":
            self._maybe_connected()
        elif state in ("failed", "closed"):
            await self.close()

    def _maybe_connected(self) -> None:
        if self._connected or self._remote is None or self._pc.connectionState != "connected":
            return
        self._connected = True
        if self._on_connected is not None:
            self._on_connected()

    async def _receive(self, track: MediaStreamTrack) -> None:
        """Browser audio to the bridge: mono, soxr-resampled to the bridge clock, 20 ms frames."""
        rate = self.bridge.sample_rate
        size = self.bridge.frame_bytes
        mono: AudioResampler | None = None
        mono_rate = 0
        resampler = create_stream_resampler()
        pending = bytearray()
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, AudioFrame):
                    continue
                if mono is None or frame.sample_rate != mono_rate:
                    mono_rate = frame.sample_rate
                    mono = AudioResampler(format="s16", layout="mono", rate=mono_rate)
                for out in mono.resample(frame):
                    pcm = bytes(out.planes[0])[: out.samples * 2]
                    pending += await resampler.resample(pcm, mono_rate, rate)
                while len(pending) >= size:
                    self.bridge.put_inbound(bytes(pending[:size]))
                    del pending[:size]
        except MediaStreamError:
            _LOGGER.info("WebRTC: the browser's audio track ended")
            task = asyncio.current_task()
            if self._receiver is task:
                self._receiver = None
            await self.close()
