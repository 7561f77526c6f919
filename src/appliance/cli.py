"""Command line: ``appliance serve | call | audit verify | audit export | release verify | edge``.

Exit codes: 0 success; 2 bad configuration; 3 model files missing or broken; 4 SIP/media
start failure; 5 audit log unusable; 1 anything else (``audit verify``: 1 = verification
failed). Error messages name the file at fault.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.audit.envelope import EnvelopeError
from appliance.audit.store import AuditError
from appliance.errors import ApplianceError, ConfigError, MediaError, ModelError

if TYPE_CHECKING:
    from appliance.config import ApplianceSettings

_LOGGER = logging.getLogger("appliance")


def _serve(args: argparse.Namespace) -> int:
    from appliance.app.logs import setup_logging
    from appliance.config import load_settings

    setup_logging(args.log_level)
    overrides = {"sip__bind": args.sip_bind} if args.sip_bind else {}

    def load() -> ApplianceSettings:
        settings = load_settings(args.config, **overrides)
        if args.worker is None:
            return settings
        from appliance.app.edge import worker_settings  # behind the edge (ADR 0020)

        return worker_settings(settings, args.worker)

    settings = load()
    from appliance.app.server import ApplianceServer

    server = ApplianceServer(
        settings, test_events=args.test_events, reload=load, worker=args.worker
    )
    code = asyncio.run(server.run())
    # Every store is closed and every call ended by now. Skip CPython's finaliser: its final GC
    # pass over pjsua2's SWIG objects (after the endpoint was destroyed) and torch's thread
    # pools can crash the process at exit, turning a clean drain into SIGSEGV for systemd.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _admin(args: argparse.Namespace) -> int:
    from appliance.app.logs import setup_logging
    from appliance.config import load_settings

    setup_logging(args.log_level)
    settings = load_settings(args.config)
    if args.provision:
        # Development and ./build.sh run: what first boot makes on the box (TLS, enrolment code).
        from appliance.app.firstboot import FirstbootReport, ensure_enrolment, ensure_tls

        report = FirstbootReport()
        a = settings.admin
        ensure_tls(a.tls_dir, report)
        notice = a.enrolment_hash.with_name("enrolment-code.txt")
        ensure_enrolment(a.enrolment_hash, notice, None, report)
        if "enrolment code" in report.created:
            print(notice.read_text(encoding="utf-8"), file=sys.stderr)
    from appliance.admin.server import serve

    return serve(settings, args.config)


def _call(args: argparse.Namespace) -> int:
    from appliance.app.client import place_call, report_json
    from appliance.app.logs import setup_logging

    setup_logging(args.log_level)
    report = asyncio.run(
        place_call(
            args.uri,
            [Path(p) for p in args.wav],
            args.out,
            bind=args.bind,
            silence_ms=args.silence_ms,
            follow_refer=args.refer == "follow",
            max_duration_s=args.max_duration_s,
            rtp_port=args.rtp_port,
        )
    )
    print(report_json(report))
    return 0 if report.status == "completed" else 1


def _audit(args: argparse.Namespace) -> int:
    from appliance.audit.service import export_call, verify_from_settings
    from appliance.config import load_settings

    loaded = load_settings(args.config)
    if args.worker is not None:
        from appliance.app.edge import worker_settings

        loaded = worker_settings(loaded, args.worker)  # audit-N.sqlite (ADR 0020)
    settings = loaded.audit
    if args.audit_command == "verify":
        from appliance.audit.alarm import clear_alarm, raise_alarm

        report = verify_from_settings(settings, args.public_key, args.witness, now=args.as_of)
        key = args.public_key or "the box's own copy (pass --public-key for a pinned one)"
        print(report.summary())
        print(f"public key: {key}")
        if args.alarm_file is not None:
            if report.ok:
                clear_alarm(args.alarm_file)
            else:
                raise_alarm(args.alarm_file, report.summary(), "appliance audit verify")
        return 0 if report.ok else 1
    if args.audit_command == "alarm":
        from appliance.audit.alarm import raise_alarm

        raise_alarm(
            args.alarm_file,
            f"{args.unit} failed (see journalctl -u {args.unit})",
            "appliance-audit-alarm.service",
            keep_existing=True,
        )
        # <2>: journald priority "crit" (sd-daemon(3) prefix on stderr).
        print(f"<2>audit log verification failed: {args.unit}", file=sys.stderr)
        return 0
    if args.audit_command == "retention":
        from appliance.audit.service import open_audit, retention_sweep

        log = open_audit(settings)
        try:
            days = args.days if args.days is not None else settings.transcript_retention_days
            count = retention_sweep(
                log, days, consent_retention_days=settings.consent_retention_days
            )
            print(f"{count} data key(s) destroyed")
            log.checkpoint()
        finally:
            log.close()
        return 0
    if args.audit_command == "rotate-kek":
        from appliance.audit import envelope
        from appliance.audit.service import open_audit

        log = open_audit(settings)
        try:
            new = envelope.load_kek(args.new_kek, create=args.create)
            count = log.rotate_kek(new)
            log.checkpoint()
        finally:
            log.close()
        print(f"{count} data key(s) re-wrapped; now point [audit] kek_file at {args.new_kek}")
        return 0
    text = export_call(settings, args.call, redacted=args.redact)
    if args.redact:
        import json

        from appliance.policy.redaction import redact_content

        text = json.dumps(redact_content(json.loads(text)), indent=2)
    print(text)
    return 0


def _edge(args: argparse.Namespace) -> int:
    from appliance.app.edge import check_config, render_edge
    from appliance.config import load_settings

    settings = load_settings(args.config)
    if args.edge_command == "workers":
        print(settings.edge.worker_count())
        return 0
    if args.edge_command in ("drain", "worker", "restart-workers"):
        import shlex

        from appliance.app.edge import DISABLED, PROBED, EdgeControl, restart_workers

        control = EdgeControl(settings)
        if args.edge_command == "drain":
            control.drain(args.state == "on")
        elif args.edge_command == "worker":
            control.worker_uri(args.index)  # ConfigError on a bad index, before any RPC
            control.set_worker(args.index, DISABLED if args.state == "disable" else PROBED)
        else:
            restart_workers(
                settings, shlex.split(args.restart_cmd), control=control, timeout_s=args.timeout_s
            )
        return 0
    written = render_edge(settings, args.out, source=str(args.config or "<defaults>"))
    for path in (written.config, written.address_list, written.dispatcher_list):
        print(path)
    if written.tls_config is not None:
        print(written.tls_config)
    if args.check:
        ok, output = check_config(written.config)
        if not ok:
            print(output, file=sys.stderr)
            raise ConfigError("config_invalid", f"{written.config}: kamailio -c refused it")
    return 0


def _installed_version() -> str:
    """The installed distribution's version (what the fleet reports), or ``unknown``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("appliance")
    except PackageNotFoundError:
        return "unknown"


