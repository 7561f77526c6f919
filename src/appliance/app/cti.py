"""CTI webhook: the handoff context for the staff member's screen-pop.

An HTTP POST of JSON to a configured local URL (the clinic's CTI connector or PBX
screen-pop service on loopback or the LAN) just before the SIP REFER. The body holds the
intent, workflow stage, collected slots, actions attempted and a short summary; it may hold
PHI, so the URL must stay inside the clinic's network (never a cloud endpoint). The SIP REFER
itself carries only the opaque handoff id.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

_LOGGER = logging.getLogger(__name__)


def post_context(url: str, context: dict[str, Any], timeout_s: float = 2.0) -> bool:
    """POST ``context`` as JSON to ``url``; ``True`` on a 2xx answer (blocking).

    Failures (refused, timeout, non-2xx) return ``False`` and are logged without the body:
    the transfer goes ahead without a screen-pop.
    """
    body = json.dumps(context, sort_keys=True, default=str).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "X-Handoff-ID": str(context["handoff_id"])},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            ok = 200 <= int(response.status) < 300
    except urllib.error.HTTPError as exc:
        _LOGGER.warning("CTI webhook answered %d", exc.code)
        return False
    except (OSError, urllib.error.URLError) as exc:
        _LOGGER.warning("CTI webhook unreachable (%s)", type(exc).__name__)
        return False
    return ok
