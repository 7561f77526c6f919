"""A small fleet on this machine: network namespaces, each with its own sshd and supervisord.

Each host is a network namespace on a bridge to the root namespace (the controller, which is
also the SIP trunk peer: 10.77.0.1). The namespaces share the filesystem, so each host gets its
own prefix directory (``<root>/<host>/opt/appliance``, ``etc``, ``var/lib/appliance``) that the
inventory names. ansible-playbook reaches each host over SSH (key auth only, generated host and
client keys, a pinned known_hosts file). The agent runs under supervisord inside the namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SUBNET = "10.77.0"
CONTROLLER_IP = f"{SUBNET}.1"
#: The fixed-phrase cache the e2e tests share (tests/e2e/server.py).
PHRASE_CACHE = REPO / "var" / "test-phrase-cache"


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command, raising with its output on failure."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()}")
    return out


def sip_options(host: str, port: int = 5060, timeout_s: float = 0.5) -> int:
    """Send one SIP OPTIONS from the root namespace; return the status code (0: none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((CONTROLLER_IP, 0))
        lport = sock.getsockname()[1]
        sock.settimeout(timeout_s)
        tag = uuid.uuid4().hex[:8]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CONTROLLER_IP}:{lport};branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@{CONTROLLER_IP}>;tag={tag}\r\n"
            f"To: <sip:{host}:{port}>\r\nCall-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        try:
            sock.sendto(msg.encode(), (host, port))
            data = sock.recv(65535)
        except OSError:
            return 0
    parts = data.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@dataclass
class Host:
    """One target host (a network namespace)."""

    name: str
    ip: str
    netns: str
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / "appliance"

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "appliance"

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "appliance"

    @property
    def supervisor_var(self) -> Path:
        return self.state / "supervisor"

    @property
    def agent_log(self) -> Path:
        return self.supervisor_var / "appliance-agent.log"

    def current(self) -> str:
        """The release ``current`` points at."""
        return os.readlink(self.prefix / "current").rsplit("/", 1)[-1]

    def version(self) -> str:
        """What the current release's ``appliance --version`` prints."""
        out = run([str(self.prefix / "current" / ".venv" / "bin" / "appliance"), "--version"])
        return out.stdout.strip()

    def log(self) -> str:
        return self.agent_log.read_text(errors="replace") if self.agent_log.exists() else ""

    def supervisor_log(self) -> str:
        """The log of supervisord itself (spawns, exits and how the agent ended)."""
        path = self.supervisor_var / "supervisord.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def supervisor_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "APPLIANCE_VENV": str(self.prefix / "current" / ".venv"),
            "APPLIANCE_CONFIG": str(self.etc / "appliance.toml"),
            "APPLIANCE_VAR": str(self.supervisor_var),
        }


