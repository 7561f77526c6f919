"""Fuzz the SIP port of a worker and of the Kamailio edge with boofuzz (issue 13, ADR 0018).

boofuzz (https://github.com/jtpereyda/boofuzz, 0.4.2) models an INVITE with an SDP offer and an
OPTIONS, both copied from the valid requests the e2e tests send, as blocks of primitives
(strings, delimiters, integers). Its mutations of one primitive at a time are numbered; a run
draws ``cases`` of those numbers with ``random.Random(seed)`` and sends each case once, as one
UDP datagram, to each target. So a run is reproduced by its seed and case count (both printed and
written to the JSON); a single case by its request name and mutation index.

Each request carries a fresh Call-ID and Via branch, so that pjsip and Kamailio see a new
transaction every time rather than a retransmission. Cases are paced (``rate`` per second) below
the INVITE-with-offer rate a worker is known not to survive on its own (ADR 0018: pjlib's 64-key
ioqueue; rate limiting is the edge's job).

After every ``check_every`` cases, and at the end, the run checks that each process is alive;
at the end it times an OPTIONS to each target (it must get 200 within 2 s).

Usage (the long run, about 5 minutes)::

    .venv/bin/python -m benchmarks.sip_fuzz --cases 3000 --seed 13

It prints a table and writes ``benchmarks/results/sip_fuzz-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
#: Longest value a fuzzed string field takes: the message still fits one UDP datagram (65,507
#: bytes), and is far past pjsip's 4,000-byte receive buffer (ADR 0018).
MAX_FIELD = 60_000


def _boofuzz():  # noqa: ANN202 - the module, imported late (a test extra, not a runtime one)
    import boofuzz

    return boofuzz


def _unique_class():  # noqa: ANN202
    """A boofuzz primitive that renders a new token every time (Call-ID, branch, tags)."""
    boofuzz = _boofuzz()

    class Unique(boofuzz.Fuzzable):  # type: ignore[misc, name-defined]
        _counter = itertools.count(1)

        def __init__(self, name: str, prefix: str) -> None:
            super().__init__(name=name, default_value=prefix, fuzzable=False)

        def encode(self, value, mutation_context) -> bytes:  # noqa: ANN001
            return f"{value}{next(self._counter):08d}".encode()

    return Unique


def define_requests(sent_by: str, target: str) -> dict[str, object]:
    """The boofuzz request trees, by name: an INVITE with an SDP offer, and an OPTIONS.

    Args:
        sent_by: ``HOST:PORT`` the fuzzer sends from (top Via and Contact).
        target: ``HOST:PORT`` of the target (Request-URI and To).
    """
    b = _boofuzz()
    unique = _unique_class()
    host = sent_by.rsplit(":", 1)[0]

    def string(name: str, value: str) -> object:
        return b.String(name=name, default_value=value, max_len=MAX_FIELD)

    def head(method: str, call: str) -> list:
        return [
            string("method", method),
            b.Delim(name="sp1", default_value=" "),
            string("ruri", f"sip:appliance@{target}"),
            b.Static(name="ver", default_value=" SIP/2.0\r\nVia: SIP/2.0/UDP "),
            b.Static(name="sent_by", default_value=sent_by),
            b.Static(name="br", default_value=";branch="),
            unique(name="branch", prefix="z9hG4bK-fz"),
            b.Static(name="from", default_value=f"\r\nFrom: fuzz <sip:fuzz@{sent_by}>;tag="),
            unique(name="tag", prefix="t"),
            b.Static(name="to", default_value="\r\nTo: "),
            string("to_uri", f"<sip:appliance@{target}>"),
            b.Static(name="cid", default_value="\r\nCall-ID: "),
            unique(name="call_id", prefix=f"{call}-"),
            b.Static(name="cseq_h", default_value="\r\nCSeq: "),
            string("cseq", "1"),
            b.Delim(name="sp2", default_value=" "),
            string("cseq_m", method),
            b.Static(name="mf_h", default_value="\r\nMax-Forwards: "),
            string("max_fwd", "70"),
            b.Static(name="ct_h", default_value="\r\nContact: "),
            string("contact", f"<sip:fuzz@{sent_by}>"),
        ]

    sdp = [
        b.Static(name="v", default_value="v=0\r\no=fuzz 1 1 IN IP4 "),
        string("o_addr", host),
        b.Static(name="s", default_value="\r\ns=-\r\nc=IN IP4 "),
        string("c_addr", host),
        b.Static(name="t", default_value="\r\nt=0 0\r\nm=audio "),
        string("m_port", "40000"),
        b.Static(name="m_proto", default_value=" RTP/AVP "),
        string("m_fmt", "0 101"),
        b.Static(name="rtpmap", default_value="\r\na=rtpmap:0 PCMU/8000\r\na="),
        string("attr", "rtpmap:101 telephone-event/8000"),
        b.Static(name="sdp_end", default_value="\r\n"),
    ]
    invite = b.Request(
        "INVITE",
        children=[
            *head("INVITE", "fzinv"),
            b.Static(name="ctype", default_value="\r\nContent-Type: "),
            string("content_type", "application/sdp"),
            b.Static(name="cl_h", default_value="\r\nContent-Length: "),
            b.Size(name="cl", block_name="sdp", output_format="ascii", fuzzable=True),
            b.Static(name="eoh", default_value="\r\n\r\n"),
            b.Block(name="sdp", children=sdp),
        ],
    )
    options = b.Request(
        "OPTIONS",
        children=[
            *head("OPTIONS", "fzopt"),
            b.Static(name="acc_h", default_value="\r\nAccept: "),
            string("accept", "application/sdp"),
            b.Static(name="cl_h", default_value="\r\nContent-Length: "),
            string("cl", "0"),
            b.Static(name="eoh", default_value="\r\n\r\n"),
        ],
    )
    return {"INVITE": invite, "OPTIONS": options}


def options_rtt(target: str, timeout_s: float = 2.0) -> tuple[int | None, float]:
    """Send one well-formed OPTIONS; return (status of the final answer or None, seconds)."""
    host, port = target.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        me = f"127.0.0.1:{s.getsockname()[1]}"
        tag = random.Random().getrandbits(48)  # noqa: S311 - a tag, not a secret
        msg = (
            f"OPTIONS sip:appliance@{target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me};branch=z9hG4bK-probe{tag:x}\r\n"
            f"From: <sip:probe@{me}>;tag={tag:x}\r\nTo: <sip:appliance@{target}>\r\n"
            f"Call-ID: probe-{tag:x}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        t0 = time.monotonic()
        s.sendto(msg, (host, int(port)))
        while (left := t0 + timeout_s - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                first = s.recv(65535).split(b"\r\n", 1)[0].split(b" ", 2)
            except TimeoutError:
                break
            if len(first) >= 2 and first[1].isdigit() and int(first[1]) >= 200:
                return int(first[1]), time.monotonic() - t0
    return None, timeout_s


@dataclass
class FuzzReport:
    """One target's run: what was sent, what survived, and the OPTIONS answer afterwards."""

    target: str
    name: str
    seed: int
    cases: int
    sent: int = 0
    duration_s: float = 0.0
    crashed: bool = False
    crash_after_case: str | None = None
    options_status: int | None = None
    options_latency_s: float | None = None
    too_big: int = 0
    by_request: dict[str, int] = field(default_factory=dict)


