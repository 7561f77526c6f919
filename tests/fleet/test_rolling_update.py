"""A real rolling update: ansible-playbook over SSH to two hosts in network namespaces.

Scenario A: both hosts run release N; a call into host A is in progress (sipp, ~25 s pause, then
BYE) while rolling_update.yml moves the fleet to N+1. The call must complete, both hosts must
run N+1, and the refusal windows are measured. Scenario B: release N+2 cannot load its model
(it names a model file the store does not have, so ``serve`` exits 3); the run must fail on the
first host, roll it back to N+1 (healthy) and leave the second host alone. Then the checkpoint
witness collects host A's audit checkpoints and refuses a truncated file.

Measurements are printed and written to benchmarks/results/fleet-<timestamp>.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.fleet.harness import BIN, CONTROLLER_IP, REPO, Fleet, Prober, run, sip_options

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

V_N, V_N1, V_N2 = "0.1.1", "0.1.2", "0.1.3"
DRAIN_TIMEOUT_S = 60
CALL_PAUSE_MS = 25000
RESULTS = REPO / "benchmarks" / "results"
_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
MEASURED: dict[str, object] = {}


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and sshd need root")
    for tool in ("ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not Path("/usr/sbin/sshd").exists():
        pytest.skip("sshd not installed (Debian package openssh-server; build.sh installs it)")
    for tool in ("ansible-playbook", "supervisord", "supervisorctl"):
        if not (BIN / tool).exists():
            pytest.skip(f"{tool} not in {BIN} (pip install -e '.[test]')")
    if shutil.which("sipp") is None:
        pytest.skip("sipp not installed (Debian package sip-tester)")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the hosts' /usr/bin/python3 is missing")
    probe = subprocess.run(["ip", "netns", "add", f"flprobe{os.getpid()}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")
    subprocess.run(["ip", "netns", "delete", f"flprobe{os.getpid()}"], check=False)


def _build(repo: Path, version: str, source: Path = REPO) -> None:
    run([sys.executable, str(REPO / "ansible" / "scripts" / "build_release.py"), "release",
         "--version", version, "--repo", str(repo), "--source", str(source)])  # fmt: skip


def _bad_source(tmp: Path) -> Path:
    """A source tree whose default LLM is a file the model store does not have."""
    tree = tmp / "bad-src"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    for d in ("src", "systemd"):
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(REPO / d, tree / d, ignore=ignore)
    (tree / "models").mkdir()
    shutil.copy2(REPO / "models" / "manifest.toml", tree / "models" / "manifest.toml")
    settings = tree / "src" / "appliance" / "config" / "settings.py"
    text = settings.read_text()
    old = '"llm/SmolLM2-135M-Instruct.Q4_1.gguf"'
    assert old in text
    settings.write_text(text.replace(old, '"llm/SmolLM2-360M-Instruct.Q4_K_M.gguf"', 1))
    return tree


def _log_times(log: str, needle: str) -> list[float]:
    out = []
    for line in log.splitlines():
        m = _TS.match(line)
        if m and needle in line:
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def _refusal_window(log_text: str, since: float) -> float | None:
    """From the drain (SIGTERM: new calls get 503) to the new process's ready line."""
    drains = [t for t in _log_times(log_text, "draining: refusing new calls") if t >= since]
    readies = [t for t in _log_times(log_text, "ready: accepting SIP calls on") if t >= since]
    if not drains:
        return None
    after = [t for t in readies if t > drains[0]]
    return (after[0] - drains[0]) if after else None


def _host_durations(out: str) -> dict[str, float]:
    """Per host, the update time the playbook reports (``fleet_timing HOST VERSION S s``)."""
    return {h: float(t) for h, _, t in re.findall(r"fleet_timing (\S+) (\S+) ([\d.]+) s", out)}


