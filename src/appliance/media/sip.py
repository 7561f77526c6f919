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
* INVITEs are decided inside ``onIncomingCall`` but answered from the command queue after it
  returns: a refusal given inside it to an INVITE without an SDP offer made pjsua2 free a NULL
  ``rdata`` clone and abort the process (ADR 0018).
* An INVITE with ``Replaces`` naming a caller is refused with 403, a presence SUBSCRIBE with
  403; a call answered and never ACKed ends after ``[sip] ack_timeout_s`` (Timer H), and one
  whose inbound RTP stops after ``[sip] rtp_timeout_s`` (ADR 0018).

The PyPI wheel caps a process at 4 pjsua calls, so at most 3 are accepted and the 4th slot
answers ``503`` + ``Retry-After`` itself. Logs carry the opaque call id and the trunk peer
address, never the caller's number.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable

import pjsua2 as pj

from appliance.audio.bridge import AudioBridge
from appliance.config.settings import SipSettings
from appliance.errors import MediaError
from appliance.media.admission import Admission, admit
from appliance.media.calls import (
    DTMF_RFC4733,
    DTMF_SIP_INFO,
    CallHandle,
    SipAccount,
    SipCall,
    source_ip,
)
from appliance.media.endpoint import account_config, start_endpoint
from appliance.media.ports import PortPool

__all__ = ["DTMF_RFC4733", "DTMF_SIP_INFO", "CallHandle", "SipUserAgent"]

_LOGGER = logging.getLogger(__name__)

#: Seconds between the checks for calls with no ACK or no inbound RTP.
WATCH_INTERVAL_S = 0.5

#: Longest host pjlib takes in a socket address (``PJ_MAX_HOSTNAME`` is 254 with the NUL).
MAX_SDP_HOST = 253


