"""A short boofuzz run against a worker and the edge in front of it (issue 13, ADR 0018).

``benchmarks/sip_fuzz.py`` holds the fuzzer (boofuzz 0.4.2 request models of an INVITE with an
SDP offer and an OPTIONS, seeded from the valid requests the e2e tests send); the benchmark runs
it long, this test briefly: ``CASES`` mutations drawn with ``SEED`` to each target. It asserts
no crash (both processes alive after every 10 cases), no hang (an OPTIONS answered 200 within
2 s of the run), and that the worker's audit log still verifies.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from benchmarks.sip_fuzz import fuzz_target
from tests.e2e.test_sip_torture import Box, start_box, stop_box, verify_worker_audit

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed"),
]
boofuzz = pytest.importorskip("boofuzz")

SEED = 4475
CASES = 300


@pytest.fixture(scope="module")
def box(tmp_path_factory, store) -> Iterator[Box]:  # noqa: ANN001
    """A worker and the edge in front of it."""
    box = start_box(tmp_path_factory.mktemp("fuzz"))
    yield box
    stop_box(box)


@pytest.mark.parametrize("via", ["worker", "edge"])
def test_fuzzed_invite_and_options_crash_and_hang_nothing(box: Box, via: str) -> None:
    target = box.worker_uri if via == "worker" else box.edge.uri
    report = fuzz_target(via, target, cases=CASES, seed=SEED, alive=box.alive, rate=25.0)
    print(report)  # noqa: T201 - the seed and counts, for a rerun
    assert not report.crashed, (report, box.worker.log()[-3000:], box.edge.log()[-3000:])
    assert report.sent + report.too_big == CASES
    assert report.sent >= CASES * 0.9, report
    assert set(report.by_request) == {"INVITE", "OPTIONS"}, report.by_request
    assert report.options_status == 200, report
    assert report.options_latency_s is not None and report.options_latency_s < 2.0


def test_audit_log_still_verifies_after_fuzzing(box: Box) -> None:
    """``appliance audit verify`` on the worker's log once it has stopped."""
    out = verify_worker_audit(box)
    assert out.returncode == 0, out.stdout + out.stderr
