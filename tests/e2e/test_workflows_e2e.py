"""Scripted workflow calls over real SIP/RTP: sipp is the caller, espeak-ng its voice (8 kHz).

The caller's voice comes from a different engine than the agent's (Kokoro), so the agent's
STT hears a voice it was not tuned on. sipp cannot react to what it hears, so each script's
pauses leave room for the longest reply the workflow gives at that step.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import (
    ExpectRefer,
    Pause,
    Play,
    WaitBye,
    parse_refer,
    render_uac_scenario,
    run_sipp,
    start_sipp,
)
from tests.e2e.voices import caller_pcap
from tests.e2e.webhook import WebhookReceiver
from tests.kit.pcap import dtmf_rtp_pcap

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

#: A test card number (Visa test PAN, Luhn-valid); it must appear nowhere on disk.
TEST_PAN = "4111111111111111"
TEST_EXPIRY = "1299"  # December 2099
TEST_CVV = "737"
#: The opening: disclosure and greeting, about 8 s of speech.
OPENING_MS = 10500


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[WebhookReceiver, WebhookReceiver]]:
    with WebhookReceiver() as cti, WebhookReceiver() as payments:
        yield cti, payments


@pytest.fixture(scope="module")
def clinic(
    tmp_path_factory: pytest.TempPathFactory,
    store: Path,
    receivers: tuple[WebhookReceiver, WebhookReceiver],
) -> Iterator[ApplianceProcess]:
    cti, payments = receivers
    work = tmp_path_factory.mktemp("clinic")
    proc = ApplianceProcess(
        work,
        sip_port=free_udp_port(),
        rtp_port=45000,
        extra_toml=(
            "[scheduling]\ndemo_seed = true\n"
            f'[transfer]\ntarget = "sip:frontdesk@127.0.0.1:5999"\nwebhook_url = "{cti.url}"\n'
            "timeout_s = 10\n"
            f'[payments]\nhandoff_url = "{payments.url}"\n'
        ),
    )
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


def say(text: str, work: Path, after_ms: int) -> list[object]:
    """The caller says ``text`` then listens for ``after_ms``."""
    return [Play(str(caller_pcap(text, work))), Pause(after_ms)]


_KEYED = itertools.count()


def keys(digits: str, work: Path) -> list[object]:
    """The caller keys ``digits`` on the keypad.

    RFC 4733 events with distinct timestamps and sequence numbers: sipp's bundled per-digit
    pcaps repeat them, so a repeated digit would be dropped as a duplicate packet.
    """
    n = next(_KEYED)
    path = work / f"dtmf-{n}-{digits.replace('#', 'H').replace('*', 'S')}.pcap"
    # Each keying starts its RTP sequence numbers past the one before: a second pcap starting at
    # 0 again was dropped as reordered packets (the CVV after the expiry was lost). The
    # timestamps stay near the speech pcaps' own: jumping them by minutes made pjmedia lose the
    # caller's next spoken answer.
    dtmf_rtp_pcap(digits, path, first_sequence=n * 2000)
    return [Play(str(path))]


def call_events(proc: ApplianceProcess, before: int) -> tuple[str, list[dict]]:
    ended = proc.wait_event("CallEnded", count=before + 1, timeout_s=30)
    assert len(ended) == before + 1, "the call did not end"
    call_id = str(ended[-1]["call_id"])
    proc.wait_event("CallScored", count=before + 1, timeout_s=10)
    return call_id, [e for e in proc.events() if e["call_id"] == call_id]


def ended_count(proc: ApplianceProcess) -> int:
    return len([e for e in proc.events() if e["kind"] == "CallEnded"])


def files_on_disk(proc: ApplianceProcess) -> list[Path]:
    return [p for p in proc.workdir.rglob("*") if p.is_file()]


def test_reschedule_changes_the_calendar_and_is_scored_resolved(
    clinic: ApplianceProcess, tmp_path: Path
) -> None:
    before = ended_count(clinic)
    steps = [
        Pause(OPENING_MS),
        *say("I need to reschedule my appointment.", tmp_path, 10000),
        *say("My name is Robert Brown.", tmp_path, 4000),
        # Spoken dates defeat Whisper tiny on espeak-ng at 8 kHz ("No members." for "November
        # twentieth ..."), so this caller keys the date of birth in, as the prompt allows.
        *keys("09121968", tmp_path),
        Pause(13000),
        *say("Next Wednesday at eleven in the morning.", tmp_path, 11000),
        *say("Yes that's right.", tmp_path, 11500),
        *say("No.", tmp_path, 500),
        WaitBye(15000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=150)
    call_id, events = call_events(clinic, before)
    heard = [e["user_text"] for e in events if e["kind"] == "TurnEnded"]
    spoke = [e["text"] for e in events if e["kind"] == "AgentSpoke"]
    assert result.returncode == 0, f"heard={heard} spoke={spoke}\n{result.messages[-1500:]}"
    tools = [(e["tool"], e["ok"]) for e in events if e["kind"] == "ToolCalled"]
    assert ("calendar.reschedule", True) in tools, f"heard={heard} spoke={spoke}"
    kinds = [e["kind"] for e in events]
    assert kinds.index("IdentityVerified") < kinds.index("ToolCalled")
    with sqlite3.connect(clinic.workdir / "var" / "calendar.sqlite") as db:
        rows = db.execute(
            "SELECT a.start FROM appointments a JOIN patients p ON p.id = a.patient_id "
            "WHERE p.family_name = 'Brown' AND a.status = 'booked'"
        ).fetchall()
    assert len(rows) == 1 and " 11:00" in rows[0][0].replace("T", " "), rows
    score = [e for e in events if e["kind"] == "CallScored"][-1]
    assert score["outcome"] == "resolved" and score["contained"] is True
    assert score["identity_before_phi_ok"] and score["disclosure_ok"]


def fsdd_groups_pcap(groups: list[str], work: Path, speaker: str = "lucas") -> Path:
    """Real recorded digits (FSDD) read in groups: 150 ms between digits, 600 ms between groups.

    ``["09", "12", "1968"]`` is a caller reading a date of birth as "oh nine ... one two ...
    one nine six eight", the pauses at which the old endpointing cut the turn.
    """
    import numpy as np

    from tests.conftest import read_pcm, speech_dir
    from tests.kit.pcap import pcm_to_rtp_pcap

    folder = speech_dir() / "fsdd"
    if not folder.is_dir():
        pytest.skip(f"recorded digits not found at {folder} (../shared/data/speech)")
    rate = 8000
    parts: list[np.ndarray] = []
    take = 0
    for group in groups:
        for digit in group:
            parts += [read_pcm(folder / f"{digit}_{speaker}_{take % 10}.wav", rate)]
            parts += [np.zeros(rate * 150 // 1000, np.int16)]
            take += 1
        parts += [np.zeros(rate * 450 // 1000, np.int16)]
    key = hashlib.sha256("|".join([*groups, speaker]).encode()).hexdigest()[:16]
    path = work / f"fsdd-{key}.pcap"
    pcm_to_rtp_pcap(np.concatenate(parts).tobytes(), rate, path)
    return path


def test_date_of_birth_said_in_groups_with_pauses_verifies_the_caller(
    clinic: ApplianceProcess, tmp_path: Path
) -> None:
    """Slot-aware listening end to end: the date is one turn, heard right, identity verified.

    The date of birth is real recorded speech (FSDD digits) read in three groups with pauses.
    """
    before = ended_count(clinic)
    steps = [
        Pause(OPENING_MS),
        *say("I need to reschedule my appointment.", tmp_path, 9000),
        *say("My name is Robert Brown.", tmp_path, 5000),
        Play(str(fsdd_groups_pcap(["09", "12", "1968"], tmp_path))),
        Pause(6000),  # a spoken date of birth is always read back: "I heard ... Is that right?"
        *say("Yes, that's right.", tmp_path, 9000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=120)
    call_id, events = call_events(clinic, before)
    heard = [e["user_text"] for e in events if e["kind"] == "TurnEnded"]
    spoke = [e["text"] for e in events if e["kind"] == "AgentSpoke"]
    assert result.returncode == 0, f"heard={heard} spoke={spoke}\n{result.messages[-1500:]}"
    dob = [e for e in events if e["kind"] == "SlotFilled" and e["slot"] == "birth_date"]
    assert dob and dob[-1]["value"] == "September 12, 1968", f"heard={heard} spoke={spoke}"
    assert dob[-1]["source"] == "speech"
    assert any(e["kind"] == "IdentityVerified" and e["ok"] for e in events), f"heard={heard}"
    # The date was one turn: one turn holds all eight digits.
    digits = ["".join(c for c in t if c.isdigit()) for t in heard]
    assert "09121968" in digits or "9121968" in digits, f"heard={heard}"


def test_request_for_a_person_is_referred_with_handoff_and_context(
    clinic: ApplianceProcess, receivers: tuple[WebhookReceiver, WebhookReceiver], tmp_path: Path
) -> None:
    cti, _ = receivers
    seen = len(cti.requests)
    before = ended_count(clinic)
    steps = [
        Pause(OPENING_MS),
        *say("Let me talk to a person.", tmp_path, 0),
        ExpectRefer(accept=True, notify_status=200),
        WaitBye(15000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=60)
    assert result.returncode == 0, result.messages[-2500:]
    refer = parse_refer(result.messages)
    assert "sip:frontdesk@127.0.0.1:5999" in str(refer["Refer-To"])
    handoff = str(refer["X-Handoff-ID"])
    assert len(handoff) == 16 and handoff.isalnum()  # opaque: no PHI in SIP headers
    cti.wait(seen + 1, timeout=10)
    context = cti.json_bodies()[seen]
    assert context["handoff_id"] == handoff and context["reason"] == "explicit_request"
    call_id, events = call_events(clinic, before)
    spoke = " ".join(e["text"] for e in events if e["kind"] == "AgentSpoke")
    assert "Please hold while I connect you" in spoke  # the hold prompt, no dead air
    transfer = [e for e in events if e["kind"] == "TransferResult"][-1]
    assert transfer["ok"] is True and transfer["webhook_delivered"] is True
    assert [e for e in events if e["kind"] == "CallScored"][-1]["transfer_appropriate"] is True


def test_rejected_transfer_falls_back_to_a_message_and_ends_politely(
    clinic: ApplianceProcess, tmp_path: Path
) -> None:
    before = ended_count(clinic)
    steps = [
        Pause(OPENING_MS),
        *say("Let me talk to a person.", tmp_path, 0),
        ExpectRefer(accept=False),
        Pause(9500),  # "I'm sorry, I couldn't reach our staff... leave a short message"
        *say("Please call me back about my bill.", tmp_path, 500),
        WaitBye(15000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=60)
    call_id, events = call_events(clinic, before)
    spoke = " ".join(e["text"] for e in events if e["kind"] == "AgentSpoke")
    assert result.returncode == 0, spoke + result.messages[-1500:]
    assert "couldn't reach our staff" in spoke and "Goodbye" in spoke
    assert any(e["kind"] == "MessageTaken" for e in events)
    score = [e for e in events if e["kind"] == "CallScored"][-1]
    assert score["outcome"] == "message_taken" and score["contained"] is True


def test_high_risk_request_verifies_with_dtmf_fallback_then_transfers(
    clinic: ApplianceProcess, tmp_path: Path
) -> None:
    """Refill: a misheard spoken birth date falls back to the keypad, then a transfer.

    The spoken date is read back, the caller says no, keypad entry is offered and used,
    identity is verified, and the call goes to clinical staff.
    """
    before = ended_count(clinic)
    steps = [
        Pause(OPENING_MS),
        *say("I need a refill of my blood pressure medication.", tmp_path, 8500),
        *say("My name is Linda Miller.", tmp_path, 5000),
        *say("January thirtieth nineteen fifty five.", tmp_path, 5500),  # read back
        *say("No.", tmp_path, 4000),  # -> "You can also key in your date of birth..."
        *keys("01301955", tmp_path),
        Pause(500),
        ExpectRefer(accept=True, notify_status=200),
        WaitBye(15000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=90)
    call_id, events = call_events(clinic, before)
    spoke = " ".join(e["text"] for e in events if e["kind"] == "AgentSpoke")
    assert result.returncode == 0, spoke + result.messages[-1500:]
    assert "You can also key in your date of birth" in spoke
    filled = [e for e in events if e["kind"] == "SlotFilled" and e["slot"] == "birth_date"]
    assert filled and filled[-1]["source"] == "dtmf"
    assert [e["ok"] for e in events if e["kind"] == "IdentityVerified"] == [True]
    assert [e["reason"] for e in events if e["kind"] == "Escalated"] == ["high_risk"]
    for clinical in ("dose", "mg", "milligram", "take your", "result", "normal"):
        assert clinical not in spoke.lower()


def test_pci_pause_keeps_card_digits_off_disk_logs_and_prompts(
    clinic: ApplianceProcess, receivers: tuple[WebhookReceiver, WebhookReceiver], tmp_path: Path
) -> None:
    _, payments = receivers
    seen = len(payments.requests)
    before = ended_count(clinic)
    steps = [
        Pause(OPENING_MS),
        *say("I want to pay my bill by card.", tmp_path, 8000),
        *keys(TEST_PAN + "#", tmp_path),
        Pause(5000),  # "Now key in the expiry date ..."
        *keys(TEST_EXPIRY, tmp_path),  # ends by its 4th digit
        Pause(5000),  # "And now the ... security code ..."
        *keys(TEST_CVV + "#", tmp_path),
        Pause(9000),  # the code prompt's end, then "Thank you ..." and "anything else?"
        *say("No.", tmp_path, 500),
        WaitBye(15000),
    ]
    result = run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=90)
    call_id, events = call_events(clinic, before)
    spoke = " ".join(e["text"] for e in events if e["kind"] == "AgentSpoke")
    heard = [(e["kind"], e.get("user_text") or e.get("listening")) for e in events
             if e["kind"] in ("TurnEnded", "TurnLatency", "BargeIn")]  # fmt: skip
    assert result.returncode == 0, f"{spoke}\nheard: {heard}\n{result.messages[-1500:]}"
    payments.wait(seen + 1, timeout=5)
    body = payments.json_bodies()[seen]  # only the payment handler gets the card
    assert (body["pan"], body["expiry"], body["cvv"]) == (TEST_PAN, TEST_EXPIRY, TEST_CVV)
    pauses = [e for e in events if e["kind"] == "PciPause"]
    assert [p["active"] for p in pauses] == [True, False]
    assert pauses[-1]["digits"] == 16 and pauses[-1]["outcome"] == "accepted"
    assert not [e for e in events if e["kind"] == "DtmfReceived"]
    # Nowhere on disk: audit DB and WAL, metadata DB, calendar, logs, even the test event stream.
    for path in files_on_disk(clinic):
        blob = path.read_bytes()
        assert TEST_PAN.encode() not in blob, f"card number in {path.name}"
        assert " ".join(TEST_PAN).encode() not in blob, f"spaced card number in {path.name}"
        assert f"{TEST_EXPIRY}{TEST_CVV}".encode() not in blob, f"expiry and code in {path.name}"


CONSULT_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="staff extension answering the consult call">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp="X-Handoff-ID: *([0-9a-f]+)" search_in="msg" check_it="true"
            assign_to="whole,handoff"/>
      <log message="CONSULT-HANDOFF [$handoff] [$whole]"/>
    </action>
  </recv>
  <send><![CDATA[

SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o=staff 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000

]]></send>
  <recv request="ACK" crlf="true"/>
  <recv request="BYE"/>
  <send><![CDATA[

SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>
Content-Length: 0

]]></send>
</scenario>
"""


