"""The load benchmark at CI scale: the edge at capacity, beyond it, and under a stranger's flood.

A real Kamailio in front of two real ``appliance serve --worker N`` processes with
``max_calls = 1`` (capacity 2), driven by the functions of ``benchmarks/load.py``:

* 3 calls at once, each playing a real OSR sentence: 2 are answered and carry the agent's
  audio to the end (none dropped), the third gets ``503`` with the edge's ``Retry-After``;
* a 3-second flood of INVITEs at 300 per second from a source that is not on the allowlist,
  with one real call placed during it: the real call is answered and carries audio, the flood
  gets ``403`` and then nothing (pike), and no flood INVITE reaches a worker; both workers are
  still up;
* last (its unconfirmed calls hold the slots until Timer H): a 3-second flood at 300 per second
  from 25 allowlisted sources together, each below pike's limit, never ACKing: the edge's global
  rate limit answers most of it ``503 Call Rate Limit``, both workers stay up (without the limit
  they abort on pjlib's ioqueue: benchmarks/README.md, "Load"), and OPTIONS is still ``200``.

The full benchmark (sweep, 1.5x capacity, the allowlisted no-ACK flood) is
``python -m benchmarks.load`` (benchmarks/README.md, "Load").
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from benchmarks.load import (
    ALLOWED_MANY,
    EDGE_RETRY_AFTER,
    STRANGER,
    Box,
    flood,
    place_calls,
    start_box,
)
from tests.e2e.test_edge import send

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed"),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
]


@pytest.fixture(scope="module")
def box(tmp_path_factory, store) -> Iterator[Box]:  # noqa: ANN001
    """The edge and two workers with one call each (capacity 2)."""
    running = start_box(tmp_path_factory.mktemp("load"), workers=2, max_calls=1, rtp_port=49000)
    try:
        yield running
    finally:
        running.stop()


def test_over_capacity_calls_get_503_with_retry_after_and_none_is_dropped(
    box: Box, tmp_path
) -> None:  # noqa: ANN001
    calls = place_calls(box, 3, tmp_path, greeting_ms=4000, reply_ms=5000)
    statuses = sorted(c.status or 0 for c in calls)
    assert statuses == [200, 200, 503], [c.status for c in calls]
    refused = next(c for c in calls if c.status == 503)
    assert refused.retry_after == str(EDGE_RETRY_AFTER)
    answered = [c for c in calls if c.answered]
    assert [c.dropped for c in answered] == [False, False], answered
    assert all(c.agent_audio and c.completed for c in answered), answered
    assert len({c.call_id for c in calls}) == 3


def test_a_real_call_is_answered_during_a_strangers_flood(box: Box, tmp_path) -> None:  # noqa: ANN001
    fl = flood(
        box,
        STRANGER,
        tmp_path,
        rate=300,
        seconds=3.0,
        real_call_after_s=0.5,
        greeting_ms=3000,
        reply_ms=3000,
    )
    assert fl["invites_sent"] >= 800, fl  # 900 offered
    assert fl["rate_per_s"] is not None and fl["rate_per_s"] >= 250, fl
    assert set(fl["answers"]) == {"403"}, fl["answers"]  # nothing but the edge's refusal
    assert fl["no_answer"] > 0 and fl["pike_blocked"], fl  # then pike drops the rest
    real = fl["real_call"]
    assert real["answered"] and real["agent_audio"] and not real["dropped"], real
    assert fl["calls_offered_to_workers"] == 1, fl  # the real call; no flood INVITE got through
    assert fl["workers_alive"] == 2, fl["dead_workers"]


def test_workers_survive_an_allowlisted_flood_from_many_sources(box: Box, tmp_path) -> None:  # noqa: ANN001
    fl = flood(box, ALLOWED_MANY, tmp_path, rate=300, seconds=3.0, real_call_after_s=None)
    assert fl["invites_sent"] >= 800, fl
    assert fl["workers_alive"] == 2, fl["dead_workers"]
    reasons = fl["answers_by_reason"]
    limited = reasons.get("503 Call Rate Limit", 0)
    assert limited > 0, reasons
    # What passed the limit (answered by a worker, or refused as every worker was full): at
    # most 10 a second per worker over the flood's (at most 4) one-second windows.
    assert fl["pike_blocked"] == 0, fl  # each source stayed below pike: the limit did this
    passed = sum(n for reason, n in reasons.items() if reason != "503 Call Rate Limit")
    assert 0 < passed <= 20 * 4, reasons
    assert send(box.edge, "OPTIONS", 200).returncode == 0
