"""End to end: the dialler places real INVITEs from pjsua2 to sipp as the callee (a UAS).

The dialler runs in this process with the box's own ``SipUserAgent`` (client mode) behind
``SipPlacer``, the real consent and DNC files and the real gate. sipp plays the PBX trunk and
the patient's phone; its message log is the wire record of what the box sent:

* a dial the gate refuses sends no INVITE (sipp's message log holds only the one INVITE the
  gate allowed);
* a busy line (486) is dialled again after the back-off, then recorded as ``busy``;
* an answered call (200 OK with SDP) gets the conversation seam and a BYE.

The gate's clock is a fixed instant (10:00 in New York) moving at real speed, so the test does
not depend on the hour it runs at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.app.dialler import DialJob, Dialler, OutcomeStore, SipPlacer, open_gate
from appliance.config.outbound import OutboundSettings
from appliance.config.settings import SipSettings
from appliance.events import DialRefused, Event
from appliance.media.sip import CallHandle, SipUserAgent
from tests.e2e.sipp import SippProcess, SippResult, free_udp_port, sipp_binary, start_sipp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(sipp_binary() is None, reason="sipp (sip-tester) is not installed"),
]

ALLOWED = "+12125550134"  # New York, consent on file
NO_CONSENT = "+13125550134"  # Chicago, no consent
ON_DNC = "+13035550134"  # Denver, consent but on the imported DNC list
T0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)  # 10:00 in New York, 08:00 in Denver

_RESPONSE_HEAD = """
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]"""

UAS_BUSY = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy callee">
  <recv request="INVITE"/>
  <send><![CDATA[

      SIP/2.0 100 Trying{_RESPONSE_HEAD}
      Content-Length: 0

    ]]></send>
  <send><![CDATA[

      SIP/2.0 486 Busy Here{_RESPONSE_HEAD}
      Content-Length: 0

    ]]></send>
  <recv request="ACK"/>
</scenario>
"""

