"""Build the disk image, boot it in QEMU, and call it: the image's end-to-end test.

`./build.sh image` builds (or finds up to date) build/image/out/appliance.raw; a second run with
nothing changed must return in seconds. The test boots a sparse copy of the image under
qemu-system-x86_64 (KVM when it actually runs a guest here, else TCG) with UEFI firmware (OVMF)
and a software TPM 2.0 (swtpm), user-mode networking forwarding a loopback UDP port to the
guest's SIP port 5060, and a PBX trunk file on the EFI partition that allows the host (10.0.2.2
under slirp). A TEST-ONLY unit, injected into the copy (never into the built image), reports on
the serial console what first boot left behind once the agent is active (Type=notify: it sent
READY=1); then sipp sends a SIP OPTIONS from the host and must get 200.

The root is dm-verity protected, so the test re-seals its copy after adding the report unit (a
new hash tree and root hash, as the builder does). After the SIP and HTTPS checks, the host asks
the guest (second serial port) to SIGSEGV the agent and find no core file. Then the box's own
integrity, with the same disk and TPM state: the console shows the recovery key, which opens the
data partition's LUKS2 header; a root block changed offline fails verity at boot; a root changed
AND re-sealed with a new root hash on the ESP boots, but the TPM2 no longer unseals /var (the
kernel command line, measured into PCR 12, changed).

Measured, printed and written to benchmarks/results/image-<timestamp>.json: image size, the
first (cold when build/image did not exist) and the warm build time, boot-to-ready time (QEMU
start to the agent active, seen on the console).

Everything started here is stopped by PID and every loop device and mount is released, also
when the test fails.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build/image"
IMAGE = BUILD_DIR / "out/appliance.raw"
RESULTS = REPO / "benchmarks/results"
HERE = Path(__file__).resolve().parent
OVMF = Path("/usr/share/ovmf/OVMF.fd")
BOOT_TIMEOUT_S = float(os.environ.get("APPLIANCE_IMAGE_BOOT_TIMEOUT_S", "1200"))
#: A build with nothing changed hashes the inputs and returns; it must not rebuild anything.
WARM_BUILD_LIMIT_S = 60.0
#: A cold build: mkosi's Debian bootstrap (downloads), the wheelhouse and the disk (~10 min here).
BUILD_TIMEOUT_S = 1800.0
GUEST_MEMORY_MIB = 4096
#: Free disk the test needs (GiB): with no built image (build peak, then the boot copy), and with
#: one (the boot copy and the data partition the guest fills).
COLD_DISK_GIB = 12
WARM_DISK_GIB = 6

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (mkosi: systemd-nspawn; losetup for the test copy)"
    for tool in ("mkosi", "qemu-system-x86_64", "swtpm", "sipp", "mcopy", "sfdisk", "losetup"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./build.sh test installs it)"
    if not OVMF.exists():
        return f"{OVMF} missing (package ovmf)"
    # A cold build holds the root filesystem and the disk at once (~8 GiB with the wheelhouse),
    # and the boot needs a copy of the disk beside the built one (~4 GiB each): a host without the
    # room gets a clear reason instead of a build that dies half-way and fills the disk for every
    # test after it.
    need_gib = WARM_DISK_GIB if IMAGE.exists() else COLD_DISK_GIB
    free_gib = shutil.disk_usage(REPO).free / 2**30
    tmp_free_gib = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    if min(free_gib, tmp_free_gib) < need_gib:
        return (
            f"not enough free disk for the image test: {free_gib:.1f} GiB free beside the "
            f"checkout, {tmp_free_gib:.1f} GiB in {tempfile.gettempdir()}; it needs {need_gib} GiB "
            f"({'a built image is there' if IMAGE.exists() else 'a cold build'})"
        )
    return None


def _stop(proc: subprocess.Popen[bytes], term_timeout: float = 20) -> None:
    """Stop a process this test started (by its PID), escalating to SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _kvm_runs_guests(work: Path) -> bool:
    """Whether KVM really runs a UEFI guest here, not only whether /dev/kvm opens.

    Nested KVM can open /dev/kvm and then fail on the first instructions (an MSR it cannot set,
    or "KVM internal error" with the VM stopped). Boot the firmware alone for a few seconds and
    ask QEMU over QMP whether the VM is still running.
    """
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    qmp = work / "kvm-probe.qmp"
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-cpu", "host",
            "-m", "256", "-nodefaults", "-display", "none", "-bios", str(OVMF),
            "-qmp", f"unix:{qmp},server=on,wait=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(5)
        if proc.poll() is not None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(qmp))
            f = s.makefile("rw")
            f.readline()  # greeting
            for cmd in ("qmp_capabilities", "query-status"):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                reply = json.loads(f.readline())
                while "event" in reply:
                    reply = json.loads(f.readline())
            return reply.get("return", {}).get("status") == "running"
    except (OSError, ValueError):
        return False
    finally:
        _stop(proc, 5)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fetch_https(url: str, deadline: float) -> str:
    """GET ``url`` (following redirects), retrying until the page answers or time runs out.

    The box's certificate comes from its own local CA, which the host does not know yet.
    """
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    last = ""
    end = min(deadline, time.monotonic() + 180)
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
                return str(r.read().decode("utf-8", "replace"))
        except OSError as exc:
            last = repr(exc)
            time.sleep(2)
    pytest.fail(f"the admin page did not answer at {url}: {last}")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL what is left after 20 s."""
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
            return


def _build() -> tuple[float, str]:
    started = time.monotonic()
    # Its own process group: if the test is stopped (timeout, ^C), mkosi, systemd-nspawn and apt
    # under build.sh are stopped with it, not left building and filling the disk.
    proc = subprocess.Popen(
        [str(REPO / "build.sh"), "image"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except BaseException:
        _kill_group(proc)
        raise
    elapsed = time.monotonic() - started
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout)
    assert out.returncode == 0, f"./build.sh image failed ({out.returncode}):\n{out.stdout[-6000:]}"
    return elapsed, out.stdout


def _partitions(image: Path) -> dict[str, dict[str, int]]:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return {
        p["name"]: {"offset": int(p["start"]) * sector, "size": int(p["size"]) * sector}
        for p in table["partitions"]
    }


@contextlib.contextmanager
def _mounted_partition(disk: Path, part: dict[str, int], mnt: Path) -> Iterator[Path]:
    """Attach one partition of ``disk`` to a loop device and mount it; always release both."""
    loop = subprocess.run(
        [
            "losetup", "--find", "--show",
            "--offset", str(part["offset"]), "--sizelimit", str(part["size"]), str(disk),
        ],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        mnt.mkdir(exist_ok=True)
        subprocess.run(["mount", loop, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)


@contextlib.contextmanager
def _loop(disk: Path, part: dict[str, int], *, read_only: bool = False) -> Iterator[str]:
    """Attach one partition of ``disk`` to a loop device; always detach it."""
    loop = subprocess.run(
        [
            "losetup", "--find", "--show", *(["--read-only"] if read_only else []),
            "--offset", str(part["offset"]), "--sizelimit", str(part["size"]), str(disk),
        ],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)


def _reseal(disk: Path) -> str:
    """A new dm-verity hash tree for the copy's root and its root hash in the ESP's loader entry.

    What `./build.sh image` does for the built image; the test needs it for its own additions to
    the root (and, below, to play an attacker who can write the whole disk).
    """
    parts = _partitions(disk)
    work = disk.parent
    roothash_file = work / "roothash"
    roothash_file.unlink(missing_ok=True)
    with (
        _loop(disk, parts["appliance-root"]) as data,
        _loop(disk, parts["appliance-root-verity"]) as hashes,
    ):
        subprocess.run(
            ["veritysetup", "format", "--hash=sha256", f"--root-hash-file={roothash_file}",
             data, hashes],
            check=True, capture_output=True,
        )  # fmt: skip
    roothash = roothash_file.read_text().strip()
    esp = f"{disk}@@{parts['ESP']['offset']}"
    entry = work / "appliance.conf"
    entry.write_text(
        subprocess.run(
            ["mtype", "-i", esp, "::/loader/entries/appliance.conf"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    text, n = re.subn(r"roothash=[0-9a-f]{64}", f"roothash={roothash}", entry.read_text())
    assert n == 1, "the loader entry has no roothash="
    entry.write_text(text)
    subprocess.run(
        ["mcopy", "-o", "-i", esp, str(entry), "::/loader/entries/appliance.conf"], check=True
    )
    return roothash


def _file_block(disk: Path, path: str) -> int:
    """Byte offset in ``disk`` of the first data block of ``path`` on the root file system."""
    part = _partitions(disk)["appliance-root"]
    with _loop(disk, part, read_only=True) as dev:
        block = subprocess.run(
            ["debugfs", "-R", f"bmap {path} 0", dev], capture_output=True, text=True, check=True
        ).stdout.strip()
        header = subprocess.run(
            ["dumpe2fs", "-h", dev], capture_output=True, text=True, check=True
        ).stdout
    size = re.search(r"^Block size:\s+(\d+)", header, re.MULTILINE)
    assert size and block.isdigit() and int(block) > 0, f"{path}: no block ({block!r})"
    return part["offset"] + int(block) * int(size.group(1))


def _flip_byte(disk: Path, offset: int) -> bytes:
    """Change one byte of ``disk`` at ``offset`` (an offline attacker); returns the old byte."""
    with disk.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0x01]))
    return old


def _put_byte(disk: Path, offset: int, byte: bytes) -> None:
    with disk.open("r+b") as f:
        f.seek(offset)
        f.write(byte)


@contextlib.contextmanager
def _boot(
    disk: Path, tpm_dir: Path, console: Path, accel: list[str], extra: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Start swtpm (state in ``tpm_dir``, kept between boots) and QEMU on ``disk``; stop both."""
    with contextlib.ExitStack() as stack:
        sock = tpm_dir / "sock"
        sock.unlink(missing_ok=True)
        swtpm = subprocess.Popen(
            [
                "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
                "--ctrl", f"type=unixio,path={sock}", "--flags", "startup-clear",
            ]
        )  # fmt: skip
        stack.callback(_stop, swtpm, 10)
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        assert sock.exists(), "swtpm did not start"
        qemu = subprocess.Popen(
            [
                "qemu-system-x86_64", "-machine", "q35", *accel, "-smp", "2",
                "-m", str(GUEST_MEMORY_MIB), "-nodefaults", "-display", "none",
                "-bios", str(OVMF),
                "-drive", f"file={disk},format=raw,if=virtio",
                "-chardev", f"socket,id=chrtpm,path={sock}",
                "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
                "-serial", f"file:{console}",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        stack.callback(_stop, qemu, 30)
        yield qemu


def _prepare_disk(disk: Path, sip_peer: str, slow_guest: bool) -> None:
    """A sparse copy of the image, grown for the data partition, with test-only additions."""
    work = disk.parent
    subprocess.run(["cp", "--sparse=always", str(IMAGE), str(disk)], check=True)
    parts = _partitions(disk)
    assert set(parts) == {"ESP", "appliance-root", "appliance-root-verity"}, parts
    esp = f"{disk}@@{parts['ESP']['offset']}"
    trunk = work / "trunk.toml"
    trunk.write_text(f'[sip]\nbind = "0.0.0.0:5060"\nallowed_peers = ["{sip_peer}"]\n')
    # ::/appliance already holds the kernel and initrd (build.sh).
    subprocess.run(["mcopy", "-i", esp, str(trunk), "::/appliance/trunk.toml"], check=True)
    with _mounted_partition(disk, parts["appliance-root"], work / "root") as mnt:
        # The built image must not carry the test's report unit.
        assert not (mnt / "usr/local/lib/appliance-selftest.sh").exists()
        shutil.copy(HERE / "selftest/appliance-selftest.sh", mnt / "usr/local/lib/")
        unit_dir = mnt / "etc/systemd/system"
        shutil.copy(HERE / "selftest/appliance-selftest.service", unit_dir)
        wants = unit_dir / "multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / "appliance-selftest.service").symlink_to("../appliance-selftest.service")
        if slow_guest:
            # Without KVM every instruction is emulated (TCG, ~10-30x slower): model loading and
            # the fixed-phrase synthesis before READY=1 outlast the unit's start timeout.
            dropin = unit_dir / "appliance-agent.service.d"
            dropin.mkdir(exist_ok=True)
            # NumPy's AVX2 argsort (x86-simd-sort) hit general protection faults under QEMU
            # 7.2's emulated AVX2, at random (2 of 3 boots on 2026-11-30, at the same
            # instruction; not seen on this host's CPU): the agent restarted every ~80 s and
            # never got ready. The emulated guest uses NumPy's baseline (x86-64-v2) kernels instead.
            (dropin / "test-emulated-cpu.conf").write_text(
                "# TEST ONLY: the guest CPU is emulated (no KVM)\n"
                "[Service]\nTimeoutStartSec=30min\nWatchdogSec=5min\n"
                'Environment="NPY_DISABLE_CPU_FEATURES=X86_V3 X86_V4"\n'
            )
            admin = unit_dir / "appliance-admin.service.d"
            admin.mkdir(exist_ok=True)
            (admin / "test-emulated-cpu.conf").write_text(
                "# TEST ONLY: the guest CPU is emulated (no KVM)\n"
                '[Service]\nEnvironment="NPY_DISABLE_CPU_FEATURES=X86_V3 X86_V4"\n'
            )
    _reseal(disk)  # the root changed: a new hash tree and root hash, as the builder makes them
    os.truncate(disk, disk.stat().st_size + 4 * 1024**3)  # room for the data partition


def _host_state() -> str:
    """One line on the host: load, free memory and disk (why a guest can be slow or stop)."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    disk = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    return f"host load {load}, memory available {mem}, {disk:.1f} GiB free in /tmp"


class _Console:
    """The guest's serial console file, and when it last grew (a stalled guest stops writing)."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes]) -> None:
        self.path, self.proc = path, proc
        self.started = self.grew = time.monotonic()
        self.size = -1

    def read(self) -> str:
        text = self.path.read_text(errors="replace") if self.path.exists() else ""
        if len(text) != self.size:
            self.size, self.grew = len(text), time.monotonic()
        return text

    def fail(self, why: str, text: str, lines: int = 80) -> None:
        """Fail with the reason first and last (a truncated CI log keeps one end) and the tail."""
        now = time.monotonic()
        qemu = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        summary = (
            f"{why} [{self.path.name}: {now - self.started:.0f} s into this wait, "
            f"{self.size} chars, last grew {now - self.grew:.0f} s ago; qemu {qemu}; "
            f"{_host_state()}]"
        )
        tail = "\n".join(text.splitlines()[-lines:])
        pytest.fail(f"{summary}\n--- console tail ---\n{tail}\n--- end ---\n{summary}")


def _wait_for(
    path: Path, needles: tuple[str, ...], deadline: float, proc: subprocess.Popen[bytes]
) -> str:
    """Console text once any of ``needles`` is on it; fail if QEMU exits or time runs out."""
    console = _Console(path, proc)
    while time.monotonic() < deadline:
        text = console.read()
        if any(n in text for n in needles):
            return text
        if proc.poll() is not None:
            console.fail(f"qemu exited before {needles}", text)
        time.sleep(0.5)
    console.fail(f"none of {needles} on the console by the deadline", console.read())
    raise AssertionError  # not reached: fail() raises


def _report(text: str) -> dict[str, str]:
    report: dict[str, str] = {}
    for line in text.splitlines():
        # The serial console interleaves other output (a getty's "login:" prompt) on a line.
        at = line.find("SELFTEST ")
        if at >= 0 and "=" in line[at:]:
            key, value = line[at + len("SELFTEST ") :].split("=", 1)
            report[key.strip()] = value.strip()
    return report


def _wait_for_pattern(
    path: Path, good: str, bad: tuple[str, ...], deadline: float, proc: subprocess.Popen[bytes]
) -> str:
    """Console text once the regex ``good`` matches; fail if a ``bad`` needle shows first."""
    console = _Console(path, proc)
    while time.monotonic() < deadline:
        text = console.read()
        if re.search(good, text):
            return text
        for needle in bad:
            if needle in text:
                console.fail(f"{needle!r} on the console before {good!r}", text)
        if proc.poll() is not None:
            console.fail(f"qemu exited before {good!r}", text)
        time.sleep(0.5)
    console.fail(f"{good!r} not on the console by the deadline", console.read())
    raise AssertionError  # not reached: fail() raises


def test_image_boots_and_answers_sip_options(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    test_started = time.monotonic()
    cold = not BUILD_DIR.exists()
    first_s, _ = _build()
    before = IMAGE.stat()
    warm_s, warm_log = _build()
    after = IMAGE.stat()
    allocated_mib = after.st_blocks * 512 / 2**20
    apparent_mib = after.st_size / 2**20
    parts = _partitions(IMAGE)
    print(
        f"\nimage: {apparent_mib:.0f} MiB apparent, {allocated_mib:.0f} MiB allocated "
        f"(ESP {parts['ESP']['size'] / 2**20:.0f} MiB, root "
        f"{parts['appliance-root']['size'] / 2**20:.0f} MiB, verity "
        f"{parts['appliance-root-verity']['size'] / 2**20:.0f} MiB); "
        f"{'cold' if cold else 'first'} build {first_s:.0f} s, warm build {warm_s:.1f} s"
    )
    assert "image is up to date" in warm_log, warm_log[-3000:]
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert warm_s < WARM_BUILD_LIMIT_S, "a rebuild with nothing changed must not rebuild the image"

    kvm = _kvm_runs_guests(tmp_path)
    disk = tmp_path / "disk.raw"
    try:
        _prepare_disk(disk, "10.0.2.2/32", slow_guest=not kvm)
    except BaseException:
        disk.unlink(missing_ok=True)
        raise
    tpm_dir = tmp_path / "tpm"
    tpm_dir.mkdir()
    port = _free_udp_port()
    https_port = _free_tcp_port()
    console = tmp_path / "console.log"
    control = tmp_path / "control.sock"
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]
    with contextlib.ExitStack() as outer:
        outer.callback(disk.unlink, missing_ok=True)  # ~3 GB; useless without the swtpm state
        booted = time.monotonic()
        with _boot(
            disk,
            tpm_dir,
            console,
            accel,
            [
                "-netdev",
                f"user,id=n0,hostfwd=udp:127.0.0.1:{port}-:5060,"
                f"hostfwd=tcp:127.0.0.1:{https_port}-:8443",
                "-device", "virtio-net-pci,netdev=n0",
                # ttyS1: the host's word to the self-test (the SIGSEGV step).
                "-serial", f"unix:{control},server=on,wait=off",
            ],
        ) as qemu:  # fmt: skip
            deadline = booted + BOOT_TIMEOUT_S
            _wait_for(console, ("SELFTEST agent=", "SELFTEST failed="), deadline, qemu)
            ready_s = time.monotonic() - booted
            text = _wait_for(console, ("SELFTEST done=yes",), deadline, qemu)
            report = _report(text)
            accel_name = "KVM" if kvm else "TCG"
            print(f"boot to ready (QEMU start to agent active, {accel_name}): {ready_s:.0f} s")
            print("self-test:", json.dumps(report, indent=1))
            assert "failed" not in report, f"a unit failed in the guest:\n{text[-10000:]}"
            assert report["agent"] == "active", text[-10000:]
            assert report["firstboot"] == "active"

            sipp = subprocess.run(
                [
                    "sipp", f"127.0.0.1:{port}", "-sf", str(HERE / "sip_options.xml"),
                    "-m", "1", "-i", "127.0.0.1", "-p", str(_free_udp_port()),
                    "-timeout", "60s", "-timeout_error", "-nostdin", "-trace_err",
                ],
                cwd=tmp_path, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert sipp.returncode == 0, f"no 200 to OPTIONS:\n{sipp.stdout[-3000:]}{sipp.stderr}"

            # The admin page answers over HTTPS with first boot's certificate; with no account
            # yet, the sign-in page sends the first visitor to the one-time enrolment page.
            assert report["admin"] == "active", text[-10000:]
            assert report["admin_user"] == "appliance-admin"
            page = _fetch_https(f"https://127.0.0.1:{https_port}/login", deadline)
            assert "Create the first administrator" in page, page[:2000]

            # Crash artefacts: SIGSEGV to the agent leaves no core file anywhere writable.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(control))
                s.sendall(b"segv\n")
                text = _wait_for(console, ("SELFTEST segv_done=yes",), deadline, qemu)
            report = _report(text)
            print("after SIGSEGV:", {k: v for k, v in report.items() if "segv" in k or "core" in k})
            assert report["core_files"] == "none", text[-6000:]

        # Keys made on first boot: the KEK as a TPM2-bound credential, root-only; the signing
        # key owned by the agent's user; the TLS CA key root-only; only a hash of the code.
        assert report["tpm"] == "yes"
        assert report["kek_source"] == "systemd-creds:tpm2"
        assert report["kek_cred"].startswith("600:root:")
        assert report["kek_file"] == "missing"
        assert report["signing_key"].startswith("600:appliance:")
        assert report["tls_ca_key"].startswith("600:root:")
        assert report["tls_server_crt"].startswith("644:root:")
        assert report["enrolment_hash"] == "$argon2id$"
        assert report["enrolment_notice"].startswith("600:root:")
        assert "enrolment code for the first administrator" in text
        # No default credentials: no account with a usable or empty password, no SSH server.
        assert report["usable_passwords"] == "none"
        assert report["sshd"] == "absent"
        # Read-only OS; state on the LUKS2 data partition, its key sealed to the TPM2.
        assert report["root_mount"] == "ro"
        assert report["var_mount"] == "/dev/mapper/appliance-data/ext4"
        assert report["var_crypt"] == "LUKS2"
        assert report["var_tpm2_token"] == "systemd-tpm2"
        assert report["etc_appliance"] == "ext4"
        assert report["efi_mount"] == "vfat"
        assert report["release"].startswith("releases/")
        assert report["trunk_decision"] == "applied"  # the ESP's trunk file, on first boot
        assert report["firstboot_records"] == "missing"  # on the audit log since the agent's start
        assert report["failed_units"] == "none", text[-10000:]
        # The box's own integrity: dm-verity root for the root hash on the command line, the
        # data partition sealed to the boot chain, a recovery key slot, shown once, not kept.
        assert report["root_source"] == "/dev/mapper/root"
        assert report["root_verity"] == "verified"
        assert re.fullmatch(r"[0-9a-f]{64}", report["roothash_cmdline"])
        assert report["roothash_active"] == report["roothash_cmdline"]
        assert report["var_tpm2_pcrs"] == "4+7+9+12"
        assert report["var_keyslots"] == "2"
        assert report["pcr12"] != "0" * 16, "systemd-boot did not measure the command line"
        assert report["recovery_key_file"] == "missing"
        # No core dumps, owner-only PHI files, models never fetched.
        assert report["core_pattern"] == "|/bin/false"
        assert report["suid_dumpable"] == "0"
        assert report["agent_core_limit"] == "0:0"
        assert report["agent_umask"] == "0077"
        assert report["agent_hf_offline"] == "1"
        assert report["audit_db"].startswith("600:appliance:")
        assert report["calls_db"].startswith("640:appliance:")

        # The recovery key on the console opens the data partition's LUKS2 header.
        found = re.search(r"RECOVERY KEY.*\n\s+([0-9a-f]{8}(?:-[0-9a-f]{8}){7})\s*\n", text)
        assert found, "no recovery key on the console"
        key_file = tmp_path / "recovery.key"
        key_file.write_text(found.group(1))
        key_file.chmod(0o600)
        with _loop(disk, _partitions(disk)["appliance-data"], read_only=True) as data:
            opened = subprocess.run(
                ["cryptsetup", "open", "--test-passphrase", "--key-file", str(key_file), data],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        assert opened.returncode == 0, f"the recovery key does not open /var: {opened.stderr}"

        # Offline change 1: one byte of /usr/lib/systemd/systemd on the root partition. The
        # kernel refuses the block (dm-verity) when the initrd hands over to it.
        verity_started = time.monotonic()
        offset = _file_block(disk, "/usr/lib/systemd/systemd")
        old_byte = _flip_byte(disk, offset)
        tampered = tmp_path / "console-tampered.log"
        with _boot(disk, tpm_dir, tampered, accel, []) as qemu:
            _wait_for_pattern(
                tampered, r"verity.*is corrupted", ("SELFTEST ",), time.monotonic() + 900, qemu
            )
        verity_s = time.monotonic() - verity_started
        _put_byte(disk, offset, old_byte)
        print(f"offline change to the root: dm-verity refused it ({verity_s:.0f} s)")

        # Offline change 2: a (harmless) byte of a file on the root, and the root re-sealed with
        # its new root hash in the ESP's loader entry: the OS boots, but the kernel command line
        # (PCR 12) changed, so the TPM2 does not unseal /var.
        sealed_started = time.monotonic()
        offset = _file_block(disk, "/usr/share/appliance/appliance.toml")
        _flip_byte(disk, offset + 10)
        _reseal(disk)
        resealed = tmp_path / "console-resealed.log"
        with _boot(disk, tpm_dir, resealed, accel, []) as qemu:
            _wait_for_pattern(
                resealed,
                # systemd-cryptsetup@appliance-data (the console may shorten the unit's name).
                r"FAILED.*(appliance-data|appliance\\x2ddata)",
                ("SELFTEST agent=",),
                time.monotonic() + 900,
                qemu,
            )
        sealed_s = time.monotonic() - sealed_started
        print(f"re-sealed root and boot entry: the TPM2 refused /var ({sealed_s:.0f} s)")

    wall_s = time.monotonic() - test_started
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    record = {
        "kind": "image",
        "timestamp": stamp,
        "image": {
            "apparent_mib": round(apparent_mib),
            "allocated_mib": round(allocated_mib),
            "esp_mib": round(parts["ESP"]["size"] / 2**20),
            "root_mib": round(parts["appliance-root"]["size"] / 2**20),
            "verity_mib": round(parts["appliance-root-verity"]["size"] / 2**20),
        },
        "build": {
            "first_s": round(first_s, 1),
            "first_was_cold": cold,
            "warm_s": round(warm_s, 1),
        },
        "boot": {
            "accel": "kvm" if kvm else "tcg",
            "guest_cpus": 2,
            "guest_memory_mib": GUEST_MEMORY_MIB,
            "qemu_start_to_agent_active_s": round(ready_s, 1),
            "guest_kernel_to_agent_active_s": float(report.get("agent_active_s", "nan")),
            "guest_firstboot_done_s": float(report.get("firstboot_done_s", "nan")),
        },
        "sip_options": "200",
        "tamper": {
            "root_block_changed_boot_to_verity_error_s": round(verity_s, 1),
            "root_resealed_boot_to_tpm2_refusal_s": round(sealed_s, 1),
        },
        "test_wall_s": round(wall_s, 1),
        "host_cpus": os.cpu_count(),
    }
    out = RESULTS / f"image-{stamp}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out.relative_to(REPO)}; test wall time {wall_s:.0f} s")
