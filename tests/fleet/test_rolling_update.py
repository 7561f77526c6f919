"""A real rolling update: ansible-playbook over SSH to two hosts in network namespaces.

The fixture provisions release N on both hosts with site.yml (models and release from the
artefact repository, agents under supervisord). Scenario A: N+1 is staged with site.yml while N
serves; a call into host A is up (sipp: a 60 s pause, then BYE) when rolling_update.yml drains
host A, so the drain waits for it; the call must complete, both hosts must run N+1, and the
update time and refusal window per host are measured. Scenario B: release N+2 cannot load its
model (it names a model file the store does not have, so ``serve`` exits 3); the run must fail
on the first host, roll it back to N+1 (healthy), report why, and leave the second host alone
(max_fail_percentage 0). Then the checkpoint witness collects host A's audit checkpoints and
refuses a truncated file, and the runtime layer's install path (copy, SHA-256, unpack) runs
at a small scale.

Measurements are printed and written to benchmarks/results/fleet-<timestamp>.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import pytest

from tests.fleet.harness import (
    BIN,
    CONTROLLER_IP,
    PHRASE_CACHE,
    REPO,
    Fleet,
    Host,
    Prober,
    run,
    sip_options,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

V_N, V_N1, V_N2 = "0.1.1", "0.1.2", "0.1.3"
V_SMALL = "0.2.0"  # built against the small runtime layer (the runtime install test)
#: [sip] drain_timeout_s on the hosts: more than the call, less than supervisord's stopwaitsecs.
DRAIN_TIMEOUT_S = 120
#: The live call outlasts what the rolling update does on host A before the drain (N+1 is staged
#: beforehand with site.yml; the models are re-verified), so it is still up when the drain
#: begins, and ends well inside the drain timeout.
CALL_PAUSE_MS = 60000
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


def _log_lines(log: str, needle: str) -> list[tuple[float, str]]:
    """(time, line) of each timestamped agent log line containing ``needle``."""
    out = []
    for line in log.splitlines():
        m = _TS.match(line)
        if m and needle in line:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((when, line))
    return out


def _log_times(log: str, needle: str) -> list[float]:
    return [t for t, _ in _log_lines(log, needle)]


def _refusal_window(log_text: str, since: float) -> float | None:
    """From the drain (SIGTERM: new calls get 503) to the new process's ready line."""
    drains = [t for t in _log_times(log_text, "draining: refusing new calls") if t >= since]
    readies = [t for t in _log_times(log_text, "ready: accepting SIP calls on") if t >= since]
    if not drains:
        return None
    after = [t for t in readies if t > drains[0]]
    return (after[0] - drains[0]) if after else None


def _agent_exits(host: Host, since: float) -> list[tuple[float, str]]:
    """When supervisord saw the agent stop after ``since``, and how (``exit status 0``, ...)."""
    lines = _log_lines(host.supervisor_log(), "stopped: appliance-agent (")
    return [(t, s.rsplit("(", 1)[1].rstrip(")")) for t, s in lines if t > since]


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
        # A cold phrase cache (no e2e test ran in this checkout yet): both first starts would
        # render the same ~80 clips side by side (about 4 min each on 2 cores). Provisioned one
        # after the other, host A renders them and host B loads them.
        cold = not any(PHRASE_CACHE.glob("*.pcm"))
        MEASURED["phrase_cache_was_cold"] = cold
        for limit in [["--limit", h.name] for h in fl.hosts] if cold else [[]]:
            rc, out = fl.playbook(inventory, "site.yml", *limit, "-e", f"appliance_version={V_N}")
            assert rc == 0, "\n".join(_failure_messages(out)) or out[-8000:]
        steps["site_yml_s"] = round(time.monotonic() - t0 - steps["setup_s"], 1)
        for host in fl.hosts:
            assert host.current() == V_N
            assert sip_options(host.ip) == 200, host.log()[-3000:]
        MEASURED["provision"] = {**steps, "total_s": round(time.monotonic() - t0, 1)}
        fl.inventory = inventory  # type: ignore[attr-defined]
        yield fl
    finally:
        try:
            fl.close()
        finally:
            MEASURED["module_wall_s"] = round(time.monotonic() - t0, 1)
            if "hosts" in MEASURED:
                RESULTS.mkdir(parents=True, exist_ok=True)
                path = RESULTS / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json"
                path.write_text(json.dumps(MEASURED, indent=2) + "\n")
                print(f"\nfleet measurements -> {path}\n{json.dumps(MEASURED, indent=2)}")


