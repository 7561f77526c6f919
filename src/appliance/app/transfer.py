"""Warm transfer to staff: the CTI webhook with the call's context, then a SIP REFER.

``blind`` mode sends a REFER (RFC 3515) for ``[transfer] target`` on the caller's call.
``attended`` mode first places a consult call to the target, and once staff answer sends a
REFER with ``Replaces`` (RFC 3891) naming it, so the staff member who answered takes over the
caller. Progress comes back as the REFER's response and the NOTIFYs' ``message/sipfrag``
status lines; a failure (a non-2xx, or nothing final within ``[transfer] timeout_s``) ends in
the dialogue's fallback being spoken, never in silence. Only the opaque handoff id travels in
SIP headers; the context (no more than the dialogue chose to hand over) goes to the local CTI
webhook.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from appliance.agent.dialog import TransferRequest
from appliance.app.cti import post_context
from appliance.audio.bridge import AudioBridge
from appliance.config.settings import ApplianceSettings
from appliance.events import Event, TransferAttempted, TransferResult
from appliance.media.sip import CallHandle, SipUserAgent
from appliance.pipeline.builder import CallPipeline

_LOGGER = logging.getLogger("appliance.app.server")


class Transfers:
    """Carries out the transfers the dialogue asks for.

    Args:
        ua: The SIP user agent (places consult calls, sends REFERs).
        settings: Returns the current settings (``[transfer]`` is re-read on SIGHUP).
        emit: Event sink (``TransferAttempted``, ``TransferResult``).
    """

    def __init__(
        self,
        ua: SipUserAgent,
        settings: Callable[[], ApplianceSettings],
        emit: Callable[[Event], None],
    ) -> None:
        self._ua = ua
        self._settings = settings
        self._emit = emit

    async def consult(
        self, target: str, headers: dict[str, str], timeout_s: float
    ) -> CallHandle | None:
        """Place the attended transfer's consult call; the handle once answered, else None."""
        consult = CallHandle(call_id="consult", bridge=AudioBridge(self._ua.clock_rate))
        self._ua.make_call(target, consult, headers)
        ready = asyncio.create_task(consult.media_ready.wait())
        gone = asyncio.create_task(consult.disconnected.wait())
        await asyncio.wait({ready, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        gone.cancel()
        if not consult.media_ready.is_set() or consult.disconnected.is_set():
            consult.hangup()
            return None
        return consult

    async def run(self, handle: CallHandle, call: CallPipeline, req: TransferRequest) -> bool:
        """Warm transfer: CTI webhook with the context, then a blind SIP REFER.

        Returns whether the transfer succeeded; on failure the dialogue's fallback (a message
        or the workflow's ``on_fail`` node) is spoken, so the caller is never dropped silently.
        """
        cfg = self._settings().transfer
        emit = self._emit
        emit(
            TransferAttempted(
                handle.call_id, mode=cfg.mode, target=cfg.target, handoff_id=req.handoff_id
            )
        )
        delivered = False
        if cfg.webhook_url:
            delivered = await asyncio.to_thread(
                post_context, cfg.webhook_url, req.context, cfg.webhook_timeout_s
            )
        status = 0
        if cfg.target:
            loop = asyncio.get_running_loop()
            result: asyncio.Future[int] = loop.create_future()

            def on_status(code: int, final: bool) -> None:
                if final and not result.done():
                    result.set_result(code)
                elif code >= 300 and not result.done():
                    result.set_result(code)  # REFER refused outright

            handle.on_transfer_status = on_status
            headers = {cfg.handoff_header: req.handoff_id}
            consult: CallHandle | None = None
            if cfg.mode == "attended" and handle.transferable:
                consult = await self.consult(cfg.target, headers, cfg.timeout_s)
                if consult is None:
                    result.set_result(480)  # the target did not answer the consult call
                else:
                    handle.transfer_replacing(consult, headers)
            else:
                handle.transfer(cfg.target, headers)
            try:
                status = await asyncio.wait_for(result, cfg.timeout_s)
            except TimeoutError:
                status = 0
            if consult is not None:
                if 200 <= status < 300:
                    # The caller's side now replaces our consult leg; end it if the far end
                    # has not within a few seconds, so no orphan call stays up.
                    loop.call_later(5.0, consult.hangup)
                else:
                    consult.hangup()
        ok = 200 <= status < 300
        emit(
            TransferResult(
                handle.call_id,
                handoff_id=req.handoff_id,
                ok=ok,
                status=status,
                webhook_delivered=delivered,
                mode=cfg.mode,
            )
        )
        _LOGGER.info(
            "call %s: transfer %s (status %d)", handle.call_id, "ok" if ok else "failed", status
        )
        if ok:
            await call.receptionist.ask(call.receptionist.dialog.transfer_succeeded)
            handle.hangup()
            return True
        await call.receptionist.speak(
            await call.receptionist.ask(call.receptionist.dialog.transfer_failed)
        )
        return False
