"""Attacks on ``audit verify`` by someone who can write the box's files but lacks the signing key.

Issue 14: the per-row roots carry no key, so deleting the checkpoints and recomputing the roots
must fail; so must an old unsigned tail, a log with no checkpoint at all, and a public key swapped
on the box when the verifier is given the key pinned at enrolment.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from appliance.audit.checkpoint import (
    Checkpoint,
    load_or_create_signing_key,
    public_key_bytes,
    sign_note,
)
from appliance.audit.merkle import TreeBuilder, leaf_hash
from appliance.audit.record import decode
from appliance.audit.service import KEY_NAME, open_audit, public_key_path, verify_from_settings
from appliance.audit.store import AuditError, AuditLog, Entry
from appliance.cli import main
from appliance.config import load_settings
from appliance.config.settings import AuditSettings

HOUR = 3600.0
LATER = 2 * HOUR  # past the default checkpoint_max_age_s of one hour


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(
        "\n".join(
            [
                "[audit]",
                'db = "audit/audit.sqlite"',
                'kek_file = "keys/kek"',
                'signing_key_file = "keys/signing.key"',
                'checkpoint_file = "audit/checkpoints.log"',
                'origin = "test/audit"',
                "",
            ]
        )
    )
    return path


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    return _config(tmp_path)


@pytest.fixture()
def settings(config: Path) -> AuditSettings:
    return load_settings(config).audit


def _call(log: AuditLog, call: str, t: float) -> None:
    log.append([Entry("CallAnswered", call, meta={"codec": "PCMU"}, t=t)])
    log.append([Entry("TurnEnded", call, content={"user_text": "I need a visit"}, t=t + 1)])
    log.append([Entry("CallEnded", call, meta={"disposition": "caller_hangup"}, t=t + 2)])


def _pinned_copy(settings: AuditSettings, tmp_path: Path) -> Path:
    """What a witness keeps at enrolment: a copy of the box's public key, off the box."""
    witness = tmp_path / "witness"
    witness.mkdir(exist_ok=True)
    return Path(shutil.copy(public_key_path(settings), witness / "audit-signing.pub"))


def _rewrite(db: Path, keep: list[bytes]) -> None:
    """The forger's step: replace the records, renumbered, with recomputed per-row roots."""
    tree = TreeBuilder()
    rows = []
    for idx, data in enumerate(keep):
        tree.append(leaf_hash(data))
        rows.append((idx, data, tree.root()))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM records")
        conn.executemany("INSERT INTO records (idx, data, root) VALUES (?, ?, ?)", rows)
    conn.close()


def _records(db: Path) -> list[bytes]:
    conn = sqlite3.connect(db)
    rows = [bytes(r[0]) for r in conn.execute("SELECT data FROM records ORDER BY idx")]
    conn.close()
    return rows


def test_a_covered_log_verifies_now_and_later(settings: AuditSettings) -> None:
    log = open_audit(settings)
    _call(log, "c1", time.time())
    log.checkpoint()
    log.close()
    assert verify_from_settings(settings).ok
    report = verify_from_settings(settings, now=time.time() + LATER)
    assert report.ok, report.summary()


def test_no_checkpoint_at_all_fails_once_records_are_old(settings: AuditSettings) -> None:
    log = open_audit(settings)
    _call(log, "c1", time.time())
    log.close()
    assert verify_from_settings(settings).ok  # fresh: the agent signs within its interval
    report = verify_from_settings(settings, now=time.time() + LATER)
    assert not report.ok
    assert report.first_bad_index == 0
    assert "no signed checkpoint at all" in (report.problem or "")


def test_an_old_unsigned_tail_fails(settings: AuditSettings) -> None:
    log = open_audit(settings)
    start = time.time() - 3 * HOUR
    _call(log, "c1", start)
    covered = log.checkpoint().size
    _call(log, "c2", start + 60)  # three hours old, never signed
    log.close()
    report = verify_from_settings(settings)
    assert not report.ok
    assert report.first_bad_index == covered
    assert f"covers only {covered} record(s)" in (report.problem or "")


def test_deleted_checkpoints_and_recomputed_roots_fail(
    settings: AuditSettings, tmp_path: Path
) -> None:
    log = open_audit(settings)
    old = time.time() - 5 * HOUR
    for n in range(3):
        _call(log, f"c{n}", old + n * 60)
        log.checkpoint()
    log.close()
    witness = tmp_path / "witness-checkpoints.log"
    shutil.copy(settings.checkpoint_file, witness)  # collected earlier by the fleet tooling
    assert verify_from_settings(settings, witness=witness).ok

    # Remove call c1 (its three records), recompute every root, drop all checkpoints.
    data = _records(settings.db)
    keep = [d for d in data if decode(d).call_id != "c1"]
    assert len(keep) < len(data)
    _rewrite(settings.db, keep)
    conn = sqlite3.connect(settings.db)
    with conn:
        conn.execute("DELETE FROM checkpoints")
    conn.close()
    settings.checkpoint_file.unlink()

    report = verify_from_settings(settings)
    assert not report.ok
    # Record 0 is the fresh KeyCreated of the first start; record 1 is the first old one.
    assert report.first_bad_index == 1 and "no signed checkpoint" in (report.problem or "")
    # The witness copy catches it too, even at a time when the records would still be fresh.
    report = verify_from_settings(settings, witness=witness, now=old)
    assert not report.ok and report.first_bad_index is not None


