"""``appliance outbound``: queue reminder calls on the running agent, over its control socket.

The agent (``appliance serve`` with ``[outbound] enabled``) does the dialling; this command only
asks it (:mod:`appliance.app.outbound` lists the operations). The actor recorded on the audit
log is ``cli:<login name>``. The number is sent to the agent, never printed or logged.

* ``appliance outbound dial --number N --appointment ID [--wait S]``: one reminder call; with
  ``--wait``, polls until the job has an outcome and prints it.
* ``appliance outbound run-reminders --days 2``: every booked appointment of the next two days
  whose patient has a phone on file; prints the campaign name and the number of jobs.
* ``appliance outbound status --job ID`` / ``--campaign NAME``: an outcome, or counts per outcome.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from appliance.control import ControlClient, ControlError


def add_parser(sub: Any) -> None:
    """Add the ``outbound`` subcommand to the ``appliance`` parser's subparsers."""
    out = sub.add_parser("outbound", help="queue reminder calls on the running agent ([outbound])")
    out.add_argument("--config", type=Path, default=None, help="TOML settings file")
    osub = out.add_subparsers(dest="outbound_command", required=True)
    dial = osub.add_parser("dial", help="one reminder call (the TCPA gate decides at dial time)")
    dial.add_argument("--number", required=True, help="the callee's phone number")
    dial.add_argument("--appointment", required=True, help="the appointment id it is about")
    dial.add_argument("--scope", default="reminders", help="consent scope (default reminders)")
    dial.add_argument("--wait", type=float, default=0.0, help="wait up to S s for the outcome")
    run = osub.add_parser("run-reminders", help="a campaign from the calendar's next N days")
    run.add_argument("--days", type=int, required=True, help="1 to 14")
    run.add_argument("--campaign", default="", help="campaign name (default: dated)")
    status = osub.add_parser("status", help="a job's outcome or a campaign's counts")
    group = status.add_mutually_exclusive_group(required=True)
    group.add_argument("--job", help="job id")
    group.add_argument("--campaign", help="campaign name")
    out.set_defaults(func=run_command)


def _actor() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return "cli:" + "".join(c for c in name if c.isalnum() or c in "_.-")[:60]


def run_command(args: argparse.Namespace) -> int:
    """Run one ``appliance outbound`` command; 0 on success, 1 on a refusal or error."""
    from appliance.config import load_settings

    settings = load_settings(args.config)
    client = ControlClient(settings.admin.control_socket, timeout=30.0)
    actor = _actor()
    try:
        if args.outbound_command == "dial":
            job = client.call(
                "outbound.dial",
                {"number": args.number, "appointment_id": args.appointment, "scope": args.scope},
                actor,
            )
            print(f"job {job['job_id']} queued")
            return _wait(client, actor, job["job_id"], args.wait) if args.wait > 0 else 0
        if args.outbound_command == "run-reminders":
            args_ = {"days": args.days, "campaign": args.campaign}
            result = client.call("outbound.reminders", args_, actor)
            print(f"campaign {result['campaign']}: {len(result['jobs'])} job(s) queued")
            return 0
        if args.job:
            print(json.dumps(client.call("outbound.job", {"job_id": args.job}, actor)))
        else:
            print(json.dumps(client.call("outbound.campaign", {"campaign": args.campaign}, actor)))
        return 0
    except ControlError as exc:
        print(f"appliance outbound: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


def _wait(client: ControlClient, actor: str, job_id: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        outcome = client.call("outbound.job", {"job_id": job_id}, actor)["outcome"]
        if outcome:
            print(f"job {job_id}: {outcome}")
            return 0
        time.sleep(1.0)
    print(f"job {job_id}: no outcome yet", file=sys.stderr)
    return 1
