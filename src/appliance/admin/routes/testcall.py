"""Talk to the agent: a browser test call over WebRTC (issue 12 item 5).

``/testcall`` shows a button; ``/static/testcall.js`` captures the microphone, builds an
``RTCPeerConnection``, waits for ICE gathering to complete (non-trickle) and posts the offer to
``POST /api/testcall/offer``. This process never touches media: it forwards the offer over the
control socket (op ``webrtc.offer``, :mod:`appliance.app.webrtc` on the agent), which answers
it with an aiortc peer and runs the call through the same pipeline as a SIP call (disclosure,
workflows, audit, scoring), marked as a test call in metrics (``channel = 'webrtc'``).
``POST /api/testcall/hangup`` ends it.

Only :attr:`~appliance.admin.rbac.Permission.TEST_CALL` reaches these routes. Each placed and
ended call is put on the audit record (``AdminTestCall``: the call id and the outcome, no
content). Errors: 400 for a malformed offer, 404 for an unknown call, 503 when the agent is
unreachable, draining, or has no free call slot.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from appliance.admin.auth import Principal, require
from appliance.admin.rbac import Permission
from appliance.admin.web import get_ctx, render
from appliance.control import ControlError

_LOGGER = logging.getLogger(__name__)
router = APIRouter()

TEST_CALL = require(Permission.TEST_CALL)

#: Largest SDP offer forwarded, characters (the agent refuses more than 64 KiB too).
MAX_SDP_CHARS = 64 * 1024
#: Seconds to wait for the agent to answer an offer (aiortc gathers its candidates first).
OFFER_TIMEOUT_S = 20.0

_STATUS = {"bad_request": 400, "not_found": 404, "unavailable": 503, "forbidden": 403}
_MESSAGES = {
    "bad_request": "The browser's call offer was refused.",
    "not_found": "That test call has already ended.",
    "unavailable": "The agent cannot take a test call now (busy, stopping, or not running).",
    "forbidden": "Not allowed.",
}


class Offer(BaseModel):
    """An SDP offer from the browser (RFC 8829 JSEP, all ICE candidates included)."""

    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: Literal["offer"] = "offer"


class Answer(BaseModel):
    """The agent's SDP answer and the test call's id."""

    sdp: str
    type: Literal["answer"]
    call_id: str


class Hangup(BaseModel):
    """Which test call to end."""

    call_id: str = Field(pattern=r"^[0-9a-f]{12}$")


class Ended(BaseModel):
    """A test call that was ended."""

    call_id: str
    ended: bool


def _error(exc: ControlError) -> JSONResponse:
    status = _STATUS.get(exc.code, 502)
    return JSONResponse(
        {"error": exc.code, "detail": _MESSAGES.get(exc.code, "The agent failed.")},
        status_code=status,
    )


@router.get("/testcall", response_class=HTMLResponse)
def page(request: Request, principal: Principal = Depends(TEST_CALL)) -> HTMLResponse:
    """The "Talk to the agent" page."""
    return render(request, "testcall/index.html")


@router.post(
    "/api/testcall/offer",
    response_model=Answer,
    responses={400: {}, 403: {}, 503: {}},
)
async def offer(
    body: Offer, request: Request, principal: Principal = Depends(TEST_CALL)
) -> Answer | JSONResponse:
    """Forward the browser's offer to the agent; answer with its SDP and the call id."""
    ctx = get_ctx(request)
    try:
        result = await ctx.control.acall(
            "webrtc.offer",
            {"sdp": body.sdp, "type": body.type},
            principal.actor,
            limit_s=OFFER_TIMEOUT_S,
        )
        answer = Answer.model_validate(result)
    except ControlError as exc:
        _LOGGER.info("test call refused: %s", exc.code)
        ctx.audit.record("AdminTestCall", principal.actor, outcome=f"refused_{exc.code}")
        return _error(exc)
    except ValueError:
        _LOGGER.warning("test call: malformed answer from the agent")
        return JSONResponse(
            {"error": "internal", "detail": "The agent's answer was malformed."}, status_code=502
        )
    ctx.audit.record("AdminTestCall", principal.actor, call_id=answer.call_id, outcome="placed")
    return answer


@router.post(
    "/api/testcall/hangup",
    response_model=Ended,
    responses={403: {}, 404: {}, 503: {}},
)
async def hangup(
    body: Hangup, request: Request, principal: Principal = Depends(TEST_CALL)
) -> Ended | JSONResponse:
    """End a test call."""
    ctx = get_ctx(request)
    try:
        result = await ctx.control.acall(
            "webrtc.hangup", {"call_id": body.call_id}, principal.actor
        )
        ended = Ended.model_validate(result)
    except ControlError as exc:
        return _error(exc)
    except ValueError:
        return JSONResponse(
            {"error": "internal", "detail": "The agent's answer was malformed."}, status_code=502
        )
    ctx.audit.record("AdminTestCall", principal.actor, call_id=body.call_id, outcome="hung_up")
    return ended
