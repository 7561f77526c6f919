"""Shared end-to-end fixtures: an ``appliance serve`` subprocess per test module."""

from __future__ import annotations

import pytest

from tests.e2e.server import ApplianceProcess, free_udp_port


@pytest.fixture(scope="module")
def appliance(tmp_path_factory, store):  # noqa: ANN001, ANN201
    work = tmp_path_factory.mktemp("appliance")
    proc = ApplianceProcess(work, sip_port=free_udp_port(), rtp_port=43000)
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()[-3000:]