def offer_host_too_long(message: str) -> bool:
    """True if an SDP ``c=`` or ``a=rtcp:`` line in ``message`` has a token over 253 chars.

    When a call is answered, pjmedia turns the offer's connection address (and an ``a=rtcp``
    address) into a socket address with ``pj_sockaddr_in_set_str_addr``, which asserts
    ``slen < PJ_MAX_HOSTNAME``: the wheel keeps assertions, so the process aborts (found by
    fuzzing, ADR 0018). RFC 4566 section 5.7 and RFC 3605 give these lines; a host name is at
    most 253 characters anyway (RFC 1035 section 2.3.4). This reads only those two line kinds
    of ``message`` (``OnIncomingCallParam.rdata.wholeMsg``); pjsip has parsed it already.
    """
    for line in message.splitlines():
        if line.startswith(("c=", "a=rtcp:")) and any(
            len(token) > MAX_SDP_HOST for token in line.split()
        ):
            return True
    return False


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
        self._calls: dict[int, SipCall] = {}
        self._dead: list[SipCall] = []
        #: Ended calls kept until a REFER-placed child of theirs has its own id (pjsua2 finds
        #: the child through its parent's object until then).
        self._parents: list[SipCall] = []
        self._ports = PortPool(clock_rate)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.draining = False
        #: Callers on other channels that share ``[sip] max_calls`` (browser test calls).
        self.other_callers: Callable[[], int] = lambda: 0
        #: ``time.monotonic()`` of the last turn of the pjsua2 event loop.
        self.health_tick = time.monotonic()
        #: ``time.monotonic()`` of the last liveness probe the asyncio loop ran, or ``None``
        #: when nothing probes (client mode). INVITEs are refused with 503 while it is stale.
        self.loop_heartbeat: float | None = None
        self._ep: pj.Endpoint | None = None
        self._acc: SipAccount | None = None

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
        """Callers connected: inbound calls answered and not yet disconnected.

        Calls this user agent placed (an attended transfer's consult leg, a test client's
        call) are not callers; they still hold a pjsua slot, which admission counts apart.
        """
        return sum(1 for c in list(self._calls.values()) if c.inbound and not c.ended)

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
        next_watch = 0.0
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
                # A command may hold a SipCall; one kept alive past libDestroy() aborts.
                del fn
            if self._dead or self._parents:
                self._reap()
            now = time.monotonic()
            if now >= next_watch:
                next_watch = now + WATCH_INTERVAL_S
                self._watch(now)
        if self._destroy_on_stop:
            self._destroy()
        else:
            self._quiesce()

    def _init_endpoint(self) -> None:
        self._ep = pj.Endpoint()
        start_endpoint(self._ep, self.settings, self.clock_rate)
        acc = SipAccount(self)
        acc.create(account_config(self.settings), True)
        self._acc = acc

    def _reject(
        self, call: SipCall, status: int, reason: str, headers: dict[str, str] | None = None
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

    def _on_incoming(self, acc: SipAccount, prm: pj.OnIncomingCallParam) -> None:
        """Decide an INVITE now; send the answer after ``onIncomingCall`` has returned.

        pjsua2's ``Endpoint::on_incoming_call`` frees the INVITE's cloned ``rdata``
        (``pjsip_rx_data_free_cloned(call->incoming_data)``) after ``onIncomingCall``
        returns, without checking it. A final non-2xx answer given inside the callback to an
        INVITE with no SDP offer (no media channel to tear down first) disconnects the call
        at once, and pjsua's ``reset_call`` frees that clone and clears the pointer: pjsua2
        then asserts in ``sip_transport.c`` (``Assertion 'rdata' failed``) and the process
        aborts. One body-less INVITE from anyone did it, as did an oversized one (pjsip keeps
        the first ``PJSIP_MAX_PKT_LEN``, 4,000 bytes, of a datagram, so the body is lost).
        So the decision is taken here, where the counts are right, and the answer goes out
        from the command queue, one turn of ``libHandleEvents`` later (about 10 ms).
        """
        peer = source_ip(prm.rdata.srcAddress)
        handle = CallHandle(
            call_id=uuid.uuid4().hex[:12],
            bridge=AudioBridge(self.clock_rate),
            peer_ip=peer,
            _ua=self,
            _pj_id=prm.callId,
        )
        call = SipCall(self, acc, prm.callId, handle)
        self._calls[prm.callId] = call
        decision = admit(
            peer_allowed=self.settings.peer_allowed(peer),
            takes_calls=self._on_incoming_cb is not None,
            draining=self.draining,
            loop_stalled=self._loop_stalled(),
            callers=self.active_calls + self.other_callers(),
            max_calls=self.settings.max_calls,
            pjsua_calls=sum(1 for c in self._calls.values() if c is not call and not c.ended),
        )
        if decision.answered and offer_host_too_long(prm.rdata.wholeMsg):
            decision = Admission(488, "bad_offer")
            _LOGGER.warning("call %s refused with 488: SDP address too long", handle.call_id)
            self.submit(lambda: self._refuse(call, 488, "Not Acceptable Here"))
        elif decision.status == 403:
            _LOGGER.warning("call %s refused: source %s is not a trunk peer", handle.call_id, peer)
            self.submit(lambda: self._refuse(call, 403, "Forbidden"))
        elif not decision.answered:
            _LOGGER.warning("call %s refused with 503: %s", handle.call_id, decision.reason)
            retry = {"Retry-After": str(self.settings.retry_after_s)}
            self.submit(lambda: self._refuse(call, 503, "Service Unavailable", retry))
        if not decision.answered:
            self._notify_rejected(peer, decision.status, decision.reason)
            return
        # Counted as a caller from now on, so the next INVITE in this turn sees it.
        call.accepted = call.inbound = True
        self.submit(lambda: self._accept(call))

    def _refuse(
        self, call: SipCall, status: int, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        """Send a deferred final non-2xx answer (skipped if the caller already cancelled)."""
        if call.ended:
            return
        try:
            self._reject(call, status, reason, headers)
        except pj.Error as exc:
            _LOGGER.warning("call %s: refusal not sent (%s)", call.handle.call_id, exc.reason)

    def _accept(self, call: SipCall) -> None:
        """Send the deferred 200 OK and hand the call to asyncio."""
        handle = call.handle
        if call.ended:
            return  # CANCELled before the answer: _on_disconnected has ended the handle
        op = pj.CallOpParam(True)
        op.statusCode = 200
        try:
            call.answer(op)
        except pj.Error as exc:
            _LOGGER.warning("call %s could not be answered (%s)", handle.call_id, exc.reason)
            self._hangup(call.pj_id, 500)
            return
        call.answer_sent_at = time.monotonic()
        _LOGGER.info("call %s answered (peer %s)", handle.call_id, handle.peer_ip)
        cb = self._on_incoming_cb
        assert cb is not None  # admission refuses every call in client mode
        self._post(lambda: cb(handle))

    def _notify_rejected(self, peer: str, status: int, reason: str) -> None:
        if self._on_rejected_cb is not None:
            cb = self._on_rejected_cb
            self._post(lambda: cb(peer, status, reason))

    def _live_calls(self, handle: CallHandle) -> list[SipCall]:
        return [c for c in self._calls.values() if c.handle is handle and not c.ended]

    def _detach_others(self, call: SipCall) -> None:
        """A call sharing ``call``'s handle (a followed REFER) got media: free the old port."""
        for other in self._live_calls(call.handle):
            if other is not call and other.port is not None:
                self._ports.release(other.port)
                other.port = None

    def _on_disconnected(self, call: SipCall, status: int, reason: str) -> None:
        if call.ended:
            return
        call.ended = True
        if call.port is not None:
            self._ports.release(call.port)  # its callbacks are no-ops from here on
            call.port = None
        self._dead.append(call)
        handle = call.handle
        live = self._live_calls(handle)
        if live:
            # A followed REFER, or an accepted Replaces, carries this side on: the handle's
            # hang-up and transfers now reach the call that is still up.
            handle._pj_id = live[0].pj_id
            return
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

    def _watch(self, now: float) -> None:
        """End answered calls that never got their ACK, or whose inbound RTP stopped.

        * Timer H: RFC 3261 section 13.3.1.4 has the UAS retransmit its 2xx for 64*T1
          (32 s) and then end the session when no ACK came; ``[sip] ack_timeout_s``. pjsua2
          exposes neither ``pjsip_cfg()->tsx`` timers nor the 2xx retransmission limit, so the
          worker counts it itself and sends the BYE.
        * RTP timeout: pjsua2 has no media inactivity setting, so the packets received on the
          call's audio stream (``getStreamStat().rtcp.rxStat.pkt``) are compared from one
          check to the next; ``[sip] rtp_timeout_s`` without one ends the call. A stream the
          far end put on hold with no receive direction (``a=sendonly`` from us,
          ``a=inactive``) is not counted.

        The reason goes to the handle's ``end_reason`` before the hang-up, so the call's
        record says why it ended.
        """
        for call in list(self._calls.values()):
            if call.ended or not call.inbound:
                continue
            if not call.confirmed:
                sent = call.answer_sent_at
                if sent is not None and now - sent > self.settings.ack_timeout_s:
                    self._teardown(call, "no_ack", 408)
                continue
            timeout = self.settings.rtp_timeout_s
            if timeout <= 0:
                continue
            received = self._rx_packets(call)
            if received is None or received != call.rx_packets:
                call.rx_packets = -1 if received is None else received
                call.rx_seen_at = now
            elif now - call.rx_seen_at > timeout:
                self._teardown(call, "rtp_timeout", 200)

    @staticmethod
    def _rx_packets(call: SipCall) -> int | None:
        """RTP packets received on the call's active, receiving audio stream, or ``None``."""
        try:
            info = call.getInfo()
            for i, media in enumerate(info.media):
                if (
                    media.type == pj.PJMEDIA_TYPE_AUDIO
                    and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE
                    and media.dir & pj.PJMEDIA_DIR_DECODING
                ):
                    return int(call.getStreamStat(i).rtcp.rxStat.pkt)
        except pj.Error:
            pass
        return None

    def _teardown(self, call: SipCall, reason: str, status: int) -> None:
        _LOGGER.warning("call %s: ending it (%s)", call.handle.call_id, reason)
        call.handle.end_reason = reason
        self._hangup(call.pj_id, status)

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
        self._refer(pj_id, headers, lambda call, op: call.xfer(target, op))

    def _xfer_replaces(self, pj_id: int, other_id: int, headers: dict[str, str]) -> None:
        other = self._calls.get(other_id)
        if other is None or other.ended:
            self._transfer_failed(self._calls.get(pj_id), 481)
            return
        self._refer(pj_id, headers, lambda call, op: call.xferReplaces(other, op))

    def _refer(
        self,
        pj_id: int,
        headers: dict[str, str],
        send: Callable[[SipCall, pj.CallOpParam], None],
    ) -> None:
        """Send a REFER on call ``pj_id``; a call gone or a REFER not sent is a final failure.

        481 (Call/Transaction Does Not Exist) when the call has ended, 500 when pjsua could
        not send the REFER; both reach the handle's ``on_transfer_status`` as final.
        """
        call = self._calls.get(pj_id)
        if call is None or call.ended:
            self._transfer_failed(call, 481)
            return
        op = pj.CallOpParam(True)
        op.txOption.headers = _header_vector(headers)
        try:
            send(call, op)
        except pj.Error as exc:
            _LOGGER.warning(
                "call %s: REFER could not be sent (%s)", call.handle.call_id, exc.reason
            )
            self._transfer_failed(call, 500)

    def _transfer_failed(self, call: SipCall | None, status: int) -> None:
        report = call.handle.on_transfer_status if call is not None else None
        if report is not None:
            self._post(lambda: report(status, True))

    def make_call(
        self, uri: str, handle: CallHandle, headers: dict[str, str] | None = None
    ) -> None:
        """Place an outgoing call (client mode, or an attended transfer's consult call).

        ``headers`` are extra SIP headers for the INVITE (the non-PHI handoff id). If pjsua
        refuses to place it (a malformed URI, no free call slot), the handle ends at once
        with ``end_status`` 500.
        """

        def place() -> None:
            call = SipCall(self, self._acc, pj.PJSUA_INVALID_ID, handle)
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
        never = threading.Event()

        def block() -> None:
            never.wait()

        self.submit(block)

    # -- teardown -----------------------------------------------------------------------------

    def _quiesce(self) -> None:
        """End every call and let pjsua2 send the BYEs; keep the endpoint for process exit."""
        if self._ep is not None:
            self._hang_up_all(self._ep)

    @staticmethod
    def _hang_up_all(ep: pj.Endpoint) -> None:
        """Hang up every call and turn the event loop 300 ms so the BYEs go out."""
        try:
            ep.hangupAllCalls()
            for _ in range(30):
                ep.libHandleEvents(10)
        except Exception:  # noqa: BLE001, S110 - best effort on the way out
            pass

    def _destroy(self) -> None:
        ep = self._ep
        if ep is None:
            return
        self._hang_up_all(ep)
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
