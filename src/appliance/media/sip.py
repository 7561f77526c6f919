"""pjsua2 SIP user agent: trunk ACL, capacity, answer, DTMF, REFER out (transfer) and in.

One dedicated thread owns the pjsua2 :class:`Endpoint` (``threadCnt=0``,
``mainThreadOnly=True``) and polls ``libHandleEvents``; every pjsua2 API call is marshalled
onto it through :meth:`SipUserAgent.submit`. Call events reach asyncio through
``loop.call_soon_threadsafe``. Media callbacks run on the conference-bridge clock thread and
only touch the call's :class:`~appliance.audio.bridge.AudioBridge`.

Lifetimes (measured, see ``shared/TELEPHONY.md`` and ADR 0010):

* Media ports are created once and reused from call to call (:class:`_PortPool`); a call
  only attaches and detaches its bridge. pjmedia calls a registered port every 20 ms whether
  or not it is connected, so destroying one from Python while the endpoint runs races the
  clock thread; that race made the agent go silent for good.
* ``Call`` objects are kept in one dict and dropped only after DISCONNECTED, outside the
  callback; ``gc.collect()`` runs before ``libDestroy()``.
* Every director callback is wrapped (:func:`_guarded`): no exception returns into pjsua2, and
  each is logged with its traceback; media callback failures are counted per call instead
  (``BridgeStats.callback_errors``) and their first traceback is logged.
* A REFER from the far end is declined with 603 unless the user agent was built to follow
  it (test clients); pjsua's default would dial any ``Refer-To`` with a reused ``Call``.

The PyPI wheel caps a process at 4 pjsua calls, so at most 3 are accepted and the 4th slot
answers ``503`` + ``Retry-After`` itself. Logs carry the opaque call id and the trunk peer
address, never the caller's number.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

from appliance.audio.bridge import PTIME_MS, AudioBridge
from appliance.config.settings import SipSettings
from appliance.errors import MediaError

_LOGGER = logging.getLogger(__name__)

DTMF_RFC4733 = "rfc4733"
DTMF_SIP_INFO = "sip-info"


@dataclass
class CallHandle:
    """Our view of one SIP call, safe to use from asyncio.

    Attributes:
        call_id: Opaque id used in logs, metrics and events (not the SIP Call-ID).
        bridge: The call's audio queues (16-bit mono PCM at the bridge clock rate).
        codec: Negotiated codec name once media is up, e.g. ``"PCMU"``.
        peer_ip: Source address of the INVITE (the trunk peer).
    """

    call_id: str
    bridge: AudioBridge
    peer_ip: str = ""
    codec: str = ""
    answered_at: float | None = None
    ended_at: float | None = None
    end_status: int | None = None
    on_media_ready: Callable[[], None] | None = None
    on_dtmf: Callable[[str, str], None] | None = None
    on_disconnected: Callable[[int, str], None] | None = None
    #: Called with (SIP status, final) for each transfer progress report (REFER response, NOTIFY).
    on_transfer_status: Callable[[int, bool], None] | None = None
    #: What became of each REFER the far end sent on this call: ``"declined"`` or ``"followed"``.
    refers: list[str] = field(default_factory=list)
    media_ready: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    _ua: SipUserAgent | None = None
    _pj_id: int = -1

    def hangup(self, status: int = 200) -> None:
        """End the call (BYE, or a final response if not yet answered). Idempotent."""
        if self._ua is not None and not self.disconnected.is_set():
            self._ua.submit(lambda: self._ua._hangup(self._pj_id, status))  # type: ignore[union-attr]

    def transfer_replacing(self, consult: CallHandle, headers: dict[str, str]) -> None:
        """Attended transfer: REFER with ``Replaces`` (RFC 3891) naming our ``consult`` call.

        The caller's side is asked to call the consulted party with a ``Replaces`` header, so
        the staff member who already answered the consult call takes over the caller. Progress
        arrives through :attr:`on_transfer_status` like :meth:`transfer`.
        """
        if self._ua is not None and not self.disconnected.is_set():
            ua = self._ua
            ua.submit(lambda: ua._xfer_replaces(self._pj_id, consult._pj_id, headers))

    def transfer(self, target: str, headers: dict[str, str]) -> None:
        """Blind transfer (RFC 3515 REFER, RFC 5589 call-transfer practice) to ``target``.

        ``target`` is a SIP URI (a queue or extension from the config); ``headers`` are extra
        SIP headers for the REFER (the non-PHI handoff id only). Progress arrives through
        :attr:`on_transfer_status` as (status, final): the REFER's response, then the status
        line of each NOTIFY's ``message/sipfrag`` body.
        """
        if self._ua is not None and not self.disconnected.is_set():
            self._ua.submit(lambda: self._ua._xfer(self._pj_id, target, headers))  # type: ignore[union-attr]


def _guarded(what: str) -> Callable[[Callable[[Any, Any], None]], Callable[[Any, Any], None]]:
    """Wrap a pjsua2 director callback so that no exception ever returns into pjsua2.

    An exception escaping a SWIG director becomes a C++ exception thrown through pjsip's C
    frames: at best the process aborts, at worst a lock stays held and the agent goes silent.
    Every failure is logged with its traceback instead (never with call content).
    """

    def decorate(fn: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        @functools.wraps(fn)
        def callback(self: Any, prm: Any) -> None:
            try:
                fn(self, prm)
            except BaseException:  # noqa: BLE001 - nothing may reach pjsua2
                try:
                    _LOGGER.exception("pjsua2 %s callback failed (%s)", what, self)
                except BaseException:  # noqa: BLE001, S110 - logging itself failed
                    pass

        return callback

    return decorate


class _Port(pj.AudioMediaPort):
    """AudioMediaPort moving 20 ms PCM frames between the bridge clock and an AudioBridge.

    Its callbacks run on pjmedia's clock thread for as long as the port is registered with the
    conference bridge, connected or not (it gets a NULL frame every 20 ms even with nothing
    connected). So a port is never destroyed while the endpoint runs: :class:`_PortPool` hands
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
        bridge = None
        try:
            bridge = self.bridge
            if bridge is not None and frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
                bridge.put_inbound(bytes(frame.buf))
        except BaseException:  # noqa: BLE001 - never raise into the media thread
            self._failed(bridge)

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:  # noqa: N802 - pjsua2 API
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
                    "%s: media callback failed (logged once per call, counted as "
                    "callback_errors)",
                    self.name,
                )
        except BaseException:  # noqa: BLE001, S110 - the clock thread must go on
            pass


