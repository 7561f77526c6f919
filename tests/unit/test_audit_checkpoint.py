"""Checkpoints in Ed25519 signed notes, and the signing key file."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.audit import merkle
from appliance.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    KeyFileError,
    key_id,
    load_or_create_signing_key,
    open_note,
    public_key_bytes,
    sign_note,
)

ORIGIN = "appliance.example/audit"
URLSAFE_ROOT = base64.urlsafe_b64encode(bytes(range(224, 256))).decode()
ROOT = merkle.root([merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b"), merkle.leaf_hash(b"c")])

# Golden vector from the golang.org/x/mod/sumdb/note package documentation.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNED = (
    GO_TEXT + "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def checkpoint() -> Checkpoint:
    return Checkpoint(origin=ORIGIN, size=3, root=ROOT)


def test_body_format(checkpoint: Checkpoint) -> None:
    assert checkpoint.body() == f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()}\n"
    assert Checkpoint.parse(checkpoint.body()) == checkpoint
    empty = Checkpoint(origin=ORIGIN, size=0, root=merkle.EMPTY_ROOT)
    assert empty.body() == f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    assert Checkpoint.parse(empty.body()) == empty


def test_matches_go_note_golden_vector() -> None:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert seed[0] == 1
    go_key = Ed25519PrivateKey.from_private_bytes(seed[1:])
    assert key_id("PeterNeumann", go_key).hex() == "c74f20a3"
    assert (
        base64.b64encode(b"\x01" + public_key_bytes(go_key)).decode() == (GO_VKEY.split("+", 2)[2])
    )
    assert sign_note(GO_TEXT, go_key, "PeterNeumann") == GO_SIGNED
    # The signature verifies; the body just is not a checkpoint.
    with pytest.raises(CheckpointError, match="malformed body"):
        open_note(GO_SIGNED, go_key.public_key(), "PeterNeumann")


def test_round_trip(key: Ed25519PrivateKey, checkpoint: Checkpoint) -> None:
    note = sign_note(checkpoint.body(), key, ORIGIN)
    assert note.startswith(checkpoint.body() + "\n\u2014 " + ORIGIN + " ")
    assert note.endswith("\n")
    sig = base64.b64decode(note.rsplit(" ", 1)[1])
    assert len(sig) == 4 + 64
    assert sig[:4] == key_id(ORIGIN, key.public_key())
    assert open_note(note, key.public_key(), ORIGIN) == checkpoint


def test_other_signatures_are_ignored(key: Ed25519PrivateKey, checkpoint: Checkpoint) -> None:
    witness = Ed25519PrivateKey.generate()
    note = sign_note(checkpoint.body(), key, ORIGIN)
    cosigned_line = sign_note(checkpoint.body(), witness, "witness.example").split("\n\n")[1]
    assert open_note(note + cosigned_line, key.public_key(), ORIGIN) == checkpoint
    cosigned_first = checkpoint.body() + "\n" + cosigned_line + note.split("\n\n")[1]
    assert open_note(cosigned_first, key.public_key(), ORIGIN) == checkpoint


@pytest.mark.parametrize(
    "edit",
    [
        lambda body: body.replace(ORIGIN, "other.example/audit"),
        lambda body: body.replace("\n3\n", "\n4\n"),
        lambda body: body.replace(
            base64.b64encode(ROOT).decode(), base64.b64encode(merkle.EMPTY_ROOT).decode()
        ),
    ],
    ids=["origin", "size", "root"],
)
def test_tampered_body_rejected(key: Ed25519PrivateKey, checkpoint: Checkpoint, edit) -> None:
    note = sign_note(checkpoint.body(), key, ORIGIN)
    body, sigs = note.split("\n\n")
    tampered = edit(body + "\n") + "\n" + sigs
    assert tampered != note
    with pytest.raises(CheckpointError, match="bad signature"):
        open_note(tampered, key.public_key(), ORIGIN)


def test_tampered_signature_rejected(key: Ed25519PrivateKey, checkpoint: Checkpoint) -> None:
    note = sign_note(checkpoint.body(), key, ORIGIN)
    head, sig64 = note.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(sig64))
    raw[10] ^= 1
    with pytest.raises(CheckpointError, match="bad signature"):
        open_note(f"{head} {base64.b64encode(bytes(raw)).decode()}\n", key.public_key(), ORIGIN)
    raw = bytearray(base64.b64decode(sig64))
    raw[0] ^= 1  # key id
    with pytest.raises(CheckpointError, match="unknown key"):
        open_note(f"{head} {base64.b64encode(bytes(raw)).decode()}\n", key.public_key(), ORIGIN)


def test_wrong_key_or_name_rejected(key: Ed25519PrivateKey, checkpoint: Checkpoint) -> None:
    note = sign_note(checkpoint.body(), key, ORIGIN)
    with pytest.raises(CheckpointError, match="unknown key"):
        open_note(note, Ed25519PrivateKey.generate().public_key(), ORIGIN)
    with pytest.raises(CheckpointError, match="unknown key"):
        open_note(note, key.public_key(), "other.example/audit")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("origin\n3\nAAAA\n", "no signature line"),
        ("origin\n3\nAAAA\n\n", "no signature line"),
        ("origin\n3\nAAAA\n\n- origin AAAAAAAA\n", "em dash"),
        ("origin\n3\nAAAA\n\n\u2014 origin AAAAAAAA", "end with a newline"),
        ("origin\n3\nAAAA\n\n\u2014 origin\n", "bad signature line"),
        ("origin\n3\nAAAA\n\n\u2014 origin not*base64\n", "base64"),
        ("origin\n3\nAAAA\n\n\u2014 origin AAAA\n", "too short"),
        ("origin\r\n3\nAAAA\n\n\u2014 origin AAAAAAAA\n", "control character"),
    ],
)
def test_malformed_notes(key: Ed25519PrivateKey, text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        open_note(text, key.public_key(), "origin")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "end with a newline"),
        (f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()}", "end with a newline"),
        (f"{ORIGIN}\n3\n", "3 lines"),
        (f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode()}\nextension\n", "3 lines"),
        (f"\n3\n{base64.b64encode(ROOT).decode()}\n", "origin"),
        (f"{ORIGIN}\n-3\n{base64.b64encode(ROOT).decode()}\n", "decimal"),
        (f"{ORIGIN}\n+3\n{base64.b64encode(ROOT).decode()}\n", "decimal"),
        (f"{ORIGIN}\n03\n{base64.b64encode(ROOT).decode()}\n", "leading zeros"),
        (f"{ORIGIN}\n\u0663\n{base64.b64encode(ROOT).decode()}\n", "decimal"),
        (f"{ORIGIN}\nthree\n{base64.b64encode(ROOT).decode()}\n", "decimal"),
        (f"{ORIGIN}\n3\n{base64.b64encode(ROOT).decode().rstrip('=')}\n", "base64"),
        (f"{ORIGIN}\n3\n{URLSAFE_ROOT}\n", "base64"),
        (f"{ORIGIN}\n3\n{base64.b64encode(ROOT[:31]).decode()}\n", "32 bytes"),
    ],
)
def test_parse_errors(body: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.parse(body)


def test_malformed_body_in_signed_note(key: Ed25519PrivateKey) -> None:
    note = sign_note(f"{ORIGIN}\n03\n{base64.b64encode(ROOT).decode()}\n", key, ORIGIN)
    with pytest.raises(CheckpointError, match="malformed body.*leading zeros"):
        open_note(note, key.public_key(), ORIGIN)


def test_invalid_checkpoint_values() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(origin="", size=1, root=ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(origin="a\nb", size=1, root=ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(origin=ORIGIN, size=-1, root=ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint(origin=ORIGIN, size=1, root=b"short")


def test_sign_note_rejects_bad_input(key: Ed25519PrivateKey, checkpoint: Checkpoint) -> None:
    with pytest.raises(CheckpointError, match="newline"):
        sign_note("no newline", key, ORIGIN)
    with pytest.raises(CheckpointError, match="blank lines"):
        sign_note("a\n\nb\n", key, ORIGIN)
    for name in ("", "has space", "has+plus"):
        with pytest.raises(CheckpointError, match="key name"):
            sign_note(checkpoint.body(), key, name)


# --- key file -----------------------------------------------------------------------------


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "checkpoint.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pem"]  # no temp left over
    again = load_or_create_signing_key(path)
    assert public_key_bytes(again) == public_key_bytes(key)
    note = sign_note(Checkpoint(ORIGIN, 3, ROOT).body(), again, ORIGIN)
    assert open_note(note, key.public_key(), ORIGIN).size == 3


def test_raw_32_byte_key_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    path = tmp_path / "raw.key"
    path.write_bytes(raw)
    path.chmod(0o600)
    assert public_key_bytes(load_or_create_signing_key(path)) == public_key_bytes(key)


def test_world_readable_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pem"
    load_or_create_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_signing_key(path)


def test_garbage_and_non_ed25519_key_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="32 raw bytes"):
        load_or_create_signing_key(path)
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(ec_pem)
    with pytest.raises(KeyFileError, match="not Ed25519"):
        load_or_create_signing_key(path)


def test_symlinked_key_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.pem"
    load_or_create_signing_key(target)
    link = tmp_path / "link.pem"
    link.symlink_to(target)
    with pytest.raises(KeyFileError):
        load_or_create_signing_key(link)
