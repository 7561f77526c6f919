"""Failed transfers, one call after another: the agent keeps answering (issue: agent went silent).

Real peers on loopback: sipp as the caller's phone (declining the REFER with 603, accepting it
while the target never answers, reporting the target busy with 486, hanging up during the
hold prompt) and the project's own ``appliance call`` client (declining the REFER by default,
or following it to a front desk that answers 486 Busy Here: a sipp UAS). Callers ask for a
person in several phrasings and espeak-ng voices, two calls at a time, for 30 calls. After
every round each call was answered with the AI disclosure and the greeting, and at the end a
fresh call still gets them; the worker's thread count and RSS stay flat.

A separate test follows a transfer that succeeds: ``appliance call --refer follow`` calls the
front desk, which answers, and the agent hangs up its own leg.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import (
    ExpectRefer,
    Pause,
    Play,
    SippProcess,
    render_uac_scenario,
    start_sipp,
)
from tests.e2e.voices import caller_pcap, caller_wav

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

#: Requests for a person that whisper tiny.en hears in every voice below (measured over G.711).
REQUESTS = (
    "Let me talk to a person.",
    "Put me through to a human.",
    "I'd like to speak with someone at the front desk.",
)
VOICES = ("en-us", "en-us+m3", "en-us+f2", "en-gb", "en-us+m7")
#: The AI disclosure and the greeting, with margin (about 8 s of speech).
OPENING_MS = 10500
#: How long the agent waits for a transfer's result (``[transfer] timeout_s``).
TRANSFER_TIMEOUT_S = 4
GREETING = "How can I help you today?"


def _uas_scenario(status: int) -> str:
    """A front desk (sipp UAS) answering every INVITE with ``status`` (200: answer, hold)."""
    if status == 200:
        answer = (
            "      SIP/2.0 200 OK\n      [last_Via:]\n      [last_From:]\n"
            "      [last_To:];tag=[pid]SIPpTag01[call_number]\n      [last_Call-ID:]\n"
            "      [last_CSeq:]\n"
            "      Contact: <sip:[local_ip]:[local_port];transport=[transport]>\n"
            "      Content-Type: application/sdp\n      Content-Length: [len]\n\n"
            "      v=0\n      o=desk 1 1 IN IP[local_ip_type] [local_ip]\n      s=-\n"
            "      c=IN IP[local_ip_type] [local_ip]\n      t=0 0\n"
            "      m=audio [auto_media_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000\n"
        )
        tail = (
            '  <recv request="ACK"/>\n  <recv request="BYE" timeout="60000"/>\n'
            "  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n"
            "      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n"
            "      Content-Length: 0\n\n    ]]>\n  </send>\n"
        )
    else:
        answer = (
            f"      SIP/2.0 {status} Busy Here\n      [last_Via:]\n      [last_From:]\n"
            "      [last_To:];tag=[pid]SIPpTag01[call_number]\n      [last_Call-ID:]\n"
            "      [last_CSeq:]\n      Content-Length: 0\n"
        )
        tail = '  <recv request="ACK"/>\n'
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="front desk">\n'
        '  <recv request="INVITE"/>\n'
        f"  <send>\n    <![CDATA[\n\n{answer}\n    ]]>\n  </send>\n{tail}</scenario>\n"
    )


class FrontDesk:
    """The transfer target: a sipp UAS on a fixed port, restartable with another behaviour."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_udp_port()
        self.proc: SippProcess | None = None

    @property
    def uri(self) -> str:
        return f"sip:frontdesk@127.0.0.1:{self.port}"

    def start(self, status: int, calls: int = 1000) -> SippProcess:
        self.stop()
        self.proc = start_sipp(
            _uas_scenario(status),
            None,
            sip_port=self.port,
            timeout_s=900,
            workdir=self.workdir / f"desk-{status}-{time.monotonic_ns()}",
            calls=calls,
        )
        time.sleep(0.5)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc = None


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDesk]:
    desk = FrontDesk(tmp_path_factory.mktemp("desk"))
    yield desk
    desk.stop()


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, store: Path, desk: FrontDesk
) -> Iterator[ApplianceProcess]:
    work = tmp_path_factory.mktemp("transfer-agent")
    proc = ApplianceProcess(
        work,
        sip_port=free_udp_port(),
        rtp_port=44000,
        extra_toml=f'[transfer]\ntarget = "{desk.uri}"\ntimeout_s = {TRANSFER_TIMEOUT_S}\n',
    )
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


@dataclass
class Caller:
    """One scripted caller: its peer, what it does with the REFER, what the agent must see.

    ``statuses`` is the set of SIP statuses the agent's TransferResult may carry (0: no final
    answer before the transfer timeout); ``None`` allows no TransferResult at all (a caller
    who hung up before the REFER was sent).
    """

    name: str
    peer: str  # "sipp" or "client"
    statuses: set[int] | None
    refer: str = "decline"  # client: --refer
    steps: list[object] = field(default_factory=list)
    proc: object = None
    out: Path | None = None


