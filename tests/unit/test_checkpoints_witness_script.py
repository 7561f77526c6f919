"""The Ansible ``checkpoints`` role's ``witness.py``, run as the controller runs it (a subprocess).

It checks every checkpoint signature with the public key pinned at the first collection, and
refuses a note signed by another key, a swapped box key, a tree that shrank and a rewritten file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.audit import envelope
from appliance.audit.checkpoint import (
    Checkpoint,
    load_or_create_signing_key,
    public_key_bytes,
    sign_note,
)
from appliance.audit.service import KEY_NAME
from appliance.audit.store import AuditLog, Entry

SCRIPT = Path(__file__).resolve().parents[2] / "ansible/roles/checkpoints/files/witness.py"


class Box:
    """A real audit log with its checkpoint file, and the box's public key file."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.signing = load_or_create_signing_key(root / "signing.key")
        self.pub = root / "signing.pub"
        self.pub.write_text(public_key_bytes(self.signing).hex() + "\n")
        self.checkpoints = root / "checkpoints.log"
        self.log = AuditLog(
            root / "audit.sqlite",
            envelope.load_kek(root / "kek", create=True),
            self.signing,
            origin="test/audit",
            checkpoint_file=self.checkpoints,
            key_name=KEY_NAME,
        )

    def grow(self, n: int = 2) -> None:
        for i in range(n):
            self.log.append([Entry("ConfigChanged", meta={"i": i})])
        self.log.checkpoint()


def collect(host_dir: Path, box: Box, data: bytes | None = None, pub: Path | None = None):  # noqa: ANN201
    """What the role does: fetch the file (and the .pub), run witness.py on the controller."""
    host_dir.mkdir(parents=True, exist_ok=True)
    incoming = host_dir / "incoming.log"
    incoming.write_bytes(box.checkpoints.read_bytes() if data is None else data)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(host_dir), str(incoming), "--enrol", str(pub or box.pub)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.returncode, json.loads(out.stdout)


@pytest.fixture()
def box(tmp_path: Path) -> Box:
    b = Box(tmp_path / "box")
    b.grow()
    return b


def test_first_collection_pins_the_key_and_later_ones_append(tmp_path: Path, box: Box) -> None:
    host = tmp_path / "witness" / "box1"
    rc, report = collect(host, box)
    assert rc == 0 and report["ok"] and report["added"] == 1, report
    pinned = (host / "audit-signing.pub").read_text().strip()
    assert pinned == public_key_bytes(box.signing).hex()
    box.grow()
    rc, report = collect(host, box)
    assert rc == 0 and report["added"] == 1
    assert (host / "checkpoints.log").read_bytes() == box.checkpoints.read_bytes()
    rc, report = collect(host, box)
    assert rc == 0 and not report["changed"]


def test_a_note_signed_by_another_key_is_refused(tmp_path: Path, box: Box) -> None:
    host = tmp_path / "witness" / "box1"
    assert collect(host, box)[0] == 0
    before = (host / "checkpoints.log").read_bytes()
    stranger = Ed25519PrivateKey.generate()
    cp = Checkpoint("test/audit", box.log.size + 5, b"\x11" * 32)
    forged = json.dumps({"size": cp.size, "note": sign_note(cp.body(), stranger, KEY_NAME)})
    rc, report = collect(host, box, box.checkpoints.read_bytes() + forged.encode() + b"\n")
    assert rc == 1 and not report["ok"]
    assert "no signature by 'appliance-audit' with the pinned public key" in report["error"]
    assert (host / "checkpoints.log").read_bytes() == before
    assert list((host / "rejected").iterdir())


def test_a_flipped_signature_byte_is_refused(tmp_path: Path, box: Box) -> None:
    host = tmp_path / "witness" / "box1"
    line = json.loads(box.checkpoints.read_text().splitlines()[-1])
    note = line["note"]
    body, sig = note.rsplit(" ", 1)
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    bad = json.dumps({"size": line["size"], "note": f"{body} {flipped}"}) + "\n"
    rc, report = collect(host, box, bad.encode())
    assert rc == 1
    assert "bad signature by 'appliance-audit'" in report["error"]
    assert not (host / "checkpoints.log").exists()