def draw_cases(requests: dict[str, object], cases: int, seed: int) -> list[tuple[str, list]]:
    """``cases`` of boofuzz's numbered mutations (one primitive at a time), drawn with ``seed``.

    Returns (request name, boofuzz mutation list) pairs, in the order they are numbered.
    """
    numbered = [(n, m) for n, req in requests.items() for m in req.get_mutations()]  # type: ignore[attr-defined]
    rng = random.Random(seed)  # noqa: S311 - a reproducible draw of test cases, not a secret
    return [
        numbered[i] for i in sorted(rng.sample(range(len(numbered)), min(cases, len(numbered))))
    ]


def fuzz_target(
    name: str,
    target: str,
    *,
    cases: int,
    seed: int,
    alive: Callable[[], bool],
    rate: float = 20.0,
    check_every: int = 10,
) -> FuzzReport:
    """Send ``cases`` boofuzz mutations (drawn with ``seed``) to ``target``, one datagram each.

    Args:
        name: A label for the report ("worker", "edge").
        target: ``HOST:PORT`` (UDP).
        cases: How many mutations to send, drawn over INVITE and OPTIONS together.
        seed: Seed of the draw; the same seed and ``cases`` send the same mutations.
        alive: Returns False once the process behind ``target`` has died.
        rate: Cases per second (at most).
        check_every: Cases between two ``alive()`` checks.

    Returns:
        The report; ``crashed`` is True if ``alive()`` turned False (the run then stops there).
        A mutation longer than a UDP datagram can carry is counted in ``too_big``, not sent.
    """
    from boofuzz.mutation_context import MutationContext

    report = FuzzReport(target=target, name=name, seed=seed, cases=cases)
    host, port = target.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        requests = define_requests(f"127.0.0.1:{sock.getsockname()[1]}", target)
        picked = draw_cases(requests, cases, seed)
        t0 = time.monotonic()
        for i, (req_name, mutations) in enumerate(picked, 1):
            started = time.monotonic()
            context = MutationContext(mutations={m.qualified_name: m for m in mutations})
            data = requests[req_name].render(context)  # type: ignore[attr-defined]
            try:
                sock.sendto(data, (host, int(port)))
                report.sent += 1
                report.by_request[req_name] = report.by_request.get(req_name, 0) + 1
            except OSError:  # EMSGSIZE: larger than a UDP datagram
                report.too_big += 1
            _drain(sock)
            if (i % check_every == 0 or i == len(picked)) and not alive():
                report.crashed = True
                report.crash_after_case = (
                    f"{req_name}:{mutations[0].qualified_name}#{mutations[0].index}"
                )
                break
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))
        report.duration_s = round(time.monotonic() - t0, 2)
    if not report.crashed:
        time.sleep(0.5)
        report.options_status, latency = options_rtt(target)
        report.options_latency_s = round(latency, 4)
    return report