def test_recomputed_roots_with_fresh_timestamps_fail_against_the_witness(
    settings: AuditSettings, tmp_path: Path
) -> None:
    log = open_audit(settings)
    _call(log, "c1", time.time() - 4 * HOUR)
    log.checkpoint()
    log.close()
    witness = tmp_path / "witness-checkpoints.log"
    shutil.copy(settings.checkpoint_file, witness)
    data = _records(settings.db)
    _rewrite(settings.db, data[:-1])  # drop the last record; nothing else old is left unsigned
    conn = sqlite3.connect(settings.db)
    with conn:
        conn.execute("DELETE FROM checkpoints")
    conn.close()
    settings.checkpoint_file.unlink()
    report = verify_from_settings(settings, witness=witness)
    assert not report.ok
    assert "truncated" in (report.problem or "")


def test_a_public_key_swapped_on_the_box_fails_against_the_pinned_one(
    settings: AuditSettings, tmp_path: Path
) -> None:
    log = open_audit(settings)
    _call(log, "c1", time.time() - 3 * HOUR)
    log.checkpoint()
    log.close()
    pinned = _pinned_copy(settings, tmp_path)

    # The forger drops the call's records, makes a key of their own, puts it (and its public
    # half) where the box keeps them, and signs a checkpoint over the forged tree.
    data = _records(settings.db)
    keep = data[:1]
    _rewrite(settings.db, keep)
    forged_key = Ed25519PrivateKey.generate()
    tree = TreeBuilder()
    for d in keep:
        tree.append(leaf_hash(d))
    note = sign_note(Checkpoint("test/audit", tree.size, tree.root()).body(), forged_key, KEY_NAME)
    conn = sqlite3.connect(settings.db)
    with conn:
        conn.execute("DELETE FROM checkpoints")
        conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?)", [tree.size, note, time.time()])
    conn.close()
    settings.checkpoint_file.write_text(json.dumps({"size": tree.size, "note": note}) + "\n")
    settings.signing_key_file.write_bytes(
        forged_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    public_key_path(settings).write_text(public_key_bytes(forged_key).hex() + "\n")

    # The box's own copy of the key now vouches for the forgery; the pinned copy does not.
    assert verify_from_settings(settings).ok
    report = verify_from_settings(settings, public_key_file=pinned)
    assert not report.ok
    assert "signature" in (report.problem or "")


def test_open_audit_refuses_a_signing_key_that_is_not_the_pinned_one(
    settings: AuditSettings,
) -> None:
    open_audit(settings).close()
    pub = public_key_path(settings)
    before = pub.read_bytes()
    other = Ed25519PrivateKey.generate()
    settings.signing_key_file.write_bytes(
        other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    with pytest.raises(AuditError, match="does not match the public key pinned"):
        open_audit(settings)
    assert pub.read_bytes() == before  # never re-pinned from the present signing key


def test_open_audit_never_recreates_a_missing_pinned_key_beside_a_log(
    settings: AuditSettings,
) -> None:
    open_audit(settings).close()
    public_key_path(settings).unlink()
    with pytest.raises(AuditError, match="missing beside an existing audit log"):
        open_audit(settings)
    assert not public_key_path(settings).exists()


def test_first_start_pins_the_key_once(settings: AuditSettings) -> None:
    assert not settings.db.exists()
    log = open_audit(settings)
    log.close()
    pub = public_key_path(settings)
    assert pub.stat().st_mode & 0o777 == 0o644
    signing = load_or_create_signing_key(settings.signing_key_file)
    assert bytes.fromhex(pub.read_text().strip()) == public_key_bytes(signing)


def test_cli_verify_uses_the_pinned_key_given(
    settings: AuditSettings, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = open_audit(settings)
    _call(log, "c1", time.time())
    log.checkpoint()
    log.close()
    pinned = _pinned_copy(settings, tmp_path)
    assert main(["audit", "--config", str(config), "verify", "--public-key", str(pinned)]) == 0
    assert "OK" in capsys.readouterr().out
    stranger = tmp_path / "stranger.pub"
    stranger.write_text(public_key_bytes(Ed25519PrivateKey.generate()).hex() + "\n")
    assert main(["audit", "--config", str(config), "verify", "--public-key", str(stranger)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_an_unsigned_tail_dated_in_the_future_fails(settings: AuditSettings) -> None:
    """A forger cannot dodge the coverage rule by dating rewritten records far ahead."""
    log = open_audit(settings)
    _call(log, "c1", time.time())
    covered = log.checkpoint().size
    _call(log, "c2", time.time() + 30 * 86400)
    log.close()
    report = verify_from_settings(settings)
    assert not report.ok
    assert report.first_bad_index == covered and "in the future" in (report.problem or "")
    # A tail a little ahead (clock skew within the limit) is still fine while it is fresh.
    log = open_audit(settings)
    log.checkpoint()
    _call(log, "c3", time.time() + 60)
    log.close()
    assert verify_from_settings(settings).ok