def _firstboot(args: argparse.Namespace) -> int:
    from appliance.app.firstboot import FirstbootError, run_firstboot

    try:
        report = run_firstboot(
            args.root,
            args.config,
            user=args.user,
            creds_tool=None if args.no_systemd_creds else "systemd-creds",
            console=args.console,
        )
    except FirstbootError as exc:
        print(f"appliance: first boot failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _release(args: argparse.Namespace) -> int:
    from appliance.release import main as release_main

    return release_main(args.release_args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the voice agent (SIP trunk in)")
    serve.add_argument("--config", type=Path, default=None, help="TOML settings file")
    serve.add_argument("--sip-bind", default=None, help="HOST:PORT, overrides [sip] bind")
    serve.add_argument(
        "--worker",
        type=int,
        default=None,
        metavar="N",
        help="run as agent worker N behind the SIP edge ([edge]): loopback SIP port "
        "worker_base_port + N, its own audit log audit-N.sqlite (ADR 0020)",
    )
    serve.add_argument(
        "--test-events",
        type=Path,
        default=None,
        help="TESTS ONLY: write every event, caller content included, as JSON lines",
    )
    serve.set_defaults(func=_serve)

    admin = sub.add_parser("admin", help="run the HTTPS admin page (its own process)")
    admin.add_argument("--config", type=Path, default=None, help="TOML settings file")
    admin.add_argument(
        "--provision",
        action="store_true",
        help="development: create the TLS certificate and the enrolment code if missing "
        "(first boot does this on the box)",
    )
    admin.set_defaults(func=_admin)

    call = sub.add_parser("call", help="place a test call that plays WAV files as the caller")
    call.add_argument("uri", help="e.g. sip:appliance@127.0.0.1:5060")
    call.add_argument("--wav", action="append", default=[], help="caller turn (repeatable)")
    call.add_argument("--out", type=Path, default=None, help="save the agent's audio here")
    call.add_argument("--bind", default="127.0.0.1:0", help="local SIP HOST:PORT")
    call.add_argument(
        "--silence-ms", type=int, default=1500, help="agent silence that ends its turn"
    )
    call.add_argument(
        "--refer",
        choices=("decline", "follow"),
        default="decline",
        help="a transfer (REFER) from the agent: decline it with 603 (default) or call its target",
    )
    call.add_argument(
        "--max-duration-s",
        type=float,
        default=None,
        help="hang up this many seconds after the answer at the latest",
    )
    call.add_argument("--rtp-port", type=int, default=42000, help="first local RTP port")
    call.set_defaults(func=_call)

    audit = sub.add_parser("audit", help="verify or export the encrypted audit log")
    audit.add_argument("--config", type=Path, default=None, help="TOML settings file")
    audit.add_argument(
        "--worker", type=int, default=None, metavar="N", help="agent worker N's log (ADR 0020)"
    )
    asub = audit.add_subparsers(dest="audit_command", required=True)
    ver = asub.add_parser("verify", help="check the Merkle tree and signed checkpoints (no key)")
    ver.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="hex Ed25519 public key pinned at enrolment (a witness's copy); default: the box's",
    )
    ver.add_argument(
        "--witness",
        type=Path,
        default=None,
        help="checkpoint file collected off the box, checked as well (skipped when absent)",
    )
    ver.add_argument(
        "--as-of",
        type=float,
        default=None,
        help="reference time (s since the epoch) for the coverage check of an archived copy",
    )
    ver.add_argument(
        "--alarm-file",
        type=Path,
        default=None,
        help="write this alarm marker when verification fails, remove it when it passes",
    )
    alarm = asub.add_parser("alarm", help="raise the verification alarm (the timer's OnFailure=)")
    alarm.add_argument("--alarm-file", type=Path, required=True, help="alarm marker to write")
    alarm.add_argument("--unit", default="appliance-audit-verify.service", help="failed unit")
    exp = asub.add_parser("export", help="decrypt one call (recorded in the log)")
    exp.add_argument("--call", required=True, help="call id")
    exp.add_argument(
        "--redact",
        action="store_true",
        help="mark names, dates of birth, numbers, addresses, MRNs and card data (no PHI access)",
    )
    ret = asub.add_parser("retention", help="crypto-shred content past its retention period")
    ret.add_argument(
        "--days", type=float, default=None, help="override the configured transcript days"
    )
    rot = asub.add_parser("rotate-kek", help="re-wrap every data key under a new KEK")
    rot.add_argument("--new-kek", type=Path, required=True, help="new KEK file (mode 0600)")
    rot.add_argument("--create", action="store_true", help="generate the new KEK file")
    audit.set_defaults(func=_audit)

    edge = sub.add_parser("edge", help="the Kamailio SIP front door ([edge], ADR 0020)")
    edge.add_argument("--config", type=Path, default=None, help="TOML settings file")
    esub = edge.add_subparsers(dest="edge_command", required=True)
    render = esub.add_parser(
        "render", help="write kamailio.cfg, address.list and dispatcher.list from the TOML"
    )
    render.add_argument("--out", type=Path, required=True, help="output directory")
    render.add_argument("--check", action="store_true", help="then run `kamailio -c` on the result")
    esub.add_parser("workers", help="print the number of agent workers")
    drain = esub.add_parser("drain", help="on: OPTIONS and new calls get 503 at the edge")
    drain.add_argument("state", choices=("on", "off"))
    worker = esub.add_parser(
        "worker", help="disable: no new calls to worker N; enable: back once its probe answers"
    )
    worker.add_argument("index", type=int, metavar="N")
    worker.add_argument("state", choices=("disable", "enable"))
    rolling = esub.add_parser(
        "restart-workers", help="restart the workers one at a time, each out of rotation"
    )
    rolling.add_argument(
        "--restart-cmd",
        default="systemctl restart appliance-agent@{n}.service",
        help="command restarting worker {n} (returns once it is ready)",
    )
    rolling.add_argument(
        "--timeout-s", type=float, default=600.0, help="limit per restart and per comeback"
    )
    edge.set_defaults(func=_edge)

    rel = sub.add_parser(
        "release",
        help="sign and verify release artefacts against the pinned key (appliance release -h)",
        add_help=False,
    )
    rel.add_argument("release_args", nargs=argparse.REMAINDER)
    rel.set_defaults(func=_release)

    first = sub.add_parser("firstboot", help="provision keys, TLS CA, enrolment code, trunk")
    first.add_argument("--root", type=Path, default=Path("/"), help="tree to provision")
    first.add_argument(
        "--config", type=Path, default=Path("/etc/appliance/appliance.toml"), help="as on the box"
    )
    first.add_argument("--user", default="appliance", help="service user owning the agent keys")
    first.add_argument("--console", type=Path, default=Path("/dev/console"), help="code shown here")
    first.add_argument(
        "--no-systemd-creds", action="store_true", help="store the KEK as a key file instead"
    )
    first.set_defaults(func=_firstboot)

    from appliance.app.outbound_cli import add_parser as add_outbound_parser

    add_outbound_parser(sub)  # appliance outbound dial|run-reminders|status (issue 15)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``appliance`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["release"]:  # its own parser (argparse.REMAINDER drops a leading -h)
        return _release(argparse.Namespace(release_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"appliance: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"appliance: model error: {exc.message}", file=sys.stderr)
        return 3
    except MediaError as exc:
        print(f"appliance: SIP error: {exc.message}", file=sys.stderr)
        return 4
    except (AuditError, EnvelopeError) as exc:
        print(f"appliance: audit log error: {exc}", file=sys.stderr)
        return 5
    except ApplianceError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
