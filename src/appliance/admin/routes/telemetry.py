"""Admin page routes: telemetry (``GET /metrics``, the Prometheus text endpoint).

Not a session route: a scraper has no session. It needs ``Authorization: Bearer <token>``
with the token of ``[admin] metrics_token_file`` (created on first use, 0600); anything else
gets 401. The body holds counts and latencies only (:mod:`appliance.admin.prometheus`).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from appliance.admin.prometheus import check_bearer, exposition, metrics_token
from appliance.admin.web import get_ctx

_LOGGER = logging.getLogger(__name__)

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition; 401 without the bearer token, 503 if the token is unreadable."""
    ctx = get_ctx(request)
    try:
        token = await asyncio.to_thread(metrics_token, ctx.settings.admin.metrics_token_file)
    except OSError as exc:
        _LOGGER.error("metrics token unavailable: %s", type(exc).__name__)
        return Response("metrics token unavailable\n", 503, media_type="text/plain")
    if not check_bearer(request.headers.get("authorization"), token):
        return Response(
            "unauthorised\n", 401, {"WWW-Authenticate": "Bearer"}, media_type="text/plain"
        )
    body = await asyncio.to_thread(exposition, ctx.settings.store.metadata_db, ctx.control)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