def _failure_messages(out: str) -> list[str]:
    """The ``fatal: [host]: FAILED! => {...}`` lines of the default callback."""
    return re.findall(r"^fatal: \[[^\]]+\]: FAILED! => .*$", out, flags=re.M)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, store: Path):  # noqa: ANN201
    """Two hosts provisioned to release N over SSH, agents running under supervisord."""
    _skip_unless_possible()
    t0 = time.monotonic()
    root = tmp_path_factory.mktemp("fleet")
    repo = root / "artefacts"
    fl = Fleet(root)
    steps: dict[str, float] = {}
    try:
        for version in (V_N, V_N1):
            _build(repo, version)
        _build(repo, V_N2, _bad_source(root))
        run([sys.executable, str(REPO / "ansible" / "scripts" / "build_release.py"), "models",
             "--repo", str(repo), "--store", str(store)])  # fmt: skip
        runtime_id = json.loads((repo / "releases" / f"appliance-{V_N}.json").read_text())
        fl.create_network()
        fl.start_sshd()
        fl.prepare_hosts(runtime_id["runtime_id"])
        fl.start_supervisord()
        inventory = fl.write_inventory(repo, DRAIN_TIMEOUT_S)
        steps["setup_s"] = round(time.monotonic() - t0, 1)
        rc, out = fl.playbook(inventory, "site.yml", "-e", f"appliance_version={V_N}")
        steps["site_yml_s"] = round(time.monotonic() - t0 - steps["setup_s"], 1)
        assert rc == 0, out[-8000:]
        for host in fl.hosts:
            assert host.current() == V_N
            assert sip_options(host.ip) == 200, host.log()[-3000:]
        MEASURED["provision"] = {**steps, "total_s": round(time.monotonic() - t0, 1)}
        fl.inventory = inventory  # type: ignore[attr-defined]
        yield fl
    finally:
        fl.close()
        MEASURED["module_wall_s"] = round(time.monotonic() - t0, 1)
        if "hosts" in MEASURED:
            RESULTS.mkdir(parents=True, exist_ok=True)
            path = RESULTS / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json"
            path.write_text(json.dumps(MEASURED, indent=2) + "\n")
            print(f"\nfleet measurements -> {path}\n{json.dumps(MEASURED, indent=2)}")


def test_rolling_update_keeps_a_live_call(fleet: Fleet) -> None:
    from tests.e2e.sipp import Pause, render_uac_scenario, start_sipp

    host_a, host_b = fleet.hosts
    since = time.time()
    sipp = start_sipp(
        render_uac_scenario(steps=[Pause(CALL_PAUSE_MS)]),
        f"{host_a.ip}:5060",
        local_ip=CONTROLLER_IP,
        timeout_s=120,
        workdir=fleet.root / "sipp-a",
    )
    try:
        deadline = time.monotonic() + 30
        while "answered" not in host_a.log()[-20000:] and time.monotonic() < deadline:
            assert sipp.poll() is None, "sipp ended before the call was answered"
            time.sleep(0.2)
        assert time.monotonic() < deadline, host_a.log()[-3000:]
        call_answered = time.time()
        prober = Prober(fleet.hosts)
        prober.start()
        t0 = time.monotonic()
        rc, out = fleet.playbook(
            fleet.inventory, "rolling_update.yml", "-e", f"appliance_version={V_N1}"
        )
        playbook_s = time.monotonic() - t0
        prober.stop()
        assert rc == 0, "\n".join(_failure_messages(out)) or out[-8000:]
        call = sipp.wait()
    finally:
        sipp.terminate()
    codes = call.received_status_codes()
    assert call.returncode == 0, call.stderr + call.messages[-4000:]
    assert codes[-1] == 200 and codes.count(200) >= 2, codes  # INVITE 200 ... BYE 200
    for host in fleet.hosts:
        assert host.current() == V_N1
        assert host.version() == f"appliance {V_N1}"
        assert sip_options(host.ip) == 200
        assert len(_log_times(host.log(), "ready: accepting SIP calls on")) >= 2
    # The drain waited for the call: host A's old agent stopped only after the call ended.
    stopped = [t for t in _log_times(host_a.log(), "appliance.app.server: stopped") if t > since]
    call_len = CALL_PAUSE_MS / 1000
    assert stopped and stopped[0] >= call_answered + call_len - 2, (stopped, call_answered)
    durations = _host_durations(out)
    assert set(durations) == {h.name for h in fleet.hosts}, out[-3000:]
    MEASURED["hosts"] = {
        h.name: {
            "rolling_update_s": round(durations.get(h.name, float("nan")), 1),
            "refusal_window_s": round(_refusal_window(h.log(), since) or float("nan"), 1),
            "longest_options_gap_s": round(prober.longest_gap(h.name), 1),
        }
        for h in fleet.hosts
    }
    MEASURED["scenario_a"] = {
        "playbook_s": round(playbook_s, 1),
        "call_pause_s": call_len,
        "call_result": "completed, BYE answered 200",
        "from": V_N,
        "to": V_N1,
    }
    MEASURED["longest_refusal_window_s"] = max(
        v["refusal_window_s"]
        for v in MEASURED["hosts"].values()  # type: ignore[union-attr]
    )
    print(json.dumps(MEASURED, indent=2))
    # The second host was drained with no call: its refusal window is just the restart.
    assert MEASURED["hosts"][host_b.name]["refusal_window_s"] < 120  # type: ignore[index]