def _drain(sock: socket.socket) -> None:
    """Discard the answers that came back (only survival and the final OPTIONS are judged)."""
    while True:
        try:
            sock.recv(65535)
        except (BlockingIOError, ConnectionRefusedError):
            return


def print_table(reports: list[FuzzReport]) -> None:
    """Cases, duration, crashes and the OPTIONS answer, one line per target."""
    print(f"{'target':8} {'cases':>6} {'dur s':>7} {'crash':>6} {'OPTIONS':>8} {'rtt ms':>7}")  # noqa: T201
    for r in reports:
        rtt = "-" if r.options_latency_s is None else f"{r.options_latency_s * 1000:.1f}"
        print(  # noqa: T201
            f"{r.name:8} {r.sent:>6} {r.duration_s:>7.1f} {('yes' if r.crashed else 'no'):>6} "
            f"{r.options_status!s:>8} {rtt:>7}"
        )


def main(argv: list[str] | None = None) -> int:
    """Start a worker and an edge, fuzz both, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=3000, help="cases per target")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--rate", type=float, default=20.0, help="cases per second")
    args = parser.parse_args(argv)

    from tests.e2e.test_sip_torture import start_box, stop_box

    work = Path(tempfile.mkdtemp(prefix="sip-fuzz-bench-"))
    print(f"seed {args.seed}, {args.cases} cases per target, workdir {work}")  # noqa: T201
    box = start_box(work)
    reports = []
    try:
        for name, target in (("worker", box.worker_uri), ("edge", box.edge.uri)):
            reports.append(
                fuzz_target(
                    name,
                    target,
                    cases=args.cases,
                    seed=args.seed,
                    alive=box.alive,
                    rate=args.rate,
                )
            )
    finally:
        stop_box(box)
    print_table(reports)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"sip_fuzz-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "fuzzer": "boofuzz 0.4.2",
                "seed": args.seed,
                "cases_per_target": args.cases,
                "rate_per_s": args.rate,
                "crashes_found": sum(r.crashed for r in reports),
                "targets": [asdict(r) for r in reports],
            },
            indent=2,
        )
    )
    print(out)  # noqa: T201
    return 1 if any(r.crashed or r.options_status != 200 for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