class _PortPool:
    """The media ports of one endpoint, reused across calls (pjsua2 thread only).

    A released port is handed out again only after :attr:`COOLDOWN_S` and once the conference
    bridge reports no connection from it: removing a call's stream from the bridge is queued
    to the clock thread, so it completes a tick or two after the call's DISCONNECTED.
    """

    COOLDOWN_S = 0.5

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._free: list[_Port] = []
        self._all: list[_Port] = []

    @property
    def size(self) -> int:
        """Ports created so far (bounded by the most concurrent calls plus a spare or two)."""
        return len(self._all)

    def acquire(self, bridge: AudioBridge) -> _Port:
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
        port = _Port(f"agent-port-{len(self._all)}")
        port.createPort(port.name, fmt)
        self._all.append(port)
        port.bridge = bridge
        return port

    def release(self, port: _Port) -> None:
        """Detach the port from its call (its callbacks turn into no-ops at once)."""
        port.bridge = None
        port.released_at = time.monotonic()
        if port not in self._free:
            self._free.append(port)

    @staticmethod
    def _connected(port: _Port) -> bool:
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


class _Call(pj.Call):
    def __init__(self, ua: SipUserAgent, acc: pj.Account, pj_id: int, handle: CallHandle) -> None:
        pj.Call.__init__(self, acc, pj_id)
        self.ua = ua
        self.handle = handle
        self.pj_id = pj_id
        self.port: _Port | None = None
        self.accepted = False
        self.ended = False
        #: A call placed to follow a REFER from this one, until pjsua2 has given it an id.
        self.pending_child: _Call | None = None
        self._last_dtmf: tuple[str, float] = ("", 0.0)

    def __repr__(self) -> str:
        return f"call {self.handle.call_id}"

    def _track(self) -> None:
        """Register a call placed by pjsua for a REFER once pjsua2 has given it an id."""
        if self.pj_id == pj.PJSUA_INVALID_ID:
            self.pj_id = self.getId()
            if self.pj_id != pj.PJSUA_INVALID_ID:
                self.ua._calls[self.pj_id] = self

    @_guarded("call state")
    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802
        self._track()
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.handle.answered_at = time.time()
            if self.handle._pj_id != self.pj_id:
                # A followed REFER was answered: the handle now speaks for this call.
                self.handle._pj_id = self.pj_id
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.ua._on_disconnected(self, info.lastStatusCode, info.lastReason)

    @_guarded("media state")
    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        self._track()
        if self.ended:
            return
        info = self.getInfo()
        for i, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue  # on hold or not yet up: keep the port, reconnect later
            audio = self.getAudioMedia(i)
            if self.port is None:
                self.port = self.ua._ports.acquire(self.handle.bridge)
                self.ua._detach_others(self)
            # Re-INVITEs may re-create the stream: (re)connecting is idempotent.
            audio.startTransmit(self.port)
            self.port.startTransmit(audio)
            try:
                self.handle.codec = self.getStreamInfo(i).codecName
            except pj.Error:
                pass
            self.ua._post(self.handle.media_ready.set)
            if self.handle.on_media_ready is not None:
                self.ua._post(self.handle.on_media_ready)
            break

    def _dtmf(self, digit: str, method: str) -> None:
        now = time.monotonic()
        # pjsua2 may report one digit through both callbacks; keep the first.
        if self._last_dtmf[0] == f"{method}:{digit}" and now - self._last_dtmf[1] < 0.08:
            return
        self._last_dtmf = (f"{method}:{digit}", now)
        if self.handle.on_dtmf is not None:
            cb = self.handle.on_dtmf
            self.ua._post(lambda: cb(digit, method))

    @_guarded("DTMF")
    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802
        method = DTMF_SIP_INFO if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else DTMF_RFC4733
        self._dtmf(str(prm.digit), method)

    @_guarded("DTMF event")
    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:  # noqa: N802
        if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO:
            self._dtmf(str(prm.digit), DTMF_SIP_INFO)

    @_guarded("transfer status")
    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:  # noqa: N802
        status, final = int(prm.statusCode), bool(prm.finalNotify)
        prm.cont = not final
        cb = self.handle.on_transfer_status
        if cb is not None:
            self.ua._post(lambda: cb(status, final))

    @_guarded("transfer request")
    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:  # noqa: N802
        """A REFER from the far end (RFC 3515): declined with 603 unless following is enabled.

        pjsua's default accepts every REFER and dials ``Refer-To`` itself, reusing this
        ``Call`` object for the new call: the box would dial wherever a peer says, and the
        reused object is deleted with the first call while the new one still points at it.
        """
        refers = self.handle.refers
        if not self.ua.follow_refer or self.ended:
            prm.statusCode = 603
            _LOGGER.info("call %s: REFER declined (603)", self.handle.call_id)
            self.ua._post(lambda: refers.append("declined"))
            return
        child = _Call(self.ua, self.ua._acc, pj.PJSUA_INVALID_ID, self.handle)  # type: ignore[arg-type]
        child.accepted = self.accepted
        self.pending_child = child
        prm.newCall = child
        self.ua._post(lambda: refers.append("followed"))
        _LOGGER.info("call %s: REFER accepted, calling the transfer target", self.handle.call_id)