def test_attended_transfer_consults_staff_then_refers_with_replaces(
    clinic: ApplianceProcess, tmp_path: Path
) -> None:
    """Attended transfer: consult the staff extension, then REFER with Replaces.

    The mode is switched on by SIGHUP; the agent calls the staff extension first, then REFERs
    the caller with Replaces naming that consult call.
    """
    import signal

    staff_port = free_udp_port()
    staff = start_sipp(
        CONSULT_UAS, None, sip_port=staff_port, timeout_s=90, workdir=tmp_path / "staff"
    )
    original = clinic.config.read_text()
    attended = original.replace(
        'target = "sip:frontdesk@127.0.0.1:5999"',
        f'target = "sip:staff@127.0.0.1:{staff_port}"\nmode = "attended"',
    )
    assert attended != original
    reloads = len(clinic.wait_event("ConfigChanged", count=0, timeout_s=0))
    clinic.config.write_text(attended)
    clinic.signal(signal.SIGHUP)
    changed = clinic.wait_event("ConfigChanged", count=reloads + 1, timeout_s=20)
    assert changed[-1]["accepted"] is True
    try:
        before = ended_count(clinic)
        steps = [
            Pause(OPENING_MS),
            *say("Let me talk to a person.", tmp_path, 0),
            ExpectRefer(accept=True, notify_status=200),
            WaitBye(15000),
        ]
        result = run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=60)
        assert result.returncode == 0, result.messages[-2500:]
        refer = parse_refer(result.messages)
        assert f"staff@127.0.0.1:{staff_port}" in str(refer["Refer-To"])
        assert "Replaces" in str(refer["Refer-To"])  # RFC 3891: take over the consult call
        staff_out = staff.wait(60)
        assert staff_out.returncode == 0, staff_out.messages[-2000:]
        assert f"CONSULT-HANDOFF {refer['X-Handoff-ID']}" in staff_out.logs.get("log", "")
        _, events = call_events(clinic, before)
        attempt = [e for e in events if e["kind"] == "TransferAttempted"][-1]
        assert attempt["mode"] == "attended"
        assert [e for e in events if e["kind"] == "TransferResult"][-1]["ok"] is True
    finally:
        clinic.config.write_text(original)
        clinic.signal(signal.SIGHUP)
        if staff.poll() is None:
            staff.terminate()