def test_a_shrinking_tree_is_refused(tmp_path: Path, box: Box) -> None:
    host = tmp_path / "witness" / "box1"
    box.grow()
    assert collect(host, box)[0] == 0
    before = (host / "checkpoints.log").read_bytes()
    # A validly signed note (the box's own key) for a smaller tree appended after a larger one.
    small = Checkpoint("test/audit", 1, b"\x22" * 32)
    note = sign_note(small.body(), box.signing, KEY_NAME)
    data = before + (json.dumps({"size": 1, "note": note}) + "\n").encode()
    rc, report = collect(host, box, data)
    assert rc == 1 and "went back" in report["error"]
    # And a file that lost its last line.
    rc, report = collect(host, box, b"".join(before.splitlines(keepends=True)[:-1]))
    assert rc == 1 and "shrank" in report["error"]
    assert (host / "checkpoints.log").read_bytes() == before


def test_a_swapped_box_key_is_refused(tmp_path: Path, box: Box) -> None:
    host = tmp_path / "witness" / "box1"
    assert collect(host, box)[0] == 0
    other = Ed25519PrivateKey.generate()
    fake_pub = tmp_path / "other.pub"
    fake_pub.write_text(public_key_bytes(other).hex() + "\n")
    rc, report = collect(host, box, pub=fake_pub)
    assert rc == 1 and "pinned at enrolment" in report["error"]
    assert (host / "audit-signing.pub").read_text().strip() == public_key_bytes(box.signing).hex()


SERVER = SCRIPT.with_name("witness_server.py")


@pytest.fixture()
def witness_server(tmp_path: Path):  # noqa: ANN201
    root = tmp_path / "witness-srv"
    root.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), str(root), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        yield root, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_box_without_ssh_pushes_to_the_witness_server(witness_server, tmp_path: Path) -> None:  # noqa: ANN001
    from appliance.app.witness import WitnessPush
    from appliance.audit.verify import verify

    root, base = witness_server
    b = Box(tmp_path / "box2")
    b.grow()
    # Not enrolled yet: refused, nothing recorded as received.
    assert WitnessPush(f"{base}/box2", b.checkpoints).push_new() == 0
    (root / "box2").mkdir()
    (root / "box2" / "audit-signing.pub").write_text(b.pub.read_text())  # enrolment, off the box
    push = WitnessPush(f"{base}/box2", b.checkpoints)
    assert push.push_new() == 1
    b.grow()
    assert push.push_new() == 1
    copy = root / "box2" / "checkpoints.log"
    assert copy.read_bytes() == b.checkpoints.read_bytes()
    notes = [json.loads(line)["note"] for line in copy.read_text().splitlines()]
    report = verify(
        b.log.path,
        b.signing.public_key(),
        origin="test/audit",
        extra_notes=notes,
        key_name=KEY_NAME,
    )
    assert report.ok, report.summary()
    # A note signed by another key, and a tree that shrank, are refused (409), copy unchanged.
    stranger = Ed25519PrivateKey.generate()
    forged = Checkpoint("test/audit", b.log.size + 1, b"\x33" * 32)
    lines = [
        json.dumps({"size": forged.size, "note": sign_note(forged.body(), stranger, KEY_NAME)})
    ]
    small = Checkpoint("test/audit", 1, b"\x44" * 32)
    lines.append(json.dumps({"size": 1, "note": sign_note(small.body(), b.signing, KEY_NAME)}))
    for line in lines:
        bad = tmp_path / "bad.log"
        bad.write_text(line + "\n")
        assert WitnessPush(f"{base}/box2", bad).push_new() == 0
    assert copy.read_bytes() == b.checkpoints.read_bytes()
