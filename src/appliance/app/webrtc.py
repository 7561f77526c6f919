"""Browser test calls over WebRTC: the agent's side of the admin page's "Talk to the agent".

A signed-in user's browser sends an SDP offer to the admin page, which forwards it over the
control socket (op ``webrtc.offer``, :mod:`appliance.control`). The agent answers it with an
aiortc peer (:class:`~appliance.pipeline.webrtc.WebRTCPeer`) bridged to a fresh
:class:`~appliance.audio.bridge.AudioBridge`, and hands a :class:`WebRTCCallHandle` to the
same call path as a SIP call (``ApplianceServer._on_call``): the same disclosure, workflows,
audit records, post-call score and metrics, with ``CallAnswered.channel == "webrtc"`` so test
calls are counted apart. A test call counts against ``[sip] max_calls`` like a SIP call.

Control ops (registered by :func:`register_webrtc`):

- ``webrtc.offer`` ``{"sdp": str, "type": "offer"}`` ->
  ``{"sdp": str, "type": "answer", "call_id": str}``; ``bad_request`` for a bad offer,
  ``unavailable`` when the agent is not ready, draining, or at capacity.
- ``webrtc.hangup`` ``{"call_id": str}`` -> ``{"call_id": str, "ended": true}``;
  ``not_found`` for an unknown or already ended test call.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.audio.bridge import AudioBridge
from appliance.control import ControlError, ControlServer
from appliance.media.calls import CallHandle

if TYPE_CHECKING:
    from appliance.app.server import ApplianceServer
    from appliance.pipeline.webrtc import WebRTCPeer

_LOGGER = logging.getLogger(__name__)

#: Test calls use the SIP bridge's clock, in Hz, so the pipeline is built the same way.
CLOCK_RATE = 16000
#: SIP status reported for a transfer asked for on a test call (488 Not Acceptable Here):
#: a browser cannot be REFERred, so the dialogue's transfer fallback is spoken instead.
TRANSFER_REFUSED = 488
#: The channel name test calls carry in ``CallAnswered`` and the metrics ``calls`` table.
CHANNEL = "webrtc"

_CALL_ID = re.compile(r"^[0-9a-f]{12}$")


@dataclass(eq=False)
class WebRTCCallHandle(CallHandle):
    """A browser test call seen through the SIP call handle's interface.

    ``hangup`` closes the peer connection (and marks the call disconnected at once); the SIP
    transfers cannot reach a browser, so they report :data:`TRANSFER_REFUSED` as final.
    """

    peer: WebRTCPeer | None = None
    transferable: bool = False

    def hangup(self, status: int = 200) -> None:
        """End the test call (idempotent); ``status`` is ignored (no SIP on this leg)."""
        self.bridge.close()
        if not self.disconnected.is_set():
            self.disconnected.set()
        if self.peer is not None and not self.peer.closed:
            asyncio.get_running_loop().create_task(self.peer.close())

    def transfer(self, target: str, headers: dict[str, str]) -> None:
        """Refuse at once: a browser test call cannot be transferred to a SIP target."""
        self._refuse_transfer()

    def transfer_replacing(self, consult: CallHandle, headers: dict[str, str]) -> None:
        """Refuse at once (see :meth:`transfer`)."""
        self._refuse_transfer()

    def _refuse_transfer(self) -> None:
        callback = self.on_transfer_status
        if callback is not None:
            asyncio.get_running_loop().call_soon(callback, TRANSFER_REFUSED, True)


class WebRTCCalls:
    """The test calls of one agent process.

    Args:
        server: The running agent; its settings, capacity and call path are used.
    """

    def __init__(self, server: ApplianceServer) -> None:
        self._server = server
        self.calls: dict[str, WebRTCCallHandle] = {}

    def active(self) -> int:
        """Test calls in progress (read by SIP admission on the pjsua2 thread)."""
        return len(self.calls)

    async def offer(self, args: dict[str, Any], actor: str) -> dict[str, str]:
        """The ``webrtc.offer`` op: answer a browser's offer and start the test call.

        Raises:
            ControlError: ``bad_request`` (no SDP string, ``type`` not ``"offer"``, an offer
                aiortc cannot answer), ``unavailable`` (not ready, draining, at capacity).
        """
        sdp = args.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise ControlError("bad_request", "sdp must be a non-empty string")
        if args.get("type", "offer") != "offer":
            raise ControlError("bad_request", "type must be 'offer'")
        self._check_capacity()
        # aiortc and PyAV (FFmpeg's libraries) load with the first test call, not with the
        # agent: a worker that never takes one never maps them.
        from appliance.pipeline.webrtc import WebRTCOfferError, WebRTCPeer

        handle = WebRTCCallHandle(
            call_id=uuid.uuid4().hex[:12], bridge=AudioBridge(CLOCK_RATE), peer_ip=""
        )
        peer = WebRTCPeer(
            handle.bridge, on_connected=handle.media_ready.set, on_closed=handle.disconnected.set
        )
        handle.peer = peer
        try:
            answer = await peer.answer(sdp)
        except WebRTCOfferError as exc:
            await peer.close()
            raise ControlError("bad_request", str(exc)) from exc
        try:
            # Answering took a moment: check again so that the count never overshoots.
            self._check_capacity()
        except ControlError:
            await peer.close()
            raise
        handle.codec = peer.codec
        self.calls[handle.call_id] = handle
        self._server._on_call(handle, channel=CHANNEL)
        task = self._server._calls[handle.call_id]
        task.add_done_callback(lambda _t: self.calls.pop(handle.call_id, None))
        _LOGGER.info("test call %s (WebRTC, %s) placed by %s", handle.call_id, peer.codec, actor)
        return {"sdp": answer, "type": "answer", "call_id": handle.call_id}

    def _check_capacity(self) -> None:
        """Refuse when SIP would refuse: not started, draining (or failed closed), or full.

        Active calls are the agent's call tasks (SIP and test calls alike) against
        ``[sip] max_calls``.

        Raises:
            ControlError: ``unavailable``.
        """
        server = self._server
        ua = server._ua
        if ua is None or ua.draining or server._stop.is_set():
            raise ControlError("unavailable", "the agent is not taking calls now")
        if len(server._calls) >= server.settings.sip.max_calls:
            raise ControlError("unavailable", "all call slots are in use")

    async def hangup(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """The ``webrtc.hangup`` op: end a test call.

        Raises:
            ControlError: ``bad_request`` (no well-formed ``call_id``), ``not_found``.
        """
        call_id = args.get("call_id")
        if not isinstance(call_id, str) or not _CALL_ID.match(call_id):
            raise ControlError("bad_request", "call_id must be a 12-character hex id")
        handle = self.calls.pop(call_id, None)
        if handle is None:
            raise ControlError("not_found", f"no test call {call_id}")
        _LOGGER.info("test call %s hung up by %s", call_id, actor)
        handle.hangup()
        return {"call_id": call_id, "ended": True}

    async def close(self) -> None:
        """Hang up every test call (the agent is stopping)."""
        for handle in list(self.calls.values()):
            handle.hangup()


def register_webrtc(server: ApplianceServer, control: ControlServer) -> WebRTCCalls:
    """Register ``webrtc.offer`` and ``webrtc.hangup`` on the agent's control server.

    Raises:
        ValueError: The ops are already registered.
    """
    calls = WebRTCCalls(server)
    control.register("webrtc.offer", calls.offer)
    control.register("webrtc.hangup", calls.hangup)
    return calls