class _Account(pj.Account):
    def __init__(self, ua: SipUserAgent) -> None:
        pj.Account.__init__(self)
        self.ua = ua

    def __repr__(self) -> str:
        return "account"

    @_guarded("incoming call")
    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        self.ua._on_incoming(self, prm)


def _source_ip(src_address: str) -> str:
    """Return the IP part of pjsip's ``srcAddress`` (``1.2.3.4:5060`` or ``[::1]:5060``)."""
    if src_address.startswith("["):
        return src_address[1:].split("]", 1)[0]
    return src_address.rsplit(":", 1)[0]


def _header_vector(headers: dict[str, str]) -> pj.SipHeaderVector:
    """Extra SIP headers (name -> value) for a request's ``txOption``."""
    vector = pj.SipHeaderVector()
    for name, value in headers.items():
        header = pj.SipHeader()
        header.hName, header.hValue = name, value
        vector.append(header)
    return vector


class SipUserAgent:
    """The appliance's SIP user agent (server side for the trunk, client side for tests).

    Args:
        settings: SIP settings (bind address, allowlist, capacity, codecs).
        loop: The asyncio loop that receives call events.
        on_incoming: Called on ``loop`` with each answered :class:`CallHandle`. If ``None``,
            incoming calls are refused with 403 (client mode).
        clock_rate: Conference bridge clock in Hz; G.711 (8 kHz) is resampled to it by pjmedia.
        on_rejected: Called on ``loop`` with (peer_ip, status, reason) for refused INVITEs.
        follow_refer: Follow a REFER from the far end by calling its ``Refer-To`` target (a
            test client standing in for a phone). ``False`` (the default, and always for the
            agent) declines every REFER with ``603``.
    """

    def __init__(
        self,
        settings: SipSettings,
        loop: asyncio.AbstractEventLoop,
        on_incoming: Callable[[CallHandle], None] | None,
        *,
        clock_rate: int = 16000,
        on_rejected: Callable[[str, int, str], None] | None = None,
        follow_refer: bool = False,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.clock_rate = clock_rate
        self.follow_refer = follow_refer
        self._destroy_on_stop = True
        self._on_incoming_cb = on_incoming
        self._on_rejected_cb = on_rejected
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._calls: dict[int, _Call] = {}
        self._dead: list[_Call] = []
        #: Ended calls kept until a REFER-placed child of theirs has its own id (pjsua2 finds
        #: the child through its parent's object until then).
        self._parents: list[_Call] = []
        self._ports = _PortPool(clock_rate)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.draining = False
        #: ``time.monotonic()`` of the last turn of the pjsua2 event loop.
        self.health_tick = time.monotonic()
        #: ``time.monotonic()`` of the last liveness probe the asyncio loop ran, or ``None``
        #: when nothing probes (client mode). INVITEs are refused with 503 while it is stale.
        self.loop_heartbeat: float | None = None
        self._ep: pj.Endpoint | None = None
        self._acc: _Account | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the pjsua2 thread and bind the transport.

        Raises:
            MediaError: The endpoint failed to start (e.g. the port is in use).
        """
        self._thread = threading.Thread(target=self._run, name="pjsua2", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise MediaError("sip_start_timeout", "pjsua2 did not start in time")
        if self._error is not None:
            raise MediaError("sip_start_failed", f"{self._error}") from self._error

    def stop(self, timeout: float = 5.0, *, destroy: bool = True) -> None:
        """Hang up all calls, then destroy the endpoint (or, with ``destroy=False``, leave it).

        ``destroy=False`` is for a process about to exit: the calls are ended and their BYEs
        sent, but the endpoint, its media ports and pjlib are left to process exit.
        """
        self._destroy_on_stop = destroy
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def active_calls(self) -> int:
        """Calls accepted and not yet disconnected."""
        return sum(1 for c in list(self._calls.values()) if c.accepted and not c.ended)

    @property
    def media_ports(self) -> int:
        """Media ports created so far (they are reused, never destroyed while serving)."""
        return self._ports.size

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the pjsua2 thread."""
        self._commands.put(fn)

    def probe(self) -> asyncio.Future[float]:
        """Round trip through the pjsua2 thread's command queue and back to the loop.

        Call on the loop's thread. The future resolves with the round-trip time in seconds once
        the pjsua2 thread has run a no-op command and the loop has run its reply; it never
        resolves while either is stuck.
        """
        fut: asyncio.Future[float] = self.loop.create_future()
        t0 = time.monotonic()

        def on_loop() -> None:
            if not fut.done():
                fut.set_result(time.monotonic() - t0)

        self.submit(lambda: self._post(on_loop))
        return fut

    def _post(self, fn: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass  # loop closed while shutting down

    # -- pjsua2 thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._init_endpoint()
        except BaseException as exc:  # noqa: BLE001
            self._error = exc
            self._ready.set()
            self._destroy()
            return
        self._ready.set()
        while not self._stop.is_set():
            self._ep.libHandleEvents(10)  # type: ignore[union-attr]
            self.health_tick = time.monotonic()
            while True:
                try:
                    fn = self._commands.get_nowait()
                except queue.Empty:
                    break
                try:
                    fn()
                except Exception:  # noqa: BLE001
                    _LOGGER.exception("pjsua2 command failed")
            if self._dead or self._parents:
                self._reap()
        if self._destroy_on_stop:
            self._destroy()
        else:
            self._quiesce()

    def _init_endpoint(self) -> None:
        ep = pj.Endpoint()
        self._ep = ep
        # pjlib prints its start-up banner to stdout before libInit applies our log levels;
        # stdout is not ours to write to (`appliance call` prints its JSON report there).
        saved = os.dup(1)
        try:
            os.dup2(2, 1)
            self._init_lib(ep)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        self._init_media_and_transport()

    def _init_lib(self, ep: pj.Endpoint) -> None:
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 4
        cfg.uaConfig.userAgent = self.settings.user_agent
        cfg.medConfig.clockRate = self.clock_rate
        cfg.medConfig.sndClockRate = self.clock_rate
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.audioFramePtime = PTIME_MS
        cfg.logConfig.level = 1
        cfg.logConfig.consoleLevel = 1
        ep.libInit(cfg)

    def _init_media_and_transport(self) -> None:
        ep = self._ep
        assert ep is not None
        ep.audDevManager().setNullDev()
        wanted = {
            c.split("/")[0].upper(): len(self.settings.codecs) - i
            for i, c in enumerate(self.settings.codecs)
        }
        for codec in ep.codecEnum2():
            name = codec.codecId.split("/")[0].upper()
            ep.codecSetPriority(codec.codecId, 128 + wanted[name] if name in wanted else 0)
        tcfg = pj.TransportConfig()
        tcfg.port = self.settings.port
        tcfg.boundAddress = self.settings.host
        try:
            ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        except pj.Error as exc:
            raise MediaError(
                "sip_bind_failed", f"cannot bind SIP to {self.settings.bind}: {exc.reason}"
            ) from exc
        ep.libStart()
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:appliance@{self.settings.bind}"
        acfg.mediaConfig.transportConfig.port = self.settings.rtp_port
        acfg.mediaConfig.transportConfig.portRange = 1000
        acfg.mediaConfig.transportConfig.boundAddress = self.settings.host
        acc = _Account(self)
        acc.create(acfg, True)
        self._acc = acc

    def _reject(
        self, call: _Call, status: int, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        op = pj.CallOpParam(True)
        op.statusCode = status
        op.reason = reason
        for name, value in (headers or {}).items():
            h = pj.SipHeader()
            h.hName = name
            h.hValue = value
            op.txOption.headers.append(h)
        # answer() with a final non-2xx code sends it with our headers; hangup() drops them.
        call.answer(op)

    def _loop_stalled(self) -> bool:
        beat = self.loop_heartbeat
        return beat is not None and time.monotonic() - beat > self.settings.liveness_timeout_s / 2

    def _on_incoming(self, acc: _Account, prm: pj.OnIncomingCallParam) -> None:
        peer = _source_ip(prm.rdata.srcAddress)
        handle = CallHandle(
            call_id=uuid.uuid4().hex[:12],
            bridge=AudioBridge(self.clock_rate),
            peer_ip=peer,
            _ua=self,
            _pj_id=prm.callId,
        )
        call = _Call(self, acc, prm.callId, handle)
        self._calls[prm.callId] = call
        if self._on_incoming_cb is None or not self.settings.peer_allowed(peer):
            _LOGGER.warning("call %s refused: source %s is not a trunk peer", handle.call_id, peer)
            self._reject(call, 403, "Forbidden")
            self._notify_rejected(peer, 403, "not_allowed")
            return
        stalled = self._loop_stalled()
        if self.draining or stalled or self.active_calls >= self.settings.max_calls:
            why = "draining" if self.draining else "stalled" if stalled else "at_capacity"
            _LOGGER.warning("call %s refused with 503: %s", handle.call_id, why)
            self._reject(
                call, 503, "Service Unavailable", {"Retry-After": str(self.settings.retry_after_s)}
            )
            self._notify_rejected(peer, 503, why)
            return
        call.accepted = True
        op = pj.CallOpParam(True)
        op.statusCode = 200
        call.answer(op)
        _LOGGER.info("call %s answered (peer %s)", handle.call_id, peer)
        cb = self._on_incoming_cb
        self._post(lambda: cb(handle))

    def _notify_rejected(self, peer: str, status: int, reason: str) -> None:
        if self._on_rejected_cb is not None:
            cb = self._on_rejected_cb
            self._post(lambda: cb(peer, status, reason))

    def _live_calls(self, handle: CallHandle) -> list[_Call]:
        return [c for c in self._calls.values() if c.handle is handle and not c.ended]

    def _detach_others(self, call: _Call) -> None:
        """A call sharing ``call``'s handle (a followed REFER) got media: free the old port."""
        for other in self._live_calls(call.handle):
            if other is not call and other.port is not None:
                self._ports.release(other.port)
                other.port = None

    def _on_disconnected(self, call: _Call, status: int, reason: str) -> None:
        if call.ended:
            return
        call.ended = True
        if call.port is not None:
            self._ports.release(call.port)  # its callbacks are no-ops from here on
            call.port = None
        self._dead.append(call)
        handle = call.handle
        if self._live_calls(handle):
            return  # a followed REFER carries the caller's side on
        handle.ended_at = time.time()
        handle.end_status = status
        handle.bridge.close()
        self._post(handle.disconnected.set)
        if handle.on_disconnected is not None and call.accepted:
            cb = handle.on_disconnected
            self._post(lambda: cb(status, reason))

    def _reap(self) -> None:
        """Drop ended calls' Python objects, outside any pjsua2 callback.

        A parent whose REFER-placed child has no id yet is kept: until the child's first event
        pjsua2 reaches the child through the parent's object.
        """
        dead, self._dead = self._dead, []
        for call in dead:
            if self._calls.get(call.pj_id) is call:
                del self._calls[call.pj_id]
            child = call.pending_child
            if child is not None and child.pj_id == pj.PJSUA_INVALID_ID:
                self._parents.append(call)
        self._parents = [
            c
            for c in self._parents
            if c.pending_child is not None and c.pending_child.pj_id == pj.PJSUA_INVALID_ID
        ]

    def _hangup(self, pj_id: int, status: int) -> None:
        call = self._calls.get(pj_id)
        if call is None or call.ended:
            return
        op = pj.CallOpParam(True)
        op.statusCode = status
        try:
            call.hangup(op)
        except pj.Error:
            pass

    def _xfer(self, pj_id: int, target: str, headers: dict[str, str]) -> None:
        call = self._calls.get(pj_id)
        if call is None or call.ended:
            return
        op = pj.CallOpParam(True)
        op.txOption.headers = _header_vector(headers)
        try:
            call.xfer(target, op)
        except pj.Error as exc:
            _LOGGER.warning(
                "call %s: REFER could not be sent (%s)", call.handle.call_id, exc.reason
            )
            cb = call.handle.on_transfer_status
            if cb is not None:
                self._post(lambda: cb(500, True))

    def _xfer_replaces(self, pj_id: int, other_id: int, headers: dict[str, str]) -> None:
        call, other = self._calls.get(pj_id), self._calls.get(other_id)
        if call is None or other is None or call.ended or other.ended:
            cb = call.handle.on_transfer_status if call is not None else None
            if cb is not None:
                self._post(lambda: cb(481, True))
            return
        op = pj.CallOpParam(True)
        op.txOption.headers = _header_vector(headers)
        try:
            call.xferReplaces(other, op)
        except pj.Error as exc:
            _LOGGER.warning(
                "call %s: REFER/Replaces not sent (%s)", call.handle.call_id, exc.reason
            )
            cb = call.handle.on_transfer_status
            if cb is not None:
                self._post(lambda: cb(500, True))

    def make_call(
        self, uri: str, handle: CallHandle, headers: dict[str, str] | None = None
    ) -> None:
        """Place an outgoing call (client mode, or an attended transfer's consult call).

        ``headers`` are extra SIP headers for the INVITE (the non-PHI handoff id). If pjsua
        refuses to place it (a malformed URI, no free call slot), the handle ends at once
        with ``end_status`` 500.
        """

        def place() -> None:
            call = _Call(self, self._acc, pj.PJSUA_INVALID_ID, handle)  # type: ignore[arg-type]
            call.accepted = True
            op = pj.CallOpParam(True)
            if headers:
                op.txOption.headers = _header_vector(headers)
            handle._ua = self
            try:
                call.makeCall(uri, op)
            except pj.Error as exc:
                _LOGGER.warning("call %s could not be placed (%s)", handle.call_id, exc.reason)
                handle.ended_at = time.time()
                handle.end_status = 500
                handle.bridge.close()
                self._post(handle.disconnected.set)
                return
            call.pj_id = call.getId()
            handle._pj_id = call.pj_id
            if not call.ended:
                self._calls[call.pj_id] = call

        self.submit(place)

    # -- test-only fault hook -----------------------------------------------------------------

    def stall_for_test(self) -> None:
        """Block the pjsua2 thread for good (the liveness test's stand-in for a deadlock)."""
        _LOGGER.critical("TEST FAULT: stalling the SIP thread on purpose")
        self.submit(threading.Event().wait)

    # -- teardown -----------------------------------------------------------------------------

    def _quiesce(self) -> None:
        """End every call and let pjsua2 send the BYEs; keep the endpoint for process exit."""
        ep = self._ep
        if ep is None:
            return
        try:
            ep.hangupAllCalls()
            for _ in range(30):
                ep.libHandleEvents(10)
        except Exception:  # noqa: BLE001
            pass

    def _destroy(self) -> None:
        ep = self._ep
        if ep is None:
            return
        try:
            ep.hangupAllCalls()
            for _ in range(30):
                ep.libHandleEvents(10)
        except Exception:  # noqa: BLE001
            pass
        # No call is connected any more: the ports go while their Python side is whole.
        self._ports.destroy()
        self._calls.clear()
        self._dead.clear()
        self._parents.clear()
        gc.collect()
        if self._acc is not None:
            try:
                self._acc.shutdown()
            except Exception:  # noqa: BLE001
                pass
            self._acc = None
        gc.collect()
        try:
            ep.libDestroy()
        except Exception:  # noqa: BLE001
            pass
        self._ep = None
