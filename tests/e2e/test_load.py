"""The load benchmark at CI scale: the edge at capacity, beyond it, and under a stranger's flood.

A real Kamailio in front of two real ``appliance serve --worker N`` processes with
``max_calls = 1`` (capacity 2), driven by the functions of ``benchmarks/load.py``:

* 3 calls at once, each playing a real OSR sentence: 2 are answered and carry the agent's
  audio to the end (none dropped), the third gets ``503`` with the edge's ``Retry-After``;
* a 3-second flood of INVITEs at 300 per second from a source that is not on the allowlist,
  with one real call placed during it: the real call is answered and carries audio, the flood
  gets ``403`` and then nothing (pike), and no audit record and no metadata row is written for
  it; both workers are still up.

The full benchmark (sweep, 1.5x capacity, the allowlisted no-ACK flood) is
``python -m benchmarks.load`` (benchmarks/README.md, "Load").
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from benchmarks.load import EDGE_RETRY_AFTER, STRANGER, Box, flood, place_calls, start_box

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