def test_rolling_update_keeps_a_live_call(fleet: Fleet) -> None:
    from tests.e2e.sipp import Pause, render_uac_scenario, start_sipp

    host_a, host_b = fleet.hosts
    # Stage N+1 on both boxes while N serves (site.yml only stages on a box that runs a release),
    # so the rolling update below is the drain/switch/start/check part with a predictable lead.
    t0 = time.monotonic()
    rc, out = fleet.playbook(fleet.inventory, "site.yml", "-e", f"appliance_version={V_N1}")
    stage_s = time.monotonic() - t0
    assert rc == 0, "\n".join(_failure_messages(out)) or out[-8000:]
    for host in fleet.hosts:
        assert (host.prefix / "releases" / V_N1 / ".installed").exists()
        assert host.current() == V_N
    since = time.time()
    call_len = CALL_PAUSE_MS / 1000
    sipp = start_sipp(
        render_uac_scenario(steps=[Pause(CALL_PAUSE_MS)]),
        f"{host_a.ip}:5060",
        local_ip=CONTROLLER_IP,
        timeout_s=call_len + 120,
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
        try:
            rc, out = fleet.playbook(
                fleet.inventory, "rolling_update.yml", "-e", f"appliance_version={V_N1}"
            )
        finally:
            prober.stop()
        playbook_s = time.monotonic() - t0
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
    # The drain began while the call was up and waited for it: host A's old agent stopped only
    # after the caller's BYE. (A drain that began after the call ended proves nothing.)
    log_a = host_a.log()
    drain_lines = [(t, s) for t, s in _log_lines(log_a, "draining: refusing new") if t > since]
    assert drain_lines, log_a[-3000:]
    assert "waiting for 1 active call(s)" in drain_lines[0][1], (
        "the call was over before host A's drain began (staging took longer than "
        f"{call_len:.0f} s?):\n{log_a[-3000:]}"
    )
    drains = [t for t, _ in drain_lines]
    ended = [t for t in _log_times(log_a, "ended (caller_hangup)") if t > since]
    exits = {h.name: _agent_exits(h, since) for h in fleet.hosts}
    assert exits[host_a.name], host_a.supervisor_log()[-3000:]
    stopped = exits[host_a.name][0][0]
    assert ended and drains[0] < ended[0] <= stopped, (drains, ended, stopped)
    assert ended[0] >= call_answered + call_len - 2, (ended, call_answered)
    for name, seen in exits.items():
        if seen and seen[0][1] != "exit status 0":  # an appliance bug, not the rollout's
            warnings.warn(
                f"{name}: the drained agent ended with {seen[0][1]} instead of exit status 0",
                stacklevel=1,
            )
    durations = _host_durations(out)
    assert set(durations) == {h.name for h in fleet.hosts}, out[-3000:]
    windows = {h.name: _refusal_window(h.log(), since) for h in fleet.hosts}
    assert all(w is not None for w in windows.values()), windows
    MEASURED["hosts"] = {
        h.name: {
            "rolling_update_s": round(durations[h.name], 1),
            "refusal_window_s": round(windows[h.name], 1),  # type: ignore[arg-type]
            "longest_options_gap_s": round(prober.longest_gap(h.name), 1),
        }
        for h in fleet.hosts
    }
    MEASURED["hosts"][host_a.name]["drain_waited_for_call_s"] = round(  # type: ignore[index]
        stopped - drains[0], 1
    )
    for name, seen in exits.items():
        MEASURED["hosts"][name]["old_agent_exit"] = seen[0][1] if seen else "?"  # type: ignore[index]
    MEASURED["scenario_a"] = {
        "stage_both_hosts_s": round(stage_s, 1),
        "playbook_s": round(playbook_s, 1),
        "call_pause_s": call_len,
        "call_result": "completed, BYE answered 200",
        "from": V_N,
        "to": V_N1,
    }
    MEASURED["longest_refusal_window_s"] = round(max(windows.values()), 1)  # type: ignore[type-var]
    print(json.dumps(MEASURED, indent=2))
    # The second host was drained with no call: its refusal window is just the restart.
    assert windows[host_b.name] < 60, windows  # type: ignore[operator]


def test_bad_release_is_rolled_back_and_stops_the_rollout(fleet: Fleet) -> None:
    host_a, host_b = fleet.hosts
    assert [h.current() for h in fleet.hosts] == [V_N1, V_N1], "scenario A must pass first"
    b_drains_before = len(_log_times(host_b.log(), "draining: refusing new calls"))
    since = time.time()
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
    # Host A refused calls from the drain of N+1 until N+1 was back after the rollback.
    window = _refusal_window(host_a.log(), since)
    assert window is not None, host_a.log()[-3000:]
    MEASURED["scenario_b"] = {
        "release": V_N2,
        "playbook_s": round(elapsed, 1),
        "host_a_refusal_window_s": round(window, 1),
        "failure": rolled_back[0][:400],
    }
    MEASURED["longest_refusal_window_s"] = round(
        max(window, MEASURED.get("longest_refusal_window_s", 0.0)),  # type: ignore[call-overload]
        1,
    )


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


def test_runtime_layer_is_shipped_checked_and_unpacked(fleet: Fleet) -> None:
    """The role's real runtime install path, at a smaller scale than the 2.6 GB runtime.

    A small environment (what ``appliance --version`` and the release builder's manifest reader
    need, plus pip and setuptools to build and install the wheel) is packed by build_release.py
    as a runtime layer with its own id, and a release is built against it. site.yml stages that
    release on host B over SSH: the runtime artefact is copied from the controller's
    repository, its SHA-256 checked, unpacked into a staging directory and moved into place;
    the release's venv is layered on it. A
    corrupted artefact is refused first, before anything is unpacked. The serving release is not
    touched (site.yml only stages on a box that runs one).
    """
    from tests.fleet.harness import copy_distributions

    host_b = fleet.hosts[1]
    repo = fleet.root / "artefacts"
    small = fleet.root / "small-runtime-venv"
    t0 = time.monotonic()
    # build_release.py reads the model manifest (pydantic schema, tomlkit for the lock file).
    copy_distributions(
        small, ["cryptography", "sqlite-utils", "pydantic", "tomlkit", "pip", "setuptools"]
    )
    py = str(small / "bin" / "python")
    script = str(REPO / "ansible" / "scripts" / "build_release.py")
    run([py, script, "runtime", "--repo", str(repo)])
    run([py, script, "release", "--repo", str(repo), "--version", V_SMALL])
    info = json.loads((repo / "releases" / f"appliance-{V_SMALL}.json").read_text())
    rid = info["runtime_id"]
    served = json.loads((repo / "releases" / f"appliance-{V_N1}.json").read_text())["runtime_id"]
    assert rid != served
    tar = repo / "runtimes" / f"runtime-{rid}.tar"
    runtime_dir = host_b.prefix / "runtimes" / rid
    release_dir = host_b.prefix / "releases" / V_SMALL
    stage = ["--limit", host_b.name, "-e", f"appliance_version={V_SMALL}"]

    # 1. A runtime artefact that does not match its .sha256 is refused; nothing is unpacked.
    good = tar.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    tar.write_bytes(bytes(bad))
    try:
        rc, out = fleet.playbook(fleet.inventory, "site.yml", *stage)
    finally:
        tar.write_bytes(good)
    assert rc != 0, out[-4000:]
    assert f"runtime-{rid}.tar: SHA-256 mismatch" in out, out[-4000:]
    assert not runtime_dir.exists()
    assert not (host_b.prefix / "runtimes" / f".{rid}.staging").exists()
    assert not (release_dir / ".installed").exists()

    # 2. The intact artefact is shipped, checked, unpacked and used by the staged release.
    rc, out = fleet.playbook(fleet.inventory, "site.yml", *stage)
    assert rc == 0, "\n".join(_failure_messages(out)) or out[-6000:]
    assert (runtime_dir / "RUNTIME_ID").read_text().strip() == rid
    assert not (host_b.prefix / "artefacts" / tar.name).exists()  # the copy is removed
    with tarfile.open(tar) as archive:
        shipped = {m.name for m in archive.getmembers() if m.isfile()}
    unpacked = {  # less the bytecode that pip and Python wrote into it since
        p.relative_to(runtime_dir).as_posix()
        for p in runtime_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped == unpacked and len(shipped) > 1000, (len(shipped), len(unpacked))
    assert (release_dir / ".installed").exists()
    venv_py = str(release_dir / ".venv" / "bin" / "python")
    probe = "import cryptography as c, sqlite_utils, appliance as a; print(c.__file__, a.__file__)"
    where = run([venv_py, "-c", probe]).stdout.split()
    assert where[0].startswith(f"{runtime_dir}/site-packages/"), where
    assert where[1].startswith(f"{release_dir}/.venv/"), where
    out_v = run([str(release_dir / ".venv" / "bin" / "appliance"), "--version"]).stdout.strip()
    assert out_v == f"appliance {V_SMALL}"
    # Staging only: host B still serves N+1.
    assert host_b.current() == V_N1
    assert sip_options(host_b.ip) == 200
    MEASURED["runtime_install"] = {
        "runtime_artefact_mb": round(len(good) / 1e6, 1),
        "files": len(shipped),
        "test_s": round(time.monotonic() - t0, 1),
    }
