"""Build the disk image, boot it in QEMU, and call it: the image's end-to-end test.

`./build.sh image` builds (or finds up to date) build/image/out/appliance.raw. The test boots a
copy of it under qemu-system-x86_64 (KVM when /dev/kvm is usable, else TCG) with UEFI firmware
(OVMF) and a software TPM (swtpm), user-mode networking forwarding a loopback UDP port to the
guest's SIP port 5060, and a PBX trunk file on the EFI partition that allows the host (10.0.2.2
under slirp). It waits for systemd to report the agent started (Type=notify: READY=1), sends a SIP
OPTIONS with sipp and expects 200, and reads a self-test report that a TEST-ONLY unit, injected
into the copy (never into the built image), prints on the serial console.

Measured and printed: image size, cold and warm build time, boot-to-ready time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "build/image/out/appliance.raw"
HERE = Path(__file__).resolve().parent
OVMF = Path("/usr/share/ovmf/OVMF.fd")
READY_MARKER = "Started appliance-agent.service"
READY_MARKER_ALT = "Started Clinic voice appliance: AI receptionist agent"
BOOT_TIMEOUT_S = float(os.environ.get("APPLIANCE_IMAGE_BOOT_TIMEOUT_S", "900"))

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (mkosi: loop devices, systemd-nspawn)"
    for tool in ("mkosi", "qemu-system-x86_64", "swtpm", "sipp", "mcopy", "sfdisk"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./build.sh test installs it)"
    if not OVMF.exists():
        return f"{OVMF} missing (package ovmf)"
    return None


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _build() -> float:
    started = time.monotonic()
    subprocess.run([str(REPO / "build.sh"), "image"], cwd=REPO, check=True, timeout=3600)
    return time.monotonic() - started


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


def _prepare_disk(work: Path, sip_peer: str) -> Path:
    """A sparse copy of the image, grown for the data partition, with test-only additions."""
    disk = work / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(IMAGE), str(disk)], check=True)
    parts = _partitions(disk)
    assert set(parts) >= {"ESP", "appliance-root"}, parts
    esp = f"{disk}@@{parts['ESP']['offset']}"
    trunk = work / "trunk.toml"
    trunk.write_text(f'[sip]\nbind = "0.0.0.0:5060"\nallowed_peers = ["{sip_peer}"]\n')
    subprocess.run(["mmd", "-i", esp, "::/appliance"], check=True)
    subprocess.run(["mcopy", "-i", esp, str(trunk), "::/appliance/trunk.toml"], check=True)
    mnt = work / "root"
    mnt.mkdir()
    root = parts["appliance-root"]
    subprocess.run(
        [
            "mount",
            "-o",
            f"loop,offset={root['offset']},sizelimit={root['size']}",
            str(disk),
            str(mnt),
        ],
        check=True,
    )
    try:
        shutil.copy(HERE / "selftest/appliance-selftest.sh", mnt / "usr/local/lib/")
        unit_dir = mnt / "etc/systemd/system"
        shutil.copy(HERE / "selftest/appliance-selftest.service", unit_dir)
        wants = unit_dir / "multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / "appliance-selftest.service").symlink_to("../appliance-selftest.service")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    os.truncate(disk, disk.stat().st_size + 4 * 1024**3)  # room for the data partition
    return disk


def _wait_for(path: Path, needle: str, deadline: float, proc: subprocess.Popen[bytes]) -> str:
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"qemu exited ({proc.returncode}) before {needle!r}:\n{text[-4000:]}")
        time.sleep(0.5)
    text = path.read_text(errors="replace") if path.exists() else ""
    pytest.fail(f"no {needle!r} on the console in time:\n{text[-6000:]}")


def test_image_boots_and_answers_sip_options(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cold = not IMAGE.exists()
    first_s = _build()
    warm_s = _build()
    size = IMAGE.stat()
    print(
        f"\nimage: {size.st_size / 2**20:.0f} MiB apparent, "
        f"{size.st_blocks * 512 / 2**20:.0f} MiB allocated; "
        f"{'cold' if cold else 'first (inputs possibly unchanged)'} build {first_s:.0f} s, "
        f"warm build {warm_s:.1f} s"
    )
    assert warm_s < 120, "a rebuild with nothing changed must not rebuild the image"

    disk = _prepare_disk(tmp_path, "10.0.2.2/32")
    tpm_dir = tmp_path / "tpm"
    tpm_dir.mkdir()
    swtpm = subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
            "--ctrl", f"type=unixio,path={tpm_dir}/sock", "--flags", "startup-clear",
        ]
    )  # fmt: skip
    for _ in range(50):
        if (tpm_dir / "sock").exists():
            break
        time.sleep(0.1)
    port = _free_udp_port()
    console = tmp_path / "console.log"
    accel = ["-accel", "kvm", "-cpu", "host"] if _kvm_usable() else ["-accel", "tcg", "-cpu", "max"]
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64", "-machine", "q35", *accel, "-smp", "2", "-m", "3072",
            "-nodefaults", "-display", "none", "-bios", str(OVMF),
            "-drive", f"file={disk},format=raw,if=virtio",
            "-netdev", f"user,id=n0,hostfwd=udp:127.0.0.1:{port}-:5060",
            "-device", "virtio-net-pci,netdev=n0",
            "-chardev", f"socket,id=chrtpm,path={tpm_dir}/sock",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
            "-serial", f"file:{console}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    booted = time.monotonic()
    try:
        deadline = booted + BOOT_TIMEOUT_S
        text = _wait_for(console, "SELFTEST done=yes", deadline, qemu)
        ready = [m for m in (READY_MARKER, READY_MARKER_ALT) if m in text]
        assert ready, f"agent never reported ready:\n{text[-6000:]}"
        ready_s = time.monotonic() - booted
        report = dict(
            line.split(" ", 1)[1].strip().split("=", 1)
            for line in text.splitlines()
            if line.startswith("SELFTEST ")
        )
        print(f"boot to ready (agent active, self-test printed): {ready_s:.0f} s")
        print("self-test:", json.dumps(report, indent=1))

        assert report["agent"] == "active"
        assert report["firstboot"] == "active"
        # Keys made on first boot: the KEK as a TPM2-bound credential, root-only; the signing
        # key owned by the agent's user; the TLS CA key root-only; only a hash of the code.
        assert report["tpm"] == "yes"
        assert report["kek_source"] == "systemd-creds:tpm2"
        assert report["kek_cred"].startswith("600:root:")
        assert report["signing_key"].startswith("600:appliance:")
        assert report["tls_ca_key"].startswith("600:root:")
        assert report["tls_server_crt"].startswith("644:root:")
        assert report["enrolment_hash"] == "$argon2id$"
        assert report["enrolment_notice"].startswith("600:root:")
        assert "enrolment code for the first administrator" in text
        # No default credentials, read-only OS, state on the data partition.
        assert report["usable_passwords"] == "none"
        assert report["sshd"] == "absent"
        assert report["root_mount"] == "ro"
        assert report["var_mount"].endswith("/ext4")
        assert report["release"].startswith("releases/")

        sipp = subprocess.run(
            [
                "sipp", f"127.0.0.1:{port}", "-sf", str(HERE / "sip_options.xml"),
                "-m", "1", "-i", "127.0.0.1", "-p", str(_free_udp_port()),
                "-timeout", "20s", "-timeout_error", "-nostdin", "-trace_err",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sipp.returncode == 0, f"no 200 to OPTIONS:\n{sipp.stdout[-3000:]}{sipp.stderr}"
    finally:
        qemu.terminate()
        try:
            qemu.wait(timeout=30)
        except subprocess.TimeoutExpired:
            qemu.kill()
        swtpm.terminate()
        swtpm.wait(timeout=10)