def test_corrupt_workflow_on_reload_is_refused_and_the_last_good_set_serves(
    clinic: ApplianceProcess, tmp_path: Path
) -> None:
    import signal

    from appliance.agent.workflow import default_dir

    broken = tmp_path / "workflows"
    shutil.copytree(default_dir(), broken)
    path = broken / "appointments.yaml"
    path.write_text(path.read_text().replace("type: date_of_birth", "type: birthday", 1))
    original = clinic.config.read_text()
    changed = original.replace("[scheduling]", f'[agent]\nworkflows_dir = "{broken}"\n[scheduling]')
    reloads = len(clinic.wait_event("ConfigChanged", count=0, timeout_s=0))
    clinic.config.write_text(changed)
    try:
        clinic.signal(signal.SIGHUP)
        events = clinic.wait_event("ConfigChanged", count=reloads + 1, timeout_s=20)
        assert events[-1]["accepted"] is False and events[-1]["detail"] == "workflow_invalid"
        log = clinic.log()
        assert f"{path}: node 'ask_dob': field 'slot.type'" in log
        before = ended_count(clinic)
        steps = [Pause(OPENING_MS), *say("Where can I park?", tmp_path, 6000)]  # caller hangs up
        run_sipp(render_uac_scenario(steps=steps), clinic.uri, timeout_s=60)
        _, call = call_events(clinic, before)
        spoke = " ".join(e["text"] for e in call if e["kind"] == "AgentSpoke")
        assert "parking" in spoke.lower()  # still serving, from the last good set
    finally:
        clinic.config.write_text(original)
        clinic.signal(signal.SIGHUP)
