"""Helpers to place test calls with sipp (SIPp 3.6, Debian package ``sip-tester``).

:func:`render_uac_scenario` writes a UAC scenario from a list of small step objects (play a
speech pcap, pause, send DTMF as SIP INFO or RFC 4733 RTP, accept or decline a blind transfer
(REFER), wait for the far end's BYE);
:func:`run_sipp` runs it against a target and returns the exit status and the SIP message log,
and :func:`start_sipp` starts one in the background for concurrent calls.

sipp facts these helpers rely on:

* Exit status 0 means every call reached the end of the scenario; 1 means at least one failed.
* ``play_pcap_audio`` sends RTP from a raw socket (needs root or CAP_NET_RAW), paced by the
  pcap timestamps, from the SDP's ``[auto_media_port]`` to the media address of the answer.
  It runs in the background, so each play is followed by a pause as long as the pcap.
* sipp's default behaviour answers an unexpected BYE from the far end with 200 OK and ends
  the call as failed, so a far-end hang-up outside :class:`WaitBye` is handled cleanly and
  still fails the run.
* In-dialog requests the UAC sends (INFO, NOTIFY, re-INVITE, BYE) are written out in full:
  From is our side with our tag, To the far end with ``[peer_tag_param]`` (the To tag of the
  last response sipp received: sipp only learns the peer tag from responses), CSeq the
  dialog's own counter. Responses to requests the far end sends (REFER, BYE) copy the request's
  headers with ``[last_Via:]``, ``[last_From:]`` and so on.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from tests.kit.pcap import pcap_duration, read_rtp_streams
from tests.kit.rtp import DTMF_EVENT_CHARS, g711_payload_type

_LOGGER = logging.getLogger(__name__)

SIPP_DTMF_DIR = Path("/usr/share/sip-tester")
_DTMF_FILE_NAMES = {**{d: d for d in "0123456789"}, "*": "star", "#": "pound"}
TELEPHONE_EVENT_PT = 101
_PORT_RANGE = (20000, 30000)
_handed_out: set[int] = set()


@dataclass(frozen=True)
class Play:
    """Play a pcap of RTP (see ``wav_to_rtp_pcap``), then pause for its duration.

    Attributes:
        pcap_path: The pcap file; its payload type must be one of the offered codecs.
    """

    pcap_path: str | Path


@dataclass(frozen=True)
class Pause:
    """Do nothing for a while (RTP stops; the call stays up).

    Attributes:
        ms: Pause length in milliseconds.
    """

    ms: int


@dataclass(frozen=True)
class InfoDtmf:
    """Send one DTMF digit as SIP INFO (application/dtmf-relay) and expect 200 OK.

    Attributes:
        digit: '0'-'9', '*', '#', 'A'-'D'.
        duration_ms: The ``Duration`` line of the body, in milliseconds.
    """

    digit: str
    duration_ms: int = 160


@dataclass(frozen=True)
class Rfc2833:
    """Play sipp's RFC 4733 (RFC 2833) pcap for one digit (payload type 101).

    Attributes:
        digit: '0'-'9', '*' or '#' (the digits sipp ships ``dtmf_2833_*.pcap`` files for).
        gap_ms: Pause after the event, in milliseconds, so consecutive digits stay distinct.
    """

    digit: str
    gap_ms: int = 100


@dataclass(frozen=True)
class WaitBye:
    """Wait for the far end to hang up (BYE) and answer 200 OK; must be the last step.

    Attributes:
        timeout_ms: Fail the call if no BYE arrives within this many milliseconds.
    """

    timeout_ms: int = 30000


@dataclass(frozen=True)
class ReInvite:
    """Send an in-dialog re-INVITE with the same media and ``direction`` (hold/unhold).

    Attributes:
        direction: SDP direction attribute, e.g. ``"sendonly"`` (hold) or ``"sendrecv"``.
    """

    direction: str = "sendrecv"


@dataclass(frozen=True)
class ExpectRefer:
    """Wait for the far end's in-dialog REFER (blind transfer, RFC 3515/RFC 5589) and answer it.

    The REFER must carry ``Refer-To`` and ``header`` (sipp fails the call otherwise); both are
    logged (see :func:`parse_refer`). It is answered 202 Accepted, or 603 Decline when
    ``accept`` is false. After a 202 sipp, standing in for the PBX that carries out the transfer,
    reports progress with in-dialog NOTIFYs (``Event: refer``, ``message/sipfrag``): first
    "SIP/2.0 100 Trying" (``Subscription-State: active;expires=60``), then, after
    ``final_delay_ms``, "SIP/2.0 <notify_status> <reason>" (``terminated;reason=noresource``
    for a final status), each expecting 200 OK. The transferor then normally hangs up: follow
    with :class:`WaitBye`. A BYE that arrives before a NOTIFY's 200 fails the call.

    Attributes:
        accept: Answer 202 and send NOTIFYs (True) or answer 603 Decline and send none.
        notify_status: Status line of the last NOTIFY (200: the transfer target answered; 486,
            480, 603...: it failed); None sends only the 100 Trying NOTIFY, so the transfer
            never completes (the transferor's timeout case). A 1xx keeps the subscription
            active.
        header: The header the REFER must carry besides Refer-To (the handoff reference).
        timeout_ms: Fail the call if no REFER arrives within this many milliseconds.
        final_delay_ms: Pause between the 100 Trying NOTIFY and the final one.
    """

    accept: bool = True
    notify_status: int | None = 200
    header: str = "X-Handoff-ID"
    timeout_ms: int = 30000
    final_delay_ms: int = 200


Step = Play | Pause | InfoDtmf | Rfc2833 | WaitBye | ReInvite | ExpectRefer

SIP_REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 202: "Accepted",
    404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable",
    486: "Busy Here", 487: "Request Terminated", 500: "Server Internal Error",
    503: "Service Unavailable", 600: "Busy Everywhere", 603: "Decline",
}  # fmt: skip
_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


@dataclass
class SippResult:
    """Outcome of one sipp run.

    Attributes:
        returncode: sipp's exit status (0: all calls succeeded; 1: some failed; negative: killed).
        stdout: sipp's standard output.
        stderr: sipp's standard error (pcap loading notes, fatal errors).
        scenario_path: The scenario file that was run; its directory holds the logs.
        logs: Log texts by kind: "messages" (every SIP message sent and received), "errors"
            (unexpected messages), "log" (``<log>`` actions), "screen" (final statistics).
    """

    returncode: int
    stdout: str
    stderr: str
    scenario_path: Path
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def messages(self) -> str:
        """The SIP message log."""
        return self.logs.get("messages", "")

    def received_status_codes(self) -> list[int]:
        """Return the status codes of all responses sipp received, in order."""
        codes = []
        for direction, text in _split_messages(self.messages):
            first = text.split("\n", 1)[0].strip()
            if direction == "received" and first.startswith("SIP/2.0 "):
                codes.append(int(first.split()[1]))
        return codes

    def received_header(self, status: int, name: str) -> str | None:
        """Return a header value of the first received response with a status code.

        Args:
            status: Status code, for example 503.
            name: Header name, case-insensitive, for example "Retry-After".

        Returns:
            The header value, or None if no such response or header was received.
        """
        for direction, text in _split_messages(self.messages):
            lines = text.split("\n")
            if direction != "received" or not lines[0].startswith(f"SIP/2.0 {status} "):
                continue
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == name.lower():
                    return value.strip()
        return None

    def received_requests(self) -> list[str]:
        """Return the methods of all requests sipp received, in order (e.g. ["BYE"])."""
        methods = []
        for direction, text in _split_messages(self.messages):
            first = text.split("\n", 1)[0].strip()
            if direction == "received" and first and not first.startswith("SIP/2.0"):
                methods.append(first.split()[0])
        return methods


class SippProcess:
    """A sipp process started by :func:`start_sipp`; call :meth:`wait` to collect the result."""

    def __init__(self, popen: subprocess.Popen[str], scenario_path: Path, timeout_s: float):
        self.popen = popen
        self.scenario_path = scenario_path
        self._timeout_s = timeout_s

    def poll(self) -> int | None:
        """Return the exit status if sipp has ended, else None."""
        return self.popen.poll()

    def wait(self, timeout_s: float | None = None) -> SippResult:
        """Wait for sipp to end (killing it after the timeout) and collect its logs.

        Args:
            timeout_s: Seconds to wait; defaults to the run's timeout plus 15 s.

        Returns:
            The result; ``returncode`` is negative if sipp had to be killed.
        """
        try:
            stdout, stderr = self.popen.communicate(timeout=timeout_s or self._timeout_s + 15)
        except subprocess.TimeoutExpired:
            _LOGGER.error("sipp did not finish in time; killing pid %d", self.popen.pid)
            self.popen.kill()
            stdout, stderr = self.popen.communicate()
        return SippResult(
            returncode=self.popen.returncode,
            stdout=stdout,
            stderr=stderr,
            scenario_path=self.scenario_path,
            logs=_read_logs(self.scenario_path.parent),
        )

    def terminate(self) -> None:
        """Stop sipp if it is still running (SIGTERM, then SIGKILL after 5 s)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def render_uac_scenario(
    *,
    steps: list[Step] | tuple[Step, ...] = (),
    codecs: tuple[str, ...] = ("PCMU", "PCMA"),
    expect_status: int = 200,
    service: str = "appliance",
) -> str:
    """Render a sipp UAC scenario: INVITE, the given steps, hang-up.

    The INVITE offers ``codecs`` plus telephone-event/8000 as payload type 101
    (``a=fmtp:101 0-16``). Provisional 100/180/183 responses are optional. If
    ``expect_status`` is not 2xx, the scenario expects exactly that final response, ACKs it
    and ends (sipp exits 0 only if that response came). Otherwise it ACKs the 2xx, runs the
    steps, then sends BYE and expects 200, unless the last step is :class:`WaitBye`.

    Args:
        steps: The steps to run once the call is answered.
        codecs: G.711 codecs to offer, in order of preference ("PCMU", "PCMA").
        expect_status: The final response the INVITE must get.
        service: User part of the Request-URI and To header.

    Returns:
        The scenario XML.

    Raises:
        ValueError: On an invalid step, codec, status or service, a Play pcap whose payload
            type is not offered, or steps with a non-2xx ``expect_status``.
    """
    if not 200 <= expect_status <= 699:
        raise ValueError(f"expect_status must be a final response code, got {expect_status}")
    if not service or any(c in service for c in ' <>"@:;\r\n]'):
        raise ValueError(f"invalid service name {service!r}")
    pts = [g711_payload_type(c) for c in codecs]
    if not pts:
        raise ValueError("offer at least one codec")
    answered = expect_status < 300
    if steps and not answered:
        raise ValueError(f"steps need an answered call; expect_status is {expect_status}")
    for i, step in enumerate(steps):
        if isinstance(step, WaitBye) and i != len(steps) - 1:
            raise ValueError("WaitBye must be the last step")
    sdp_codecs = "".join(
        f"      a=rtpmap:{pt} {c.upper()}/8000\n" for pt, c in zip(pts, codecs, strict=True)
    )
    m_line = " ".join(str(pt) for pt in [*pts, TELEPHONE_EVENT_PT])
    d = _Dialog(service)
    d.offer_media = (
        f"      m=audio [auto_media_port] RTP/AVP {m_line}\n{sdp_codecs}"
        f"      a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000\n"
        f"      a=fmtp:{TELEPHONE_EVENT_PT} 0-16\n      a=ptime:20\n"
    )
    parts = [
        '<?xml version="1.0" encoding="ISO-8859-1" ?>',
        '<!DOCTYPE scenario SYSTEM "sipp.dtd">',
        '<scenario name="appliance test UAC">',
        d.request(
            "INVITE",
            f"sip:{service}@[remote_ip]:[remote_port]",
            "Content-Type: application/sdp",
            "v=0\n      o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]\n      s=-\n"
            "      c=IN IP[local_ip_type] [local_ip]\n      t=0 0\n"
            f"      m=audio [auto_media_port] RTP/AVP {m_line}\n{sdp_codecs}"
            f"      a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000\n"
            f"      a=fmtp:{TELEPHONE_EVENT_PT} 0-16\n      a=ptime:20\n      a=sendrecv",
            in_dialog=False,
        ),
        '  <recv response="100" optional="true"/>',
        '  <recv response="180" optional="true"/>',
        '  <recv response="183" optional="true"/>',
    ]
    if not answered:
        parts += [
            f'  <recv response="{expect_status}"/>',
            d.ack_non2xx(),
            "</scenario>",
        ]
        return "\n".join(parts) + "\n"
    parts += [
        f'  <recv response="{expect_status}" rtd="true" rrs="true">\n'
        "    <action>\n"
        '      <ereg regexp="m=audio [0-9]+ RTP/AVP [0-9 ]+" search_in="body" check_it="false"'
        ' assign_to="mline"/>\n'
        '      <log message="ANSWER [$mline]"/>\n'
        "    </action>\n"
        "  </recv>",
        d.request("ACK", "[next_url]", cseq=1),
    ]
    for step in steps:
        parts.append(_render_step(step, d, pts))
    if not (steps and isinstance(steps[-1], WaitBye)):
        parts += [d.request("BYE", "[next_url]"), '  <recv response="200" crlf="true"/>']
    parts.append("</scenario>")
    return "\n".join(parts) + "\n"


def _render_step(step: Step, d: _Dialog, pts: list[int]) -> str:
    if isinstance(step, Play):
        path = Path(step.pcap_path).resolve()
        streams = read_rtp_streams(path)
        played = {p.payload_type for s in streams for _, p in s.audio_packets}
        events = {p.payload_type for s in streams for _, p in s.packets}
        if not played and events == {TELEPHONE_EVENT_PT}:
            return _play(path)  # an RFC 4733 events-only pcap (dtmf_rtp_pcap)
        if not played or not played <= set(pts):
            raise ValueError(f"{path}: payload types {sorted(played)} not in offer {pts}")
        return _play(path)
    if isinstance(step, Pause):
        return f'  <pause milliseconds="{int(step.ms)}"/>'
    if isinstance(step, InfoDtmf):
        if len(step.digit) != 1 or step.digit.upper() not in DTMF_EVENT_CHARS:
            raise ValueError(f"not a DTMF digit: {step.digit!r}")
        body = f"Signal={step.digit.upper()}\n      Duration={int(step.duration_ms)}"
        info = d.request("INFO", "[next_url]", "Content-Type: application/dtmf-relay", body)
        return info + '\n  <recv response="200"/>'
    if isinstance(step, Rfc2833):
        name = _DTMF_FILE_NAMES.get(step.digit)
        path = SIPP_DTMF_DIR / f"dtmf_2833_{name}.pcap"
        if name is None or not path.is_file():
            raise ValueError(f"sipp has no RFC 2833 pcap for digit {step.digit!r} ({path})")
        return _play(path, extra_ms=step.gap_ms)
    if isinstance(step, ReInvite):
        d.sdp_version += 1
        body = (
            f"v=0\n      o=sipp 53655765 {d.sdp_version} IN IP[local_ip_type] [local_ip]\n"
            "      s=-\n      c=IN IP[local_ip_type] [local_ip]\n      t=0 0\n"
            f"{d.offer_media}      a={step.direction}"
        )
        invite = d.request("INVITE", "[next_url]", "Content-Type: application/sdp", body)
        cseq = d.cseq
        return (
            invite
            + '\n  <recv response="100" optional="true"/>\n  <recv response="200"/>\n'
            + d.request("ACK", "[next_url]", cseq=cseq)
        )
    if isinstance(step, ExpectRefer):
        return _expect_refer(step, d)
    if isinstance(step, WaitBye):
        return (
            f'  <recv request="BYE" timeout="{int(step.timeout_ms)}"/>\n'
            "  <send>\n    <![CDATA[\n\n      SIP/2.0 200 OK\n      [last_Via:]\n"
            "      [last_From:]\n      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n"
            "      Content-Length: 0\n\n    ]]>\n  </send>"
        )
    raise ValueError(f"unknown step {step!r}")


def _expect_refer(step: ExpectRefer, d: _Dialog) -> str:
    header = step.header
    if not header or not set(header) <= _TOKEN or header.lower() in ("refer-to", "r"):
        raise ValueError(f"invalid handoff header name {header!r}")
    status = step.notify_status
    if status is not None and not 100 <= status <= 699:
        raise ValueError(f"notify_status must be a SIP status code, got {status}")
    var = "refer_hdr"
    # ereg on a header searches its value; check_it fails the call when it is missing.
    parts = [
        f'  <recv request="REFER" timeout="{int(step.timeout_ms)}">\n'
        "    <action>\n"
        '      <ereg regexp="[^[:space:]].*" search_in="hdr" header="Refer-To:" check_it="true"'
        ' assign_to="refer_to"/>\n'
        f'      <ereg regexp="[^[:space:]].*" search_in="hdr" header="{header}:" check_it="true"'
        f' assign_to="{var}"/>\n'
        '      <log message="REFER-TO [$refer_to]"/>\n'
        f'      <log message="REFER-HEADER {header} [${var}]"/>\n'
        "    </action>\n"
        "  </recv>",
    ]
    code, reason = (202, "Accepted") if step.accept else (603, "Decline")
    parts.append(
        "  <send>\n    <![CDATA[\n\n"
        f"      SIP/2.0 {code} {reason}\n      [last_Via:]\n      [last_From:]\n"
        "      [last_To:]\n      [last_Call-ID:]\n      [last_CSeq:]\n"
        "      Contact: <sip:sipp@[local_ip]:[local_port]>\n      Content-Length: 0\n\n"
        "    ]]>\n  </send>"
    )
    if not step.accept:
        return "\n".join(parts)
    notifies = [(100, "active;expires=60")]
    if status is not None:
        state = "active;expires=60" if status < 200 else "terminated;reason=noresource"
        notifies.append((status, state))
    for i, (code, state) in enumerate(notifies):
        if i:
            parts.append(f'  <pause milliseconds="{int(step.final_delay_ms)}"/>')
        reason = SIP_REASONS.get(code, "OK" if code < 300 else "Failed")
        parts.append(
            d.request(
                "NOTIFY",
                "[next_url]",
                "Content-Type: message/sipfrag;version=2.0",
                f"SIP/2.0 {code} {reason}",
                headers=("Event: refer", f"Subscription-State: {state}"),
            )
        )
        parts.append('  <recv response="200"/>')
    return "\n".join(parts)


def parse_refer(message_log: str, header: str = "X-Handoff-ID") -> dict[str, str | None]:
    """Return the Refer-To and handoff header values of the first REFER sipp received.

    Args:
        message_log: sipp's message log (:attr:`SippResult.messages`); the ``<log>`` lines an
            :class:`ExpectRefer` step writes (``logs["log"]``) work too.
        header: The handoff header name (case-insensitive).

    Returns:
        ``{"Refer-To": value, header: value}``; a value is None when not found.
    """
    found: dict[str, str | None] = {"Refer-To": None, header: None}
    for direction, text in _split_messages(message_log):
        lines = text.split("\n")
        if direction != "received" or not lines[0].startswith("REFER "):
            continue
        for line in lines[1:]:
            if not line.strip():
                break  # end of headers
            key, sep, value = line.partition(":")
            key = key.strip().lower()
            if sep and key in ("refer-to", "r") and found["Refer-To"] is None:
                found["Refer-To"] = value.strip()
            elif sep and key == header.lower() and found[header] is None:
                found[header] = value.strip()
        return found
    prefix = f"REFER-HEADER {header} ".lower()
    for line in message_log.splitlines():
        line = line.strip()
        if line.startswith("REFER-TO ") and found["Refer-To"] is None:
            found["Refer-To"] = line[len("REFER-TO ") :].strip() or None
        elif line.lower().startswith(prefix) and found[header] is None:
            found[header] = line[len(prefix) :].strip() or None
    return found


def _play(path: Path, extra_ms: int = 0) -> str:
    ms = math.ceil(pcap_duration(path) * 1000) + extra_ms
    return (
        f"  <nop><action><exec play_pcap_audio={quoteattr(str(path))}/></action></nop>\n"
        f'  <pause milliseconds="{ms}"/>'
    )


class _Dialog:
    """Renders the requests of one UAC dialog with consistent headers and CSeq numbers."""

    def __init__(self, service: str):
        self.service = service
        self.cseq = 0
        self.sdp_version = 2353687637
        self.offer_media = ""

    def _headers(self, method: str, cseq: int, in_dialog: bool) -> list[str]:
        to_tag = "[peer_tag_param]" if in_dialog else ""
        return [
            "From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]",
            f"To: <sip:{self.service}@[remote_ip]:[remote_port]>{to_tag}",
            "Call-ID: [call_id]",
            f"CSeq: {cseq} {method}",
            "Contact: <sip:sipp@[local_ip]:[local_port]>",
            "Max-Forwards: 70",
            "User-Agent: appliance-tests-sipp",
        ]

    def request(
        self,
        method: str,
        uri: str,
        content_type: str = "",
        body: str = "",
        *,
        in_dialog: bool = True,
        cseq: int | None = None,
        headers: tuple[str, ...] = (),
    ) -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [f"{method} {uri} SIP/2.0"]
        if in_dialog:
            lines.append("[routes]")
        lines.append("Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]")
        lines += self._headers(method, cseq, in_dialog)
        lines += headers
        if content_type:
            lines.append(content_type)
        lines.append("Content-Length: [len]" if body else "Content-Length: 0")
        text = "\n".join(f"      {line}" for line in lines)
        if body:
            text += f"\n\n      {body}"
        retrans = "" if method == "ACK" else ' retrans="500"'
        return f"  <send{retrans}>\n    <![CDATA[\n\n{text}\n\n    ]]>\n  </send>"

    def ack_non2xx(self) -> str:
        """ACK for a non-2xx final response: same branch as the INVITE (RFC 3261 §17.1.1.3)."""
        lines = [f"ACK sip:{self.service}@[remote_ip]:[remote_port] SIP/2.0", "[last_Via:]"]
        lines += self._headers("ACK", 1, True)
        lines.append("Content-Length: 0")
        text = "\n".join(f"      {line}" for line in lines)
        return f"  <send>\n    <![CDATA[\n\n{text}\n\n    ]]>\n  </send>"


def sipp_binary() -> str | None:
    """Return the path of the sipp executable ("sipp" or "sip-tester"), or None."""
    return shutil.which("sipp") or shutil.which("sip-tester")


def free_udp_port(local_ip: str = "127.0.0.1", *, count: int = 1, even: bool = False) -> int:
    """Find ``count`` consecutive free UDP ports on ``local_ip`` in 20000-29999.

    Ports are picked at random and not handed out twice by this process, so parallel sipp
    instances do not collide; another program can still take one before it is bound.

    Args:
        local_ip: Address to test binding on.
        count: Number of consecutive ports needed (sipp's ``-mp`` uses 4: audio and video
            RTP and RTCP).
        even: Start on an even port (RTP convention).

    Returns:
        The first port.

    Raises:
        RuntimeError: If no free range is found.
    """
    for _ in range(200):
        port = random.randrange(*_PORT_RANGE)
        if even:
            port &= ~1
        candidates = range(port, port + count)
        if _handed_out.intersection(candidates) or not all(
            _udp_free(local_ip, p) for p in candidates
        ):
            continue
        _handed_out.update(candidates)
        return port
    raise RuntimeError(f"no {count} free consecutive UDP ports on {local_ip}")


def _udp_free(local_ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((local_ip, port))
        except OSError:
            return False
    return True


def start_sipp(
    scenario_xml: str,
    target: str | None,
    *,
    local_ip: str = "127.0.0.1",
    sip_port: int | None = None,
    media_port: int | None = None,
    timeout_s: float = 60,
    extra_args: tuple[str, ...] | list[str] = (),
    workdir: str | Path | None = None,
    calls: int = 1,
) -> SippProcess:
    """Start sipp on a scenario in the background.

    Args:
        scenario_xml: The scenario (see :func:`render_uac_scenario`).
        target: "host:port" of the UA under test; None for a UAS scenario that waits for calls.
        local_ip: Local address for SIP and RTP (``-i``).
        sip_port: Local SIP port (``-p``); a free one if None.
        media_port: Local RTP base port (``-mp``); a free even one if None.
        timeout_s: sipp's global timeout (``-timeout``, an error when reached), in seconds.
        extra_args: More sipp arguments, for example ``("-l", "4")``.
        workdir: Directory for the scenario and logs; a new temporary one if None.
        calls: Number of calls to place (``-m``).

    Returns:
        The running process.

    Raises:
        FileNotFoundError: If sipp is not installed.
    """
    binary = sipp_binary()
    if binary is None:
        raise FileNotFoundError("sipp not found: install the Debian package sip-tester")
    directory = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sipp-"))
    directory.mkdir(parents=True, exist_ok=True)
    scenario_path = directory / "scenario.xml"
    scenario_path.write_text(scenario_xml, encoding="iso-8859-1")
    sip_port = sip_port or free_udp_port(local_ip)
    media_port = media_port or free_udp_port(local_ip, count=4, even=True)
    cmd = [
        binary, *([target] if target else []), "-sf", str(scenario_path), "-m", str(calls),
        "-i", local_ip, "-p", str(sip_port), "-mp", str(media_port),
        "-timeout", f"{math.ceil(timeout_s)}s", "-timeout_error", "-nostdin", "-aa",
        "-trace_msg", "-message_file", str(directory / "messages.log"),
        "-trace_err", "-error_file", str(directory / "errors.log"),
        "-trace_logs", "-log_file", str(directory / "log.log"),
        "-trace_screen", "-screen_file", str(directory / "screen.log"),
        *extra_args,
    ]  # fmt: skip
    _LOGGER.info("starting %s", " ".join(cmd))
    popen = subprocess.Popen(  # noqa: S603 - test tool with fixed argv
        cmd,
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env={**os.environ, "TERM": "dumb"},
    )
    return SippProcess(popen, scenario_path, timeout_s)


def run_sipp(
    scenario_xml: str,
    target: str,
    *,
    local_ip: str = "127.0.0.1",
    sip_port: int | None = None,
    media_port: int | None = None,
    timeout_s: float = 60,
    extra_args: tuple[str, ...] | list[str] = (),
    workdir: str | Path | None = None,
) -> SippResult:
    """Place one call with sipp and wait for it to finish.

    Args:
        scenario_xml: The scenario (see :func:`render_uac_scenario`).
        target: "host:port" of the UA under test.
        local_ip: Local address for SIP and RTP.
        sip_port: Local SIP port; a free one if None.
        media_port: Local RTP base port; a free even one if None.
        timeout_s: sipp's global timeout in seconds (sipp is killed 15 s after it).
        extra_args: More sipp arguments.
        workdir: Directory for the scenario and logs; a new temporary one if None.

    Returns:
        The result, with the SIP message log in ``logs["messages"]``.
    """
    proc = start_sipp(
        scenario_xml,
        target,
        local_ip=local_ip,
        sip_port=sip_port,
        media_port=media_port,
        timeout_s=timeout_s,
        extra_args=extra_args,
        workdir=workdir,
    )
    try:
        return proc.wait()
    finally:
        proc.terminate()


def _read_logs(directory: Path) -> dict[str, str]:
    logs = {}
    for kind in ("messages", "errors", "log", "screen"):
        path = directory / f"{kind}.log"
        if path.exists():
            logs[kind] = path.read_text(encoding="utf-8", errors="replace")
    return logs


def _split_messages(log: str) -> list[tuple[str, str]]:
    """Split a sipp -trace_msg log into (direction, message text) pairs."""
    out = []
    for block in log.split("----------------------------------------------- ")[1:]:
        header, _, text = block.partition("\n")
        if "message received" not in text and "message sent" not in text:
            continue
        first, _, msg = text.partition("\n")
        direction = "received" if "received" in first else "sent"
        out.append((direction, msg.strip("\r\n").replace("\r\n", "\n")))
    return out