class Fleet:
    """Namespaces, sshd, supervisord and an inventory for ``count`` hosts under ``root``."""

    def __init__(self, root: Path, count: int = 2) -> None:
        self.root = root
        self.tag = f"{os.getpid() % 10000}"
        self.bridge = f"flbr{self.tag}"
        self.hosts = [
            Host(
                name=f"host{chr(65 + i)}",
                ip=f"{SUBNET}.{i + 2}",
                netns=f"fleet{chr(65 + i)}{self.tag}",
                root=root / f"host{chr(65 + i)}",
            )
            for i in range(count)
        ]
        self.ssh_dir = root / "ssh"
        self.collections = root / "collections"
        self.control_dir = Path(f"/tmp/flcp{self.tag}")  # short: ssh ControlPath length limit
        self._links: list[str] = []
        self._runs = 0
        self._make_release_key()

    def _make_release_key(self) -> None:
        """Make a throwaway release signing key for this fleet.

        build_release.py signs with it (its environment variable is set until close()), and the
        inventory pins its public half.
        """
        keys = self.root / "release-key"
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret, public = keys / "release-signing.key", keys / "release-signing.pub"
        script = REPO / "ansible" / "scripts" / "build_release.py"
        run(
            [
                sys.executable,
                str(script),
                "keygen",
                "--secret",
                str(secret),
                "--public",
                str(public),
            ]
        )
        self.release_pubkey = public.read_text().splitlines()[1]
        self._saved_key_env = os.environ.get("APPLIANCE_RELEASE_SIGNING_KEY")
        os.environ["APPLIANCE_RELEASE_SIGNING_KEY"] = str(secret)

    # -- network ------------------------------------------------------------------------------
    def create_network(self) -> None:
        """Bridge in the root namespace, one veth pair per host namespace."""
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self._links.append(self.bridge)
        run(["ip", "addr", "add", f"{CONTROLLER_IP}/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for i, host in enumerate(self.hosts):
            outer, inner = f"flv{self.tag}h{i}", f"flv{self.tag}n{i}"
            run(["ip", "netns", "add", host.netns])
            run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            self._links.append(outer)
            run(["ip", "link", "set", inner, "netns", host.netns])
            run(["ip", "link", "set", outer, "master", self.bridge, "up"])
            run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", inner])
            run(["ip", "-n", host.netns, "link", "set", inner, "up"])
            run(["ip", "-n", host.netns, "link", "set", "lo", "up"])

    # -- ssh ------------------------------------------------------------------------------------
    def start_sshd(self) -> None:
        """One sshd per namespace: generated host key, key auth only, pinned known_hosts."""
        self.ssh_dir.mkdir(mode=0o700, parents=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)])
        pub = self.client_key.with_name(self.client_key.name + ".pub")
        (self.ssh_dir / "authorized_keys").write_text(pub.read_text())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        known = []
        for host in self.hosts:
            key = self.ssh_dir / f"{host.name}_host_ed25519"
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
            algo, blob = key.with_name(key.name + ".pub").read_text().split()[:2]
            known.append(f"{host.ip} {algo} {blob}")
            cfg = self.ssh_dir / f"{host.name}_sshd_config"
            cfg.write_text(
                f"ListenAddress {host.ip}\nPort 22\nHostKey {key}\n"
                f"PidFile {self.ssh_dir / (host.name + '.pid')}\n"
                f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}\n"
                "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                "StrictModes no\nUsePAM no\nAllowUsers root\nLogLevel VERBOSE\n"
                "Subsystem sftp internal-sftp\n"
            )
            log = self.ssh_dir / f"{host.name}_sshd.log"
            host.procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        host.netns,
                        "/usr/sbin/sshd",
                        "-D",
                        "-e",
                        "-f",
                        str(cfg),
                    ],
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        (self.ssh_dir / "known_hosts").write_text("\n".join(known) + "\n")
        for host in self.hosts:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection((host.ip, 22), 1):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"sshd in {host.netns} did not listen")

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "client_ed25519"

    # -- hosts ----------------------------------------------------------------------------------
    def prepare_hosts(self, runtime_id: str) -> None:
        """Per-host trees, supervisord.conf, and the pre-provisioned runtime layer.

        The runtime layer of id ``runtime_id`` is provisioned as a tree of symlinks into this
        checkout's venv site-packages (minus the editable appliance), the shape the appliance role
        accepts as "already installed" (``runtimes/<id>/RUNTIME_ID``). Shipping the 1.3 GB runtime
        artefact per test run would add minutes; the release and model layers go the real way.
        """
        site = Path(run([sys.executable, "-c", "import sysconfig;"
                         "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())  # fmt: skip
        for host in self.hosts:
            for d in (host.prefix, host.etc, host.supervisor_var):
                d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / "systemd" / "supervisord.conf", host.etc / "supervisord.conf")
            rt = host.prefix / "runtimes" / runtime_id
            (rt / "site-packages").mkdir(parents=True)
            for entry in site.iterdir():
                low = entry.name.lower()
                if low.startswith(("appliance-", "__editable__")) or entry.name == "__pycache__":
                    continue
                (rt / "site-packages" / entry.name).symlink_to(entry)
            (rt / "RUNTIME_ID").write_text(runtime_id + "\n")

    def start_supervisord(self) -> None:
        """Start supervisord inside each namespace, with the repository's supervisord.conf."""
        for host in self.hosts:
            log = host.supervisor_var / "supervisord.out"
            host.procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        host.netns,
                        str(BIN / "supervisord"),
                        "-c",
                        str(host.etc / "supervisord.conf"),
                    ],
                    env=host.supervisor_env(),
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        for host in self.hosts:
            deadline = time.monotonic() + 20
            while not (host.supervisor_var / "supervisor.sock").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"supervisord in {host.netns} did not start")
                time.sleep(0.2)

    def write_inventory(self, repo: Path, drain_timeout_s: int) -> Path:
        """The inventory: two hosts over SSH, supervisord, per-host prefixes."""
        link = self.collections / "ansible_collections" / "clinicvoice" / "appliance"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO / "ansible")
        hosts = {}
        for host in self.hosts:
            hosts[host.name] = {
                "ansible_host": host.ip,
                "appliance_prefix": str(host.prefix),
                "appliance_config_dir": str(host.etc),
                "appliance_state_dir": str(host.state),
                "appliance_sip_bind": f"{host.ip}:5060",
                "config_audit_origin": f"fleet-test/{host.name}/audit",
                # The live call across the rolling update is a silent caller (sipp pauses);
                # the default 20 s idle timeout would end it before the drain.
                "config_agent_idle_timeout_s": 600,
            }
        inventory = {
            "all": {
                "children": {"appliances": {"hosts": hosts}},
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.client_key),
                    "ansible_ssh_common_args": (
                        f"-o UserKnownHostsFile={self.ssh_dir / 'known_hosts'} "
                        "-o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null"
                    ),
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "appliance_artefact_repo": str(repo),
                    "appliance_release_pubkey": self.release_pubkey,
                    "appliance_python": "/usr/bin/python3",
                    "appliance_service_manager": "supervisord",
                    "appliance_supervisorctl": str(BIN / "supervisorctl"),
                    "appliance_drain_timeout_s": drain_timeout_s + 30,
                    # Room for a first start that renders the fixed phrases (a cold cache).
                    "appliance_ready_timeout_s": 300,
                    "appliance_keep_releases": 2,
                    "config_trunk_peers": [f"{CONTROLLER_IP}/32"],
                    "config_sip_drain_timeout_s": drain_timeout_s,
                    "config_sip_rtp_port": 40000,
                    "config_sip_retry_after_s": 5,
                    "config_models_threads": 1,
                    # Warm, shared fixed-phrase audio (keyed by voice, speed and text; atomic
                    # writes): the hosts' first starts then load it instead of rendering it.
                    "config_models_phrase_cache": str(PHRASE_CACHE),
                    "fleet_serial": 1,
                    "fleet_max_fail_percentage": 0,
                },
            }
        }
        path = self.root / "inventory.yml"
        path.write_text(json.dumps(inventory, indent=2))  # JSON is YAML
        return path

    def playbook(
        self, inventory: Path, name: str, *extra: str, timeout_s: float = 600
    ) -> tuple[int, str]:
        """Run a playbook of the collection; return (rc, output).

        The output goes to ``<root>/ansible-<n>-<playbook>.log`` while it runs (for a run that
        hangs); ``name`` is a playbook of the collection or an absolute path. A run past
        ``timeout_s`` is killed (its whole process group) and raises ``TimeoutError``.
        """
        self.control_dir.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(self.collections),
            "ANSIBLE_LOCAL_TEMP": str(self.root / "ansible-local"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            # No -C: the artefacts are compressed already, and compressing the model store
            # costs more CPU than the (virtual) link saves. Pipelining: one SSH round trip per
            # task instead of a copy and an exec.
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self._runs += 1
        playbook = Path(name) if os.path.isabs(name) else REPO / "ansible" / "playbooks" / name
        log = self.root / f"ansible-{self._runs:02d}-{playbook.stem}.log"
        env["ANSIBLE_LOG_PATH"] = str(log.with_suffix(".timed.log"))  # the same, timestamped
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *extra],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                proc.wait(timeout_s)
            except BaseException as exc:  # the timeout, or the test run interrupted
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise TimeoutError(
                        f"{playbook.name} ran past {timeout_s} s; see {log}"
                    ) from None
                raise
        return proc.returncode, log.read_text(errors="replace")

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop supervisord (it stops the agents), sshd, SSH masters; delete namespaces, links.

        Every step runs even when an earlier one fails, and only processes this fleet started
        (or that run inside its namespaces) are signalled.
        """
        errors: list[str] = []
        if self._saved_key_env is None:
            os.environ.pop("APPLIANCE_RELEASE_SIGNING_KEY", None)
        else:
            os.environ["APPLIANCE_RELEASE_SIGNING_KEY"] = self._saved_key_env
        for host in self.hosts:
            try:
                self._close_host(host)
            except Exception as exc:  # noqa: BLE001 - keep tearing down, report at the end
                errors.append(f"{host.name}: {exc!r}")
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "delete", link], capture_output=True, check=False)
        if self.control_dir.is_dir():
            for sock in self.control_dir.iterdir():  # ControlPersist masters outlive the run
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(
                        ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "fleet-host"],
                        capture_output=True, timeout=10, check=False,
                    )  # fmt: skip
        shutil.rmtree(self.control_dir, ignore_errors=True)
        if errors:
            raise RuntimeError("fleet teardown: " + "; ".join(errors))

    def _close_host(self, host: Host) -> None:
        if host.supervisor_var.joinpath("supervisor.sock").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [str(BIN / "supervisorctl"), "-c", str(host.etc / "supervisord.conf"),
                     "shutdown"],
                    env=host.supervisor_env(), capture_output=True, timeout=180, check=False,
                )  # fmt: skip
        for proc in reversed(host.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        # Anything still in the namespace (an agent orphaned by a crash) goes with it.
        pids = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True, check=False)


class Prober(threading.Thread):
    """Sends SIP OPTIONS to every host every ``interval_s`` and records who answered 200."""

    def __init__(self, hosts: list[Host], interval_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.hosts = hosts
        self.interval_s = interval_s
        self.samples: dict[str, list[tuple[float, int]]] = {h.name: [] for h in hosts}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for host in self.hosts:
                self.samples[host.name].append((time.time(), sip_options(host.ip)))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def longest_gap(self, name: str) -> float:
        """Longest time between the last 200 before and the first 200 after a run of misses."""
        longest, last_ok, missed = 0.0, None, False
        for t, code in self.samples[name]:
            if code == 200:
                if missed and last_ok is not None:
                    longest = max(longest, t - last_ok)
                last_ok, missed = t, False
            else:
                missed = True
        return longest


def copy_distributions(dest_venv: Path, names: list[str]) -> list[str]:
    """A small venv holding ``names`` and their requirements, copied from this environment.

    Creates ``dest_venv`` with this environment's base interpreter (no pip of its own) and
    copies every file each distribution's RECORD lists under site-packages (what pip installed),
    following the requirements (without extras) transitively. Returns the distributions copied.
    """
    from importlib import metadata

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", "--without-pip", str(dest_venv)])
    site = dest_venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = site / "site-packages"
    done: set[str] = set()
    todo = list(names)
    while todo:
        name = norm(todo.pop())
        if name in done:
            continue
        done.add(name)
        dist = metadata.distribution(name)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
        for rel in dist.files or []:
            src = Path(str(dist.locate_file(rel)))
            if ".." in rel.parts or "__pycache__" in rel.parts or not src.is_file():
                continue
            target = site / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return sorted(done)
