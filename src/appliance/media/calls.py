"""One SIP call: the asyncio-side handle, and the pjsua2 ``Call`` and ``Account`` subclasses.

Every pjsua2 callback here runs on the user agent's pjsua2 thread (``mainThreadOnly``), is
wrapped by :func:`~appliance.media.callbacks.guarded`, and reaches asyncio only through the
user agent's ``_post``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pjsua2 as pj

from appliance.audio.bridge import AudioBridge
from appliance.media.callbacks import guarded
from appliance.media.ports import MediaPort

if TYPE_CHECKING:
    from appliance.media.sip import SipUserAgent

_LOGGER = logging.getLogger("appliance.media.sip")

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
    #: Whether a REFER can move this call (``False`` for a browser test call: no consult call
    #: is placed for it, the transfer is refused at once).
    transferable: bool = True
    media_ready: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    #: Why the worker itself ended the call, if it did: ``"no_ack"`` (Timer H) or
    #: ``"rtp_timeout"`` (inbound RTP stopped); ``""`` otherwise.
    end_reason: str = ""
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


class SipCall(pj.Call):
    """A pjsua2 call bound to its :class:`CallHandle` (created on the pjsua2 thread only)."""

    def __init__(self, ua: SipUserAgent, acc: pj.Account, pj_id: int, handle: CallHandle) -> None:
        pj.Call.__init__(self, acc, pj_id)
        self.ua = ua
        self.handle = handle
        self.pj_id = pj_id
        self.port: MediaPort | None = None
        #: Answered or placed by us: its end is reported to the handle's ``on_disconnected``.
        self.accepted = False
        #: A caller's call that admission answered (counts toward ``[sip] max_calls``).
        self.inbound = False
        self.ended = False
        #: A call placed to follow a REFER from this one, until pjsua2 has given it an id.
        self.pending_child: SipCall | None = None
        self._last_dtmf: tuple[str, float] = ("", 0.0)
        #: ``time.monotonic()`` when our 200 OK went out (inbound calls), for Timer H.
        self.answer_sent_at: float | None = None
        #: The ACK arrived (the INVITE dialog is CONFIRMED).
        self.confirmed = False
        #: RTP packets received so far on the audio stream, and when that count last grew.
        self.rx_packets = -1
        self.rx_seen_at = 0.0

    def __repr__(self) -> str:
        return f"call {self.handle.call_id}"

    def _track(self) -> None:
        """Register a call placed by pjsua for a REFER once pjsua2 has given it an id."""
        if self.pj_id == pj.PJSUA_INVALID_ID:
            self.pj_id = self.getId()
            if self.pj_id != pj.PJSUA_INVALID_ID:
                self.ua._calls[self.pj_id] = self

    @guarded("call state")
    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802
        """CONFIRMED stamps the answer time; DISCONNECTED frees the port and ends the handle."""
        self._track()
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.handle.answered_at = time.time()
            self.confirmed = True
            self.rx_seen_at = time.monotonic()
            if self.handle._pj_id != self.pj_id:
                # A followed REFER was answered: the handle now speaks for this call.
                self.handle._pj_id = self.pj_id
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.ua._on_disconnected(self, info.lastStatusCode, info.lastReason)

    @guarded("media state")
    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        """Active audio: attach a pooled port to the call's bridge, both directions."""
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

    @guarded("DTMF")
    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802
        """An RFC 4733 (or SIP INFO) digit; the digit goes to asyncio, never to a log."""
        method = DTMF_SIP_INFO if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else DTMF_RFC4733
        self._dtmf(str(prm.digit), method)

    @guarded("DTMF event")
    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:  # noqa: N802
        """A SIP INFO digit (``application/dtmf-relay``)."""
        if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO:
            self._dtmf(str(prm.digit), DTMF_SIP_INFO)

    @guarded("transfer status")
    def onCallTransferStatus(self, prm: pj.OnCallTransferStatusParam) -> None:  # noqa: N802
        """Progress of our REFER: its response, then each NOTIFY's sipfrag status."""
        status, final = int(prm.statusCode), bool(prm.finalNotify)
        prm.cont = not final
        cb = self.handle.on_transfer_status
        if cb is not None:
            self.ua._post(lambda: cb(status, final))

    @guarded("transfer request")
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
        child = SipCall(self.ua, self.ua._acc, pj.PJSUA_INVALID_ID, self.handle)
        child.accepted = self.accepted
        self.pending_child = child
        prm.newCall = child
        self.ua._post(lambda: refers.append("followed"))
        _LOGGER.info("call %s: REFER accepted, calling the transfer target", self.handle.call_id)

    @guarded("replace request")
    def onCallReplaceRequest(self, prm: pj.OnCallReplaceRequestParam) -> None:  # noqa: N802
        """An INVITE with ``Replaces`` (RFC 3891) naming this call: refused with 403.

        pjsua answers such an INVITE itself, without ``onIncomingCall``, so the trunk ACL and
        admission never see it: whoever learned the dialog's Call-ID and tags could take over
        a caller. It is accepted only for a call this worker placed (an attended transfer's
        consult leg, RFC 5589 section 7) and only from a trunk peer; the new call then carries
        the consult leg's handle on.
        """
        peer = source_ip(prm.rdata.srcAddress)
        if (
            self.inbound
            or not self.accepted
            or self.ended
            or not self.ua.settings.peer_allowed(peer)
        ):
            prm.statusCode = 403
            prm.reason = "Forbidden"
            _LOGGER.warning(
                "call %s: INVITE with Replaces from %s refused (403)", self.handle.call_id, peer
            )
            return
        child = SipCall(self.ua, self.ua._acc, pj.PJSUA_INVALID_ID, self.handle)
        child.accepted = True
        self.pending_child = child
        prm.newCall = child
        _LOGGER.info("call %s: replaced by an INVITE from %s", self.handle.call_id, peer)


def source_ip(src_address: str) -> str:
    """Return the IP part of pjsip's ``srcAddress`` (``1.2.3.4:5060`` or ``[::1]:5060``)."""
    if src_address.startswith("["):
        return src_address[1:].split("]", 1)[0]
    return src_address.rsplit(":", 1)[0]


class SipAccount(pj.Account):
    """The local account; receives INVITEs and hands them to the user agent's admission."""

    def __init__(self, ua: SipUserAgent) -> None:
        pj.Account.__init__(self)
        self.ua = ua

    def __repr__(self) -> str:
        return "account"

    @guarded("incoming call")
    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        """An INVITE: the user agent answers or refuses it."""
        self.ua._on_incoming(self, prm)

    @guarded("incoming subscribe")
    def onIncomingSubscribe(self, prm: pj.OnIncomingSubscribeParam) -> None:  # noqa: N802
        """A presence SUBSCRIBE (RFC 3856): refused with 403, from anyone.

        pjsua accepts it with 200 and starts sending NOTIFYs by default; a receptionist
        publishes no presence. Other event packages get pjsip's 489 Bad Event.
        """
        prm.code = 403
        prm.reason = "Forbidden"