UAS_ANSWER = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answering callee">
  <recv request="INVITE"/>
  <send><![CDATA[

      SIP/2.0 200 OK{_RESPONSE_HEAD}
      Contact: <sip:patient@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=patient 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
  <send><![CDATA[

      SIP/2.0 200 OK{_RESPONSE_HEAD}
      Content-Length: 0

    ]]></send>
</scenario>
"""


class Box:
    """The dialler with a real pjsua2 user agent, aimed at a sipp callee on ``trunk_port``."""

    def __init__(self, tmp_path: Path, trunk_port: int, **overrides: object) -> None:
        values: dict[str, object] = {
            "enabled": True,
            "trunk_uri": f"sip:{{number}}@127.0.0.1:{trunk_port}",
            "caller_id": "+12125550100",
            "consent_db": tmp_path / "consent.sqlite",
            "dnc_db": tmp_path / "dnc.sqlite",
            "outcomes_db": tmp_path / "dialler.sqlite",
            "rate_per_minute": 600,
            "ring_timeout_s": 10.0,
            **overrides,
        }
        self.settings = OutboundSettings.model_validate(values)
        self.events: list[Event] = []
        self.consent, self.dnc, self.gate = open_gate(self.settings, self.events.append)
        self.consent.capture(ALLOWED, "reminders", method="written", source="import")
        self.consent.capture(ON_DNC, "reminders", method="written", source="import")
        self.dnc.import_list(ON_DNC + "\n", "registry")
        self.store = OutcomeStore(self.settings.outcomes_db)
        self.conversations: list[str] = []
        start = time.monotonic()
        self.clock = lambda: T0 + timedelta(seconds=time.monotonic() - start)

    async def run(self, jobs: list[DialJob]) -> list[str]:
        loop = asyncio.get_running_loop()
        sip = SipSettings(bind=f"127.0.0.1:{free_udp_port()}", rtp_port=free_udp_port(count=8))
        ua = SipUserAgent(sip, loop, None)
        ua.start()

        async def converse(job: DialJob, handle: CallHandle) -> str:
            self.conversations.append(handle.codec)
            return "confirmed"

        try:
            dialler = Dialler(
                self.settings,
                self.gate,
                SipPlacer(ua),
                self.store,
                converse=converse,
                clock=self.clock,
            )
            for job in jobs:
                dialler.submit(job)
            await asyncio.wait_for(dialler.run_until_idle(), 60)
            await asyncio.sleep(0.3)  # the last BYE/ACK leaves the pjsua2 thread
        finally:
            ua.stop()
        return [self.store.outcome(j.job_id) for j in jobs]


@pytest.fixture
def callee(tmp_path: Path) -> Iterator[tuple[int, list[SippProcess]]]:
    port = free_udp_port()
    started: list[SippProcess] = []
    yield port, started
    for proc in started:
        proc.terminate()


def _start(scenario: str, port: int, tmp_path: Path, calls: int) -> SippProcess:
    proc = start_sipp(
        scenario, None, sip_port=port, workdir=tmp_path / "callee", timeout_s=40, calls=calls
    )
    time.sleep(0.5)  # let sipp bind its port
    return proc


def _invites(result: SippResult) -> list[str]:
    """Request lines of the INVITEs sipp received."""
    from tests.e2e.sipp import _split_messages

    return [
        text.split("\n", 1)[0]
        for direction, text in _split_messages(result.messages)
        if direction == "received" and text.startswith("INVITE ")
    ]


def test_refused_dials_send_no_invite_and_busy_is_retried_with_back_off(
    tmp_path: Path, callee: tuple[int, list[SippProcess]]
) -> None:
    port, started = callee
    uas = _start(UAS_BUSY, port, tmp_path, calls=2)
    started.append(uas)
    box = Box(tmp_path, port, max_attempts=2, busy_backoff_s=[2.0])
    jobs = [DialJob(NO_CONSENT), DialJob(ON_DNC), DialJob(ALLOWED, appointment_id="a1")]
    t0 = time.monotonic()
    outcomes = asyncio.run(box.run(jobs))
    result = uas.wait(timeout_s=15)
    assert outcomes == ["refused:no-consent", "refused:dnc", "busy"]
    assert result.returncode == 0, result.logs.get("errors", result.stderr)
    # From the wire: two INVITEs, both to the allowed number; none to the refused ones.
    invites = _invites(result)
    assert invites == [f"INVITE sip:{ALLOWED}@127.0.0.1:{port} SIP/2.0"] * 2
    assert NO_CONSENT not in result.messages and ON_DNC not in result.messages
    assert "P-Asserted-Identity: <tel:+12125550100>" in result.messages
    attempts = box.store.attempts(jobs[2].job_id)
    assert [(a, s, r) for a, _, s, r in attempts] == [(1, 486, "busy"), (2, 486, "busy")]
    gap = attempts[1][1] - attempts[0][1]
    assert 2.0 <= gap < 4.0, gap  # the 2 s back-off, measured on the dialler's clock
    assert time.monotonic() - t0 < 30
    refusals = [(e.phone_number, e.reason) for e in box.events if isinstance(e, DialRefused)]
    assert refusals == [(NO_CONSENT, "no-consent"), (ON_DNC, "dnc")]


def test_an_answered_call_gets_the_conversation_and_a_bye(
    tmp_path: Path, callee: tuple[int, list[SippProcess]]
) -> None:
    port, started = callee
    uas = _start(UAS_ANSWER, port, tmp_path, calls=1)
    started.append(uas)
    box = Box(tmp_path, port)
    job = DialJob(ALLOWED, appointment_id="a7")
    assert asyncio.run(box.run([job])) == ["confirmed"]
    result = uas.wait(timeout_s=15)
    assert result.returncode == 0, result.logs.get("errors", result.stderr)
    assert result.received_requests() == ["INVITE", "ACK", "BYE"]
    assert box.conversations == ["PCMU"]
    assert box.store.latest_for_appointment("a7") == "confirmed"