def test_bad_release_is_rolled_back_and_stops_the_rollout(fleet: Fleet) -> None:
    host_a, host_b = fleet.hosts
    assert [h.current() for h in fleet.hosts] == [V_N1, V_N1], "scenario A must pass first"
    b_drains_before = len(_log_times(host_b.log(), "draining: refusing new calls"))
    t0 = time.monotonic()
    rc, out = fleet.playbook(
        fleet.inventory, "rolling_update.yml", "-e", f"appliance_version={V_N2}"
    )
    elapsed = time.monotonic() - t0
    failures = _failure_messages(out)
    assert rc != 0, out[-5000:]
    rolled_back = [m for m in failures if f"[{host_a.name}]" in m and f"rolled back to {V_N1}" in m]
    assert rolled_back, failures or out[-5000:]
    # The broken release really was started and really failed (exit 3: model files missing).
    assert "model error" in host_a.log()
    # Host A is back on N+1 and healthy.
    assert host_a.current() == V_N1
    assert host_a.version() == f"appliance {V_N1}"
    assert sip_options(host_a.ip) == 200
    # The rollout stopped: host B was never touched.
    assert host_b.current() == V_N1
    assert not (host_b.prefix / "releases" / V_N2).exists()
    assert len(_log_times(host_b.log(), "draining: refusing new calls")) == b_drains_before
    recap = out[out.rindex("PLAY RECAP") :]
    assert re.search(rf"{host_a.name}\s+:.*failed=1", recap), recap
    assert host_b.name not in recap, recap  # max_fail_percentage ended the play before B
    MEASURED["scenario_b"] = {
        "release": V_N2,
        "playbook_s": round(elapsed, 1),
        "failure": rolled_back[0][:400],
    }


def test_checkpoints_are_witnessed_and_truncation_is_refused(fleet: Fleet) -> None:
    host_a = fleet.hosts[0]
    witness = fleet.root / "witness"
    rc, out = fleet.playbook(
        fleet.inventory, "collect_checkpoints.yml", "-e", f"checkpoints_witness_dir={witness}"
    )
    assert rc == 0, out[-6000:]
    copy = witness / host_a.name / "checkpoints.log"
    original = (host_a.state / "audit" / "checkpoints.log").read_bytes()
    assert copy.read_bytes() == original and original.count(b"\n") >= 1
    assert "Verify the box's log against the witness copy" in out
    # A box whose checkpoint file lost its last line (size shrank) is refused; the copy stays.
    lines = original.splitlines(keepends=True)
    (host_a.state / "audit" / "checkpoints.log").write_bytes(b"".join(lines[:-1]))
    try:
        rc, out = fleet.playbook(
            fleet.inventory, "collect_checkpoints.yml", "-e",
            f"checkpoints_witness_dir={witness}", "--limit", host_a.name,
        )  # fmt: skip
    finally:
        (host_a.state / "audit" / "checkpoints.log").write_bytes(original)
    assert rc != 0, out[-4000:]
    assert "shrank" in out, out[-4000:]
    assert copy.read_bytes() == original
    assert list((witness / host_a.name / "rejected").iterdir())
