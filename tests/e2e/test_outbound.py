"""End to end: the dialler places real INVITEs from pjsua2 to sipp as the callee (a UAS).

The dialler runs in this process with the box's own ``SipUserAgent`` (client mode) behind
``SipPlacer``, the real consent and DNC files and the real gate. sipp plays the PBX trunk and
the patient's phone; its message log is the wire record of what the box sent:

* a dial the gate refuses sends no INVITE (sipp's message log holds only the one INVITE the
  gate allowed);
* a busy line (486) is dialled again after the back-off, then recorded as ``busy``;
* an answered call (200 OK with SDP) gets the conversation seam and a BYE.

``appliance serve`` then places live calls to sipp playing the patient (the opt-out, the
confirmation), and one to sipp playing an answering machine: a greeting and a beep get the
voicemail message (no PHI) after the beep, checked in the events, on the wire and transcribed.

The in-process gate's clock is a fixed instant (10:00 in New York) moving at real speed, so
the test does not depend on the hour it runs at.
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


def _start(
    scenario: str, port: int, tmp_path: Path, calls: int, timeout_s: float = 40
) -> SippProcess:
    proc = start_sipp(
        scenario, None, sip_port=port, workdir=tmp_path / "callee", timeout_s=timeout_s,
        calls=calls,
    )  # fmt: skip
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


# ----------------------------------------------------------------------------- live answers
#
# ``appliance serve`` with ``[outbound] enabled`` places the call (``outbound.dial`` on its
# control socket); sipp answers and plays the patient's words (espeak-ng, a different voice
# from the agent's Kokoro) into the call, timed to the agent's replies.

#: Candidate numbers in zones far apart: the test takes one whose local time is mid-window now,
#: so the real gate lets it through whatever the hour the test runs at.
CANDIDATES = (
    "+12125550134",  # New York
    "+14155550134",  # Los Angeles
    "+18085550134",  # Honolulu
    "+16715550134",  # Guam
    "+81312345678",  # Tokyo
    "+919876543210",  # Kolkata
    "+442079460134",  # London
)
#: The agent's opening: the disclosure, then the reminder's intro and its first question.
OPENING_MS = 22000
#: The clinic's call-back number, said in the voicemail message ("2 1 2, 5 5 5, 0 1 0 0").
CALLBACK = "+12125550100"


def callable_number(line: int) -> str:
    """A candidate number whose every zone is between 09:00 and 20:00 local time now.

    ``line`` replaces its last digit: each test calls its own number (an opt-out puts one on
    the DNC list for good).
    """
    from zoneinfo import ZoneInfo

    from appliance.policy.calling_window import callee_zones

    now = datetime.now(UTC)
    for number in CANDIDATES:
        hours = [now.astimezone(ZoneInfo(z)).hour for z in callee_zones(number)]
        if hours and all(9 <= h < 20 for h in hours):
            return number[:-1] + str(line)
    raise AssertionError("no candidate zone is inside its calling window now")


def _uas_conversation(turns: list[tuple[str, int]], work: Path, wait_bye_ms: int) -> str:
    """Answer, then for each ``(words, pause before)``: pause, say them; then wait for a BYE.

    The words of one call are one RTP stream: each pcap continues the sequence numbers and the
    timestamps of the one before (at the real time it is played), or pjmedia would drop a
    later turn as old, reordered packets.
    """
    from tests.e2e.voices import caller_wav, read_wav_mono16
    from tests.kit.pcap import pcm_to_rtp_pcap

    steps = []
    elapsed_ms, sequence = 0, 1000
    for n, (words, before_ms) in enumerate(turns):
        pcm, rate = read_wav_mono16(caller_wav(words, work))
        elapsed_ms += before_ms
        pcap = work / f"turn-{n}.pcap"
        # Half a second of silence first: pjmedia's jitter buffer primes on it after the pause,
        # instead of on the first syllables (a bare "Yes." was missed).
        seconds = pcm_to_rtp_pcap(
            pcm, rate, pcap, first_sequence=sequence, first_timestamp=elapsed_ms * 8,
            leading_silence_ms=500,
        )  # fmt: skip
        played_ms = int(seconds * 1000)
        sequence += played_ms // 20 + 1
        elapsed_ms += played_ms + 200
        steps.append(f'  <pause milliseconds="{before_ms}"/>')
        steps.append(
            f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
            f'  <pause milliseconds="{played_ms + 200}"/>'
        )
    answer = UAS_ANSWER.split('<recv request="BYE"/>')[0]
    return (
        answer
        + "\n".join(steps)
        + f'\n  <recv request="BYE" timeout="{wait_bye_ms}"/>\n'
        + "  <send><![CDATA[\n\n      SIP/2.0 200 OK"
        + _RESPONSE_HEAD
        + "\n      Content-Length: 0\n\n    ]]></send>\n</scenario>\n"
    )


@pytest.fixture(scope="module")
def agent_box(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[object]:
    import shutil

    from tests.e2e.server import ApplianceProcess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    work = tmp_path_factory.mktemp("outbound")
    trunk_port = free_udp_port()
    proc = ApplianceProcess(
        work,
        sip_port=free_udp_port(),
        rtp_port=46000,
        max_calls=2,
        extra_toml=(
            f'[scheduling]\ndemo_seed = true\ndb = "{work / "calendar.sqlite"}"\n'
            f'[admin]\ncontrol_socket = "{work / "control.sock"}"\n'
            "[outbound]\nenabled = true\nmax_concurrent = 1\nring_timeout_s = 10\n"
            f'callback_number = "{CALLBACK}"\n'
            f'trunk_uri = "sip:{{number}}@127.0.0.1:{trunk_port}"\n'
            f'consent_db = "{work / "consent.sqlite"}"\ndnc_db = "{work / "dnc.sqlite"}"\n'
            f'outcomes_db = "{work / "dialler.sqlite"}"\n'
        ),
    )
    proc.trunk_port = trunk_port  # type: ignore[attr-defined]
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


@pytest.fixture
def settled(agent_box: object) -> Iterator[object]:
    """The box, and after the test: its calls have ended (a failed script leaves one up)."""
    yield agent_box
    answered = len(agent_box.wait_event("CallAnswered", timeout_s=0))  # type: ignore[attr-defined]
    agent_box.wait_event("CallEnded", count=answered, timeout_s=90)  # type: ignore[attr-defined]


def _dial_and_wait(box: object, number: str, appointment: str, timeout_s: float = 120) -> str:
    from appliance.control import ControlClient

    client = ControlClient(box.workdir / "control.sock")  # type: ignore[attr-defined]
    job = client.call(
        "outbound.dial", {"number": number, "appointment_id": appointment}, "test:e2e"
    )["job_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcome = client.call("outbound.job", {"job_id": job}, "test:e2e")["outcome"]
        if outcome:
            return str(outcome)
        time.sleep(0.5)
    raise AssertionError("the job got no outcome in time")


def _grant(box: object, number: str) -> None:
    from appliance.policy.consent import ConsentStore

    store = ConsentStore(box.workdir / "consent.sqlite", lambda e: None)  # type: ignore[attr-defined]
    store.capture(number, "reminders", method="written", source="import", evidence="e2e")
    store.close()


def test_stop_calling_me_revokes_consent_and_the_next_dial_is_refused(
    settled: object, tmp_path: Path, callee: tuple[int, list[SippProcess]]
) -> None:
    from appliance.policy.dnc import DncList

    box = settled
    number = callable_number(5)
    _grant(box, number)
    # The callee answers "Hello?" as a person does: answering-machine detection hears it.
    scenario = _uas_conversation(
        [("Hello?", 200), ("Please stop calling me.", OPENING_MS)], tmp_path, wait_bye_ms=15000
    )
    port = box.trunk_port  # type: ignore[attr-defined]
    _, started = callee
    uas = _start(scenario, port, tmp_path, calls=1, timeout_s=90)
    started.append(uas)
    assert _dial_and_wait(box, number, "appt-demo-2") == "opted-out"
    assert _dial_and_wait(box, number, "appt-demo-2", timeout_s=10) == "refused:dnc"
    result = uas.wait(timeout_s=20)
    assert len(_invites(result)) == 1  # the refused re-dial sent nothing
    dnc = DncList(box.workdir / "dnc.sqlite")  # type: ignore[attr-defined]
    assert dnc.contains(number)
    dnc.close()
    events = box.events()  # type: ignore[attr-defined]
    revoked = [e for e in events if e["kind"] == "ConsentRecorded" and e["revoked"]]
    assert [(e["scope"], e["source"]) for e in revoked] == [("all", "outbound-call")]
    refused = [e for e in events if e["kind"] == "DialRefused"]
    assert [e["reason"] for e in refused] == ["dnc"]
    # AMD listened first: a short "Hello?" and then silence is a person, so the conversation
    # ran; the disclosure began within ten seconds of the answer (AmdDecided's wall_ms counts
    # from the 200 OK).
    [amd] = [e for e in events if e["kind"] == "AmdDecided"]
    assert (amd["decision"], amd["cause"], amd["treated_as"]) == (
        "human",
        "after_greeting_silence",
        "live",
    )
    assert int(amd["decided_at_ms"]) < 4000
    answered_t = float(amd["t"]) - int(amd["wall_ms"]) / 1000
    disclosure = next(e for e in events if e["kind"] == "DisclosurePlayed")
    assert float(disclosure["started"]) - answered_t < 10.0


@pytest.mark.xfail(
    strict=False,
    reason=(
        "sipp cannot listen: the callee's three answers are played on a timer, and a short "
        "'yes' that lands across the agent's read-back was missed in 3 of 4 runs (issue 15 "
        "note); the date-of-birth gate and the opt-out are asserted by the tests above"
    ),
)
def test_live_answer_confirms_the_appointment_after_the_date_of_birth(
    settled: object, tmp_path: Path, callee: tuple[int, list[SippProcess]]
) -> None:
    box = settled
    number = callable_number(4)
    _grant(box, number)
    scenario = _uas_conversation(
        [
            ("March fourth, nineteen eighty two.", OPENING_MS),
            # after the read-back of the date ("I heard March 4, 1982. Is that right?")
            ("Yes it is.", 11000),
            # after the reminder itself, about 15 s of speech
            ("Yes, I'll be there.", 25000),
        ],
        tmp_path,
        wait_bye_ms=25000,
    )
    port = box.trunk_port  # type: ignore[attr-defined]
    _, started = callee
    uas = _start(scenario, port, tmp_path, calls=1, timeout_s=150)
    started.append(uas)
    outcome = _dial_and_wait(box, number, "appt-demo-1")
    result = uas.wait(timeout_s=30)
    events = box.events()  # type: ignore[attr-defined]
    tools = [(e["tool"], e["ok"]) for e in events if e["kind"] == "ToolCalled"]
    assert outcome == "confirmed", (tools, box.log()[-2000:])  # type: ignore[attr-defined]
    assert tools == [("reminder.verify", True), ("reminder.confirm", True)]
    answered = [e for e in events if e["kind"] == "CallAnswered"][-1]  # this test's call
    assert answered["channel"] == "outbound"
    call_id = answered["call_id"]
    disclosure = next(
        e for e in events if e["kind"] == "DisclosurePlayed" and e["call_id"] == call_id
    )
    assert disclosure["call_id"] == call_id
    assert float(disclosure["started"]) - float(answered["t"]) < 10.0  # within ten seconds
    assert "maple street family clinic" in str(disclosure["text"]).lower()
    spoken = [e for e in events if e["kind"] == "AgentSpoke" and e["call_id"] == call_id]
    verified_t = next(
        float(e["t"]) for e in events if e["kind"] == "IdentityVerified" and e["call_id"] == call_id
    )
    before = " ".join(str(e["text"]) for e in spoken if float(e["t"]) < verified_t)
    assert "Patel" not in before and "10:30" not in before
    assert any("Dr. Patel" in str(e["text"]) for e in spoken)
    assert result.received_requests() == ["INVITE", "ACK", "BYE"]  # the agent hung up


# ----------------------------------------------------------------------------- voicemail
#
# sipp answers like an answering machine: a greeting (espeak-ng, another voice than the
# agent's), a gap and a 1 kHz beep, as benchmarks/amd.py builds its greetings, then it records
# (sends nothing) until the BYE. tshark captures the call on the loopback interface.

VOICEMAIL_GREETING = (
    "Hi, you've reached the Brown family. We can't take your call right now. "
    "Please leave a message after the tone."
)
#: What the message must never say: the patient of appt-demo-4 (Robert Brown, with Dr. Nguyen
#: on a Tuesday at 09:30) or that there is an appointment.
PHI_WORDS = ("robert", "brown", "nguyen", "tuesday", "9:30", "09:30", "appointment")


def _uas_voicemail(work: Path) -> tuple[str, int, int]:
    """The answering machine's scenario; returns it with the beep's onset and end in the pcap."""
    import numpy as np

    from tests.e2e.voices import caller_wav, read_wav_mono16
    from tests.kit.pcap import pcm_to_rtp_pcap

    pcm, rate = read_wav_mono16(caller_wav(VOICEMAIL_GREETING, work, voice="en-us+f3"))
    greeting = np.frombuffer(pcm, dtype=np.int16)
    t = np.arange(int(rate * 0.5)) / rate  # a 500 ms 1 kHz beep at -12 dBFS
    beep = (np.sin(2 * np.pi * 1000.0 * t) * 32767 * 10 ** (-12 / 20)).astype(np.int16)
    gap = np.zeros(int(rate * 0.6), dtype=np.int16)
    onset_ms = 500 + (len(greeting) + len(gap)) * 1000 // rate  # after the leading silence
    audio = np.concatenate([greeting, gap, beep]).tobytes()
    pcap = work / "voicemail.pcap"
    seconds = pcm_to_rtp_pcap(audio, rate, pcap, leading_silence_ms=500)
    answer = UAS_ANSWER.split('<recv request="BYE"/>')[0]
    scenario = (
        answer
        + f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
        + f'  <pause milliseconds="{int(seconds * 1000) + 200}"/>\n'
        + '  <recv request="BYE" timeout="40000"/>\n'
        + "  <send><![CDATA[\n\n      SIP/2.0 200 OK"
        + _RESPONSE_HEAD
        + "\n      Content-Length: 0\n\n    ]]></send>\n</scenario>\n"
    )
    return scenario, onset_ms, onset_ms + 500


def test_voicemail_gets_the_no_phi_message_after_the_beep(
    settled: object, tmp_path: Path, callee: tuple[int, list[SippProcess]], store: Path
) -> None:
    import numpy as np
    import soxr

    from appliance.config.settings import ModelSettings
    from appliance.models.engines import WhisperEngine
    from tests.e2e.capture import LoopbackCapture, capture_binary
    from tests.kit.pcap import read_rtp_streams, stream_pcm, voiced_intervals

    if capture_binary() is None:
        pytest.skip("tshark is not installed")
    box = settled
    number = callable_number(3)
    _grant(box, number)
    scenario, onset_ms, end_ms = _uas_voicemail(tmp_path)
    port = box.trunk_port  # type: ignore[attr-defined]
    _, started = callee
    t0 = time.monotonic()
    cap = tmp_path / "voicemail-call.pcap"
    with LoopbackCapture(cap, bpf="udp"):
        uas = _start(scenario, port, tmp_path, calls=1, timeout_s=60)
        started.append(uas)
        outcome = _dial_and_wait(box, number, "appt-demo-4", timeout_s=60)
        result = uas.wait(timeout_s=20)
    assert outcome == "voicemail", box.log()[-2000:]  # type: ignore[attr-defined]
    assert result.returncode == 0, result.logs.get("errors", result.stderr)
    assert result.received_requests() == ["INVITE", "ACK", "BYE"]  # the agent hung up

    # The audit's record of the decision: a machine, cued by the beep; features, no audio.
    events = box.events()  # type: ignore[attr-defined]
    answered = [e for e in events if e["kind"] == "CallAnswered"][-1]
    call_id = answered["call_id"]
    amd = [e for e in events if e["kind"] == "AmdDecided" and e["call_id"] == call_id]
    assert len(amd) == 1, amd
    assert (amd[0]["decision"], amd[0]["treated_as"], amd[0]["cue"]) == (
        "machine",
        "voicemail",
        "beep",
    )
    assert amd[0]["decided_at_ms"] < onset_ms  # the greeting's pattern decided it
    assert abs(int(amd[0]["beep_ms"]) - onset_ms) <= 400
    # What the agent said: the disclosure naming the clinic, the call-back number, no PHI.
    assert any(e["kind"] == "DisclosurePlayed" and e["call_id"] == call_id for e in events)
    spoken = " ".join(
        str(e["text"]) for e in events if e["kind"] == "AgentSpoke" and e["call_id"] == call_id
    ).lower()
    assert "maple street family clinic" in spoken and "call us back at 2 1 2" in spoken
    assert not [w for w in PHI_WORDS if w in spoken], spoken

    # From the wire: the agent was silent through the greeting and the beep, then spoke.
    streams = read_rtp_streams(cap)
    rtp = 46000
    agent = max(
        (s for s in streams if rtp <= s.src[1] < rtp + 1000 and s.audio_packets),
        key=lambda s: len(s.audio_packets),
    )
    machine = max(
        (s for s in streams if rtp <= s.dst[1] < rtp + 1000 and s.audio_packets),
        key=lambda s: len(s.audio_packets),
    )
    beep_end = voiced_intervals(machine, threshold_dbfs=-30)[-1][1]
    first_machine = machine.audio_packets[0][0]
    assert abs((beep_end - first_machine) * 1000 - end_ms) < 300  # the beep is the last sound
    speech = voiced_intervals(agent, threshold_dbfs=-40, min_gap_ms=800)
    assert speech, "the agent sent only silence"
    assert speech[0][0] > beep_end, (speech[0][0] - beep_end, speech)
    assert speech[0][0] - beep_end < 2.5  # promptly after the beep
    # The recorded message, transcribed: the clinic and the number, nothing about the patient.
    pcm = np.frombuffer(stream_pcm(agent), dtype=np.int16)
    start = agent.audio_packets[0][0]
    a, b = int((speech[0][0] - start - 0.1) * 8000), int((speech[-1][1] - start + 0.3) * 8000)
    seg = soxr.resample(pcm[max(0, a) : b], 8000, 16000).astype(np.int16)
    stt = ModelSettings(store=store)
    heard = WhisperEngine(stt.path(stt.stt), threads=2).transcribe(seg.tobytes()).text.lower()
    assert "maple street" in heard and "call us back" in heard, heard
    assert not [w for w in PHI_WORDS if w in heard], heard
    assert time.monotonic() - t0 < 90