def _sipp_caller(name: str, after: list[object], statuses: set[int] | None) -> Caller:
    return Caller(name, "sipp", statuses, steps=after)


CALLERS = (
    _sipp_caller("sipp declines the REFER (603)", [ExpectRefer(accept=False), Pause(3000)], {603}),
    _sipp_caller(
        "sipp accepts, the target never answers",
        [ExpectRefer(accept=True, notify_status=None), Pause(TRANSFER_TIMEOUT_S * 1000 + 3300)],
        {0},
    ),
    _sipp_caller(
        "sipp accepts, the target is busy (486)",
        [ExpectRefer(accept=True, notify_status=486), Pause(3000)],
        {486},
    ),
    _sipp_caller("sipp hangs up during the hold prompt", [Pause(900)], None),
    Caller("appliance call declines the REFER", "client", {603}, refer="decline"),
    Caller("appliance call follows it to a busy desk", "client", {486}, refer="follow"),
)


def _start(caller: Caller, agent: ApplianceProcess, work: Path, n: int) -> None:
    request = REQUESTS[n % len(REQUESTS)]
    voice = VOICES[n % len(VOICES)]
    if caller.peer == "sipp":
        pcap = caller_pcap(request, work, voice=voice)
        steps = [Pause(OPENING_MS), Play(str(pcap)), *caller.steps]
        caller.proc = start_sipp(
            render_uac_scenario(steps=steps),
            agent.uri,
            timeout_s=60,
            workdir=work / f"sipp-{n}",
        )
        return
    wav = caller_wav(request, work, voice=voice)
    caller.out = work / f"client-{n}.json"
    cmd = [
        sys.executable, "-m", "appliance.cli", "--log-level", "WARNING", "call",
        f"sip:appliance@{agent.uri}", "--wav", str(wav), "--refer", caller.refer,
        "--bind", f"127.0.0.1:{free_udp_port()}", "--rtp-port", str(52000 + 40 * (n % 20)),
        "--max-duration-s", "45",
    ]  # fmt: skip
    caller.proc = subprocess.Popen(  # noqa: S603 - our own CLI
        cmd,
        stdout=caller.out.open("w"),
        stderr=(work / f"client-{n}.err").open("w"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _finish(caller: Caller) -> str:
    """Wait for the caller; return a problem description, or ``""``."""
    if caller.peer == "sipp":
        result = caller.proc.wait()  # type: ignore[attr-defined]
        if result.returncode != 0 and caller.statuses is not None:
            return f"sipp exited {result.returncode}: {result.messages[-1500:]}"
        return ""
    proc: subprocess.Popen[bytes] = caller.proc  # type: ignore[assignment]
    code = proc.wait(timeout=90)
    assert caller.out is not None
    text = caller.out.read_text()
    if code != 0:
        err = caller.out.with_suffix(".err")
        return f"appliance call exited {code}: {text[-800:]} {err.read_text()[-1500:]}"
    report = json.loads(text)
    want = ["followed" if caller.refer == "follow" else "declined"]
    if report["refers"] != want:
        return f"REFER handled as {report['refers']}, asked to {caller.refer}"
    return ""


def _proc_status(pid: int) -> tuple[int, int]:
    """(threads, RSS in kB) of a process, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


def _calls(agent: ApplianceProcess) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = {}
    for e in agent.events():
        if e["call_id"] not in ("", "-"):
            calls.setdefault(str(e["call_id"]), []).append(e)
    return calls


def _greeted(events: list[dict]) -> bool:
    kinds = [e["kind"] for e in events]
    spoke = [str(e.get("text", "")) for e in events if e["kind"] == "AgentSpoke"]
    return "CallAnswered" in kinds and "DisclosurePlayed" in kinds and GREETING in spoke


def _wait_ended(agent: ApplianceProcess, count: int, timeout_s: float = 40) -> None:
    ended = agent.wait_event("CallScored", count=count, timeout_s=timeout_s)
    assert len(ended) >= count, f"{len(ended)} of {count} calls ended:\n{agent.log()[-3000:]}"


def _greeting_call(agent: ApplianceProcess, work: Path) -> dict[str, list[dict]]:
    """One fresh call that listens to the opening and hangs up; returns all calls' events."""
    before = set(_calls(agent))
    proc = start_sipp(
        render_uac_scenario(steps=[Pause(OPENING_MS)]), agent.uri, timeout_s=40, workdir=work
    )
    result = proc.wait()
    assert result.returncode == 0, result.messages[-1500:]
    _wait_ended(agent, len(before) + 1)
    calls = _calls(agent)
    new = [c for c in calls if c not in before]
    assert len(new) == 1 and _greeted(calls[new[0]]), [e["kind"] for e in calls[new[0]]]
    return calls


def test_thirty_failed_transfers_in_a_row_leave_the_agent_answering(
    agent: ApplianceProcess, desk: FrontDesk, tmp_path: Path
) -> None:
    desk.start(486)
    assert agent.proc is not None
    pid = agent.proc.pid
    samples: list[tuple[int, int]] = []
    seen: set[str] = set(_calls(agent))
    rounds = 15  # two calls at a time: 30 calls
    for r in range(rounds):
        pair = [CALLERS[(2 * r) % len(CALLERS)], CALLERS[(2 * r + 1) % len(CALLERS)]]
        pair = [Caller(c.name, c.peer, c.statuses, c.refer, list(c.steps)) for c in pair]
        for i, caller in enumerate(pair):
            _start(caller, agent, tmp_path, 2 * r + i)
            time.sleep(0.3)
        problems = [f"{c.name}: {p}" for c in pair if (p := _finish(c))]
        assert not problems, f"round {r}: {problems}\n{agent.log()[-2500:]}"
        _wait_ended(agent, len(seen) + 2)
        calls = _calls(agent)
        new = {cid: evs for cid, evs in calls.items() if cid not in seen}
        seen |= set(new)
        assert len(new) == 2, f"round {r}: {len(new)} new calls"
        for cid, evs in new.items():
            assert _greeted(evs), (
                f"round {r}: call {cid} got no greeting: {[e['kind'] for e in evs]}"
            )
            ended = [e for e in evs if e["kind"] == "CallEnded"]
            assert len(ended) == 1, f"round {r}: call {cid} ended {len(ended)} times"
            media = [e for e in evs if e["kind"] == "MediaStats"]
            assert media and media[0]["callback_errors"] == 0, media
        results = [
            (cid, e) for cid, evs in new.items() for e in evs if e["kind"] == "TransferResult"
        ]
        for caller in pair:
            if caller.statuses is None:
                continue  # hung up on hold: a REFER may or may not have gone out
            match = next(((c, e) for c, e in results if int(e["status"]) in caller.statuses), None)
            assert match, (
                f"round {r}: {caller.name}: no TransferResult in {caller.statuses}: "
                + str([e["status"] for _, e in results])
            )
            results.remove(match)
            # A failed transfer ends in the apology, never in silence.
            spoke = " ".join(
                str(e.get("text", "")) for e in new[match[0]] if e["kind"] == "AgentSpoke"
            )
            assert "couldn't reach our staff" in spoke, f"round {r}: {caller.name}: {spoke}"
        samples.append(_proc_status(pid))
    _greeting_call(agent, tmp_path / "after")
    samples.append(_proc_status(pid))
    log = agent.log()
    assert "Traceback" not in log, log[-4000:]
    assert "callback failed" not in log, log[-4000:]
    # Flat after warm-up (the first rounds load per-call ONNX sessions and allocator pools):
    # the median of the last four samples against the first four after warm-up. Before the
    # worker collected and trimmed after each call, this grew by about 900 MB over the run
    # (cyclic pipelines held until a full collection that never came); since, by about 110 MB
    # (measured; a residual of about 4 MB per call, see the closing note).
    warm = samples[3:]
    threads = [t for t, _ in warm]
    rss_mb = [kb / 1024 for _, kb in warm]
    print(f"threads per round: {[t for t, _ in samples]}")
    print(f"RSS per round (MB): {[round(kb / 1024) for _, kb in samples]}")
    assert max(threads) - min(threads) <= 4, threads
    assert statistics.median(rss_mb[-4:]) - statistics.median(rss_mb[:4]) <= 160, rss_mb


def test_appliance_call_follows_a_transfer_that_succeeds(
    agent: ApplianceProcess, desk: FrontDesk, tmp_path: Path
) -> None:
    """``--refer follow``: the client calls the desk, the desk answers, the agent's leg ends."""
    sipp = desk.start(200, calls=1)
    before = len(agent.wait_event("CallScored", count=0))
    caller = Caller("follow to an answering desk", "client", {200}, refer="follow")
    _start(caller, agent, tmp_path, 0)
    problem = _finish(caller)
    assert not problem, problem
    result = sipp.wait(30)
    assert result.returncode == 0, result.messages[-2000:]
    assert "INVITE sip:frontdesk@" in result.messages and "BYE sip:" in result.messages
    _wait_ended(agent, before + 1)
    evs = _calls(agent)[str(agent.wait_event("CallEnded", count=before + 1)[-1]["call_id"])]
    transfer = [e for e in evs if e["kind"] == "TransferResult"]
    assert transfer and transfer[-1]["ok"] is True and transfer[-1]["status"] == 200, transfer
    assert [e["disposition"] for e in evs if e["kind"] == "CallEnded"] == ["transferred"]
