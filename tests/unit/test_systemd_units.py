"""systemd units: `systemd-analyze verify` is clean and the security exposure meets its target.

Targets (issue 4): the agent at most 2.5 ("OK"), timer-driven services at most 2.0.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SYSTEM_UNITS = Path("/lib/systemd/system")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def install_root(tmp_path: Path) -> Path:
    """A root tree laid out as on the box: the units, the system units, the agent binary."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    binary = root / "opt/appliance/current/.venv/bin/appliance"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    (root / "usr/sbin").mkdir(parents=True)
    for name in ("kamailio", "kamcmd"):  # the SIP edge's unit (ADR 0020)
        (root / "usr/sbin" / name).write_text("#!/bin/sh\n")
        (root / "usr/sbin" / name).chmod(0o755)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    for unit in UNITS.glob("*.timer"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    return root


def test_units_verify_clean(tmp_path: Path) -> None:
    if not SYSTEM_UNITS.is_dir():
        pytest.skip("no system unit directory to verify against")
    root = install_root(tmp_path)
    units = sorted(str(p) for p in (root / "etc/systemd/system").iterdir())
    # agent, admin page, audit-verify service + timer and its alarm, first boot; the SIP edge
    # and the agent worker template (ADR 0020), verified as instance 0
    assert len(units) == 8
    units = [u.replace("appliance-agent@.service", "appliance-agent@0.service") for u in units]
    out = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


@pytest.mark.parametrize(
    ("unit", "limit"),
    [
        ("appliance-agent.service", 2.5),
        ("appliance-admin.service", 2.5),
        ("appliance-audit-verify.service", 2.0),
        ("appliance-audit-alarm.service", 2.0),
    ],
)
def test_security_exposure(unit: str, limit: float) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNITS / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert match, out.stdout[-1000:] + out.stderr[-1000:]
    assert float(match.group(1)) <= limit, f"{unit} exposure {match.group(1)} > {limit}"


def test_agent_unit_contract() -> None:
    text = (UNITS / "appliance-agent.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StartLimitBurst=",
        "LoadCredentialEncrypted=audit-kek:",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "User=appliance",
    ):
        assert line in text, line
    preset = (UNITS / "90-appliance.preset").read_text()
    assert "enable appliance-agent.service" in preset
    assert "enable appliance-audit-verify.timer" in preset


def test_admin_unit_contract() -> None:
    """The admin page runs as its own user, never the agent's, with the TLS key as a credential."""
    text = (UNITS / "appliance-admin.service").read_text()
    for line in (
        "User=appliance-admin\n",
        "SupplementaryGroups=appliance\n",
        "LoadCredential=admin-tls.key:/etc/appliance/tls/server.key",
        "LoadCredential=enrolment.argon2:",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "appliance admin --config",
    ):
        assert line in text, line
    assert "audit-kek" not in text  # the admin page never holds the audit keys
    agent = (UNITS / "appliance-agent.service").read_text()
    assert "RuntimeDirectory=appliance" in agent  # where the control socket lives
    preset = (UNITS / "90-appliance.preset").read_text()
    assert "enable appliance-admin.service" in preset


IMAGE = UNITS.parent / "image" / "mkosi.extra"


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_no_core_dumps_from_any_unit(unit: str) -> None:
    """A core of any appliance process would hold keys or transcripts (issue 14)."""
    text = (UNITS / unit).read_text()
    assert "\nLimitCORE=0\n" in text, unit
    assert re.search(r"^UMask=0077$", text, re.MULTILINE), unit
    # The image runs these very files (links resolved when build.sh stages the tree).
    image_copy = IMAGE / "usr/lib/systemd/system" / unit
    assert image_copy.resolve() == (UNITS / unit).resolve(), unit


@pytest.mark.parametrize("unit", ["appliance-agent.service", "appliance-admin.service"])
def test_units_never_reach_the_model_hub(unit: str) -> None:
    text = (UNITS / unit).read_text()
    assert "Environment=HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1\n" in text, unit


def test_image_has_a_coredump_policy() -> None:
    sysctl = (IMAGE / "usr/lib/sysctl.d/90-appliance-coredump.conf").read_text()
    assert "\nkernel.core_pattern=|/bin/false\n" in sysctl
    assert "\nfs.suid_dumpable=0\n" in sysctl
    coredump = (IMAGE / "usr/lib/systemd/coredump.conf.d/50-appliance.conf").read_text()
    assert "[Coredump]\nStorage=none\nProcessSizeMax=0\n" in coredump
    manager = (IMAGE / "usr/lib/systemd/system.conf.d/50-appliance-coredump.conf").read_text()
    assert "[Manager]\nDefaultLimitCORE=0\n" in manager


def test_supervisor_programs_are_owner_only_without_cores() -> None:
    """Under supervisord too: umask 077, core limit 0, models offline (issue 14)."""
    import configparser

    conf = configparser.RawConfigParser(strict=True)
    conf.read(UNITS / "supervisord.conf")
    assert conf.get("supervisord", "umask") == "077"
    programs = [s for s in conf.sections() if s.startswith("program:")]
    assert sorted(programs) == ["program:appliance-admin", "program:appliance-agent"]
    for program in programs:
        assert conf.get(program, "umask") == "077", program
        command = conf.get(program, "command")
        assert command.startswith('/bin/sh -c \'ulimit -c 0 && exec "$0" '), program
        env = conf.get(program, "environment")
        assert 'HF_HUB_OFFLINE="1"' in env and 'TRANSFORMERS_OFFLINE="1"' in env, program


def test_verify_timer_runs_with_the_witness_and_raises_the_alarm_on_failure() -> None:
    """Issue 14: the timer's verify uses the witness copy and an alarm the admin page shows."""
    from appliance.audit.alarm import ALARM_RELPATH

    marker = f"/var/lib/appliance/{ALARM_RELPATH}"  # [store] metadata_db's directory on the box
    verify = (UNITS / "appliance-audit-verify.service").read_text()
    assert "\nOnFailure=appliance-audit-alarm.service\n" in verify
    exec_start = next(line for line in verify.splitlines() if line.startswith("ExecStart="))
    assert " verify --witness /opt/appliance/artefacts/witness-checkpoints.log " in exec_start
    assert exec_start.endswith(f" --alarm-file {marker}")
    alarm = (UNITS / "appliance-audit-alarm.service").read_text()
    exec_start = next(line for line in alarm.splitlines() if line.startswith("ExecStart="))
    assert f" alarm --alarm-file {marker} " in exec_start
    for text in (verify, alarm):
        assert "\nStateDirectory=appliance/alarms\nStateDirectoryMode=0750\n" in text
    assert "[Install]" not in alarm  # started by OnFailure= only
    image_copy = IMAGE / "usr/lib/systemd/system/appliance-audit-alarm.service"
    assert image_copy.resolve() == (UNITS / "appliance-audit-alarm.service").resolve()
