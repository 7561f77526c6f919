"""Creating and starting the pjsua2 endpoint: threading, media clock, codecs, transport.

One thread polls the endpoint (``threadCnt=0``, ``mainThreadOnly=True``): every pjsua2 call
and callback happens on it (shared/TELEPHONY.md: threads that call pjsua2 must otherwise be
registered). The conference bridge runs at the given clock (16 kHz by default); G.711 at
8 kHz is resampled to it by pjmedia. Only the configured G.711 codecs are enabled, in order.
RTP binds ``[sip] rtp_address`` and SDP advertises ``rtp_public_address``
(:func:`account_config`; docs/decisions/0020-sip-edge-kamailio.md, appendix).
"""

from __future__ import annotations

import logging
import os

import pjsua2 as pj

from appliance.audio.bridge import PTIME_MS
from appliance.config.settings import SipSettings
from appliance.errors import ConfigError, MediaError
from appliance.media.admission import PJSUA_MAX_CALLS

_LOGGER = logging.getLogger(__name__)


def start_endpoint(ep: pj.Endpoint, settings: SipSettings, clock_rate: int) -> None:
    """Initialise ``ep``, bind the UDP transport and start it (call on the pjsua2 thread).

    Args:
        ep: A new endpoint.
        settings: SIP settings (bind address, codecs, User-Agent).
        clock_rate: Conference bridge clock in Hz, e.g. 16000.

    Raises:
        MediaError: The transport could not bind (``sip_bind_failed``).
        pj.Error: pjsua2 failed to initialise.
    """
    # pjlib prints its start-up banner to stdout before libInit applies our log levels;
    # stdout is not ours to write to (`appliance call` prints its JSON report there).
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        _init_lib(ep, settings, clock_rate)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    ep.audDevManager().setNullDev()
    wanted = {
        c.split("/")[0].upper(): len(settings.codecs) - i for i, c in enumerate(settings.codecs)
    }
    for codec in ep.codecEnum2():
        name = codec.codecId.split("/")[0].upper()
        ep.codecSetPriority(codec.codecId, 128 + wanted[name] if name in wanted else 0)
    tcfg = pj.TransportConfig()
    tcfg.port = settings.port
    tcfg.boundAddress = settings.host
    try:
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    except pj.Error as exc:
        raise MediaError(
            "sip_bind_failed", f"cannot bind SIP to {settings.bind}: {exc.reason}"
        ) from exc
    ep.libStart()


def _init_lib(ep: pj.Endpoint, settings: SipSettings, clock_rate: int) -> None:
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.uaConfig.maxCalls = PJSUA_MAX_CALLS
    cfg.uaConfig.userAgent = settings.user_agent
    cfg.medConfig.clockRate = clock_rate
    cfg.medConfig.sndClockRate = clock_rate
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    cfg.medConfig.audioFramePtime = PTIME_MS
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    ep.libInit(cfg)


def account_config(settings: SipSettings) -> pj.AccountConfig:
    """The local account: ``sip:appliance@<bind>``, and where its RTP lives.

    RTP and RTCP bind to :meth:`SipSettings.rtp_bind_address` (``[sip] rtp_address``, by
    default the SIP host, or the address routed towards the trunk when SIP binds a wildcard),
    on ports ``rtp_port .. rtp_port_max``; SDP's ``c=`` and ``o=`` lines carry
    ``rtp_public_address`` when set (pjsua2 ``AccountMediaConfig.transportConfig``:
    ``boundAddress``, ``publicAddress``, ``port``, ``portRange``; pjsua's
    ``pjsua_transport_config.bound_addr`` and ``public_addr``).

    Raises:
        MediaError: ``rtp_address_unresolved``: SIP binds a wildcard, ``rtp_address`` is
            unset, and no allowed peer is routable to pick the address from.
    """
    try:
        rtp_host = settings.rtp_bind_address()
    except ConfigError as exc:
        raise MediaError("rtp_address_unresolved", exc.message) from exc
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:appliance@{settings.bind}"
    acfg.mediaConfig.transportConfig.port = settings.rtp_port
    acfg.mediaConfig.transportConfig.portRange = settings.rtp_port_count
    acfg.mediaConfig.transportConfig.boundAddress = rtp_host
    acfg.mediaConfig.transportConfig.publicAddress = settings.rtp_public_address
    _LOGGER.info(
        "RTP binds %s ports %d-%d, SDP advertises %s",
        rtp_host,
        settings.rtp_port,
        settings.rtp_port + settings.rtp_port_count - 1,
        settings.rtp_public_address or rtp_host,
    )
    return acfg
