"""Media ports between pjmedia's conference bridge and the calls' audio bridges.

pjmedia calls every registered port from its clock thread every 20 ms, connected or not, so a
port must outlive every callback: ports are pooled for the life of the endpoint and only
destroyed at endpoint teardown, once nothing is connected (ADR 0010).
"""

from __future__ import annotations

import logging
import time

import pjsua2 as pj

from appliance.audio.bridge import PTIME_MS, AudioBridge

_LOGGER = logging.getLogger("appliance.media.sip")


class MediaPort(pj.AudioMediaPort):
    """AudioMediaPort moving 20 ms PCM frames between the bridge clock and an AudioBridge.

    Its callbacks run on pjmedia's clock thread for as long as the port is registered with the
    conference bridge, connected or not (it gets a NULL frame every 20 ms even with nothing
    connected). So a port is never destroyed while the endpoint runs: :class:`PortPool` hands
    it from call to call, and a call only attaches and detaches its :class:`AudioBridge`.
    Destroying a registered port from Python raced the clock thread: the clock thread held the
    port's lock and called into a half-deallocated Python object (``'_Port' object has no
    attribute 'bridge'``), the exception left the lock held, and the SIP thread blocked for
    good on it.
    """

    def __init__(self, name: str) -> None:
        pj.AudioMediaPort.__init__(self)
        self.name = name
        #: The call's audio queues while a call holds the port; ``None`` while it is free.
        self.bridge: AudioBridge | None = None
        #: Callback failures while no call held the port.
        self.idle_errors = 0
        self.released_at = 0.0

    def __repr__(self) -> str:
        return f"port {self.name}"

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:  # noqa: N802 - pjsua2 API
        """A 20 ms frame of caller audio (16-bit mono PCM at the bridge clock) for the call."""
        bridge = None
        try:
            bridge = self.bridge
            if bridge is not None and frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
                bridge.put_inbound(bytes(frame.buf))
        except BaseException:  # noqa: BLE001 - never raise into the media thread
            self._failed(bridge)

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:  # noqa: N802 - pjsua2 API
        """The next 20 ms of agent audio; silence when none is queued, nothing when idle."""
        bridge = None
        try:
            bridge = self.bridge
            if bridge is None:
                frame.type = pj.PJMEDIA_FRAME_TYPE_NONE
                frame.size = 0
                return
            chunk = bridge.take_outbound()
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.buf = pj.ByteVector(chunk)
            frame.size = len(chunk)
        except BaseException:  # noqa: BLE001
            self._failed(bridge)

    def _failed(self, bridge: AudioBridge | None) -> None:
        """Count a callback failure on the call's bridge; log its traceback once per call."""
        try:
            if bridge is None:
                self.idle_errors += 1
                return
            bridge.stats.callback_errors += 1
            if bridge.stats.callback_errors == 1:
                _LOGGER.exception(
                    "%s: media callback failed (logged once per call, counted as callback_errors)",
                    self.name,
                )
        except BaseException:  # noqa: BLE001, S110 - the clock thread must go on
            pass


class PortPool:
    """The media ports of one endpoint, reused across calls (pjsua2 thread only).

    A released port is handed out again only after :attr:`COOLDOWN_S` and once the conference
    bridge reports no connection from it: removing a call's stream from the bridge is queued
    to the clock thread, so it completes a tick or two after the call's DISCONNECTED.
    """

    COOLDOWN_S = 0.5

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._free: list[MediaPort] = []
        self._all: list[MediaPort] = []

    @property
    def size(self) -> int:
        """Ports created so far (bounded by the most concurrent calls plus a spare or two)."""
        return len(self._all)

    def acquire(self, bridge: AudioBridge) -> MediaPort:
        """A port attached to ``bridge``; an idle one if any, else a new one.

        Raises:
            pj.Error: pjmedia could not create or register a new port.
        """
        now = time.monotonic()
        for port in self._free:
            if now - port.released_at >= self.COOLDOWN_S and not self._connected(port):
                self._free.remove(port)
                port.bridge = bridge
                return port
        fmt = pj.MediaFormatAudio()
        fmt.type = pj.PJMEDIA_TYPE_AUDIO
        fmt.init(pj.PJMEDIA_FORMAT_PCM, self.clock_rate, 1, PTIME_MS * 1000, 16)
        port = MediaPort(f"agent-port-{len(self._all)}")
        port.createPort(port.name, fmt)
        self._all.append(port)
        port.bridge = bridge
        return port

    def release(self, port: MediaPort) -> None:
        """Detach the port from its call (its callbacks turn into no-ops at once)."""
        port.bridge = None
        port.released_at = time.monotonic()
        if port not in self._free:
            self._free.append(port)

    @staticmethod
    def _connected(port: MediaPort) -> bool:
        try:
            return bool(port.getPortInfo().listeners)
        except pj.Error:
            return True

    def destroy(self) -> None:
        """Destroy every port while its Python object is whole (endpoint teardown only).

        Call once no call is connected; the C++ destructor waits for any callback in flight
        (the binding releases the GIL while it does), then the port is never called again.
        """
        for port in self._all:
            port.bridge = None
            try:
                pj.AudioMediaPort.__swig_destroy__(port)
            except Exception:  # noqa: BLE001
                _LOGGER.exception("%s: could not be destroyed", port.name)
        self._free.clear()
        self._all.clear()
