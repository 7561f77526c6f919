"""Audit log: encryption at rest, durable appends, verification and every tamper case."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.audit import envelope
from appliance.audit.checkpoint import load_or_create_signing_key, sign_note
from appliance.audit.store import AuditError, AuditLog, Entry
from appliance.audit.verify import verify

SECRET_WORDS = ["Margaret Hamilton", "1982-03-04", "4111111111111111"]


@pytest.fixture()
def keys(tmp_path: Path):  # noqa: ANN201
    kek = envelope.load_kek(tmp_path / "keys" / "kek", create=True)
    signing = load_or_create_signing_key(tmp_path / "keys" / "signing.key")
    return kek, signing


def write_log(tmp_path: Path, keys, calls: int = 3) -> AuditLog:  # noqa: ANN001
    kek, signing = keys
    log = AuditLog(
        tmp_path / "audit.sqlite",
        kek,
        signing,
        origin="test/audit",
        checkpoint_file=tmp_path / "checkpoints.log",
    )
    for c in range(calls):
        call = f"call{c}"
        log.append([Entry("CallAnswered", call, meta={"codec": "PCMU"})])
        log.append(
            [
                Entry("TurnEnded", call, content={"user_text": f"my name is {SECRET_WORDS[0]}"}),
                Entry(
                    "DtmfReceived",
                    call,
                    meta={"method": "rfc4733"},
                    content={"digit": SECRET_WORDS[2]},
                ),
                Entry(
                    "AgentSpoke",
                    call,
                    meta={"interrupted": False},
                    content={"text": f"born {SECRET_WORDS[1]}"},
                ),
            ]
        )
        log.append([Entry("CallEnded", call, meta={"disposition": "caller_hangup"})])
        log.checkpoint()
    return log


def check(db: Path, keys, **kw):  # noqa: ANN001, ANN201
    return verify(db, keys[1].public_key(), origin="test/audit", **kw)


def test_clean_log_verifies_and_holds_no_clear_content(tmp_path: Path, keys) -> None:  # noqa: ANN001
    log = write_log(tmp_path, keys)
    assert log.size == 15
    report = check(tmp_path / "audit.sqlite", keys)
    assert report.ok, report.summary()
    assert report.size == 15 and report.checkpoints == 3
    log.close()
    for f in tmp_path.glob("audit.sqlite*"):
        blob = f.read_bytes()
        for word in SECRET_WORDS:
            assert word.encode() not in blob, f"{word} in clear in {f.name}"


def test_export_decrypts_one_call(tmp_path: Path, keys) -> None:  # noqa: ANN001
    log = write_log(tmp_path, keys)
    records = log.export_call("call1")
    assert [r["kind"] for r in records] == [
        "CallAnswered",
        "TurnEnded",
        "DtmfReceived",
        "AgentSpoke",
        "CallEnded",
    ]
    assert records[1]["content"]["user_text"].endswith(SECRET_WORDS[0])
    assert records[2]["content"]["digit"] == SECRET_WORDS[2]


def test_reopen_continues_the_same_tree(tmp_path: Path, keys) -> None:  # noqa: ANN001
    write_log(tmp_path, keys, calls=1).close()
    log = AuditLog(
        tmp_path / "audit.sqlite",
        keys[0],
        keys[1],
        origin="test/audit",
        checkpoint_file=tmp_path / "checkpoints.log",
    )
    assert log.size == 5
    assert log.append([Entry("AdminLogin", meta={"user": "it-admin"})]) == [5]
    log.checkpoint()
    assert check(tmp_path / "audit.sqlite", keys).ok


def tamper(db: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db)
    conn.execute(sql, args)
    conn.commit()
    conn.close()


def test_flipped_byte_is_found_at_its_index(tmp_path: Path, keys) -> None:  # noqa: ANN001
    write_log(tmp_path, keys).close()
    db = tmp_path / "audit.sqlite"
    data = bytearray(
        sqlite3.connect(db).execute("SELECT data FROM records WHERE idx=7").fetchone()[0]
    )
    data[len(data) // 2] ^= 0x01
    tamper(db, "UPDATE records SET data=? WHERE idx=7", bytes(data))
    report = check(db, keys)
    assert not report.ok and report.first_bad_index == 7, report.summary()


def test_deleted_row_is_found(tmp_path: Path, keys) -> None:  # noqa: ANN001
    write_log(tmp_path, keys).close()
    db = tmp_path / "audit.sqlite"
    tamper(db, "DELETE FROM records WHERE idx=4")
    report = check(db, keys)
    assert not report.ok and report.first_bad_index == 4 and "missing" in str(report.problem)


def test_truncated_tail_is_found(tmp_path: Path, keys) -> None:  # noqa: ANN001
    write_log(tmp_path, keys).close()
    db = tmp_path / "audit.sqlite"
    tamper(db, "DELETE FROM records WHERE idx >= 12")
    report = check(db, keys)
    assert not report.ok and report.first_bad_index == 12 and "truncated" in str(report.problem)


def test_truncation_with_checkpoints_removed_is_caught_by_the_witness(
    tmp_path: Path,
    keys,  # noqa: ANN001
) -> None:
    import json

    write_log(tmp_path, keys).close()
    db = tmp_path / "audit.sqlite"
    tamper(db, "DELETE FROM records WHERE idx >= 12")
    tamper(db, "DELETE FROM checkpoints WHERE size > 10")
    witness = [
        json.loads(x)["note"]
        for x in (tmp_path / "checkpoints.log").read_text().split("\n")
        if x.strip()
    ]
    report = check(db, keys, extra_notes=witness)
    assert not report.ok and "truncated" in str(report.problem)


def test_reordered_rows_are_found(tmp_path: Path, keys) -> None:  # noqa: ANN001
    write_log(tmp_path, keys).close()
    db = tmp_path / "audit.sqlite"
    conn = sqlite3.connect(db)
    a, b = (
        conn.execute("SELECT data, root FROM records WHERE idx=?", [i]).fetchone() for i in (2, 3)
    )
    conn.close()
    tamper(db, "UPDATE records SET data=?, root=? WHERE idx=2", *b)
    tamper(db, "UPDATE records SET data=?, root=? WHERE idx=3", *a)
    report = check(db, keys)
    assert not report.ok and report.first_bad_index == 2, report.summary()


def test_forged_checkpoint_is_rejected(tmp_path: Path, keys) -> None:  # noqa: ANN001
    write_log(tmp_path, keys).close()
    db = tmp_path / "audit.sqlite"
    mallory = load_or_create_signing_key(tmp_path / "mallory.key")
    forged = sign_note("test/audit\n15\n" + "A" * 43 + "=\n", mallory, "appliance-audit")
    tamper(db, "UPDATE checkpoints SET note=? WHERE size=15", forged)
    report = check(db, keys)
    assert not report.ok and "signature" in str(report.problem)


def test_recomputed_roots_do_not_fool_the_signed_checkpoints(tmp_path: Path, keys) -> None:  # noqa: ANN001
    from appliance.audit.merkle import TreeBuilder, leaf_hash
    from appliance.audit.record import Record, encode

    write_log(tmp_path, keys).close()
    db = tmp_path / "audit.sqlite"
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT idx, data FROM records ORDER BY idx").fetchall()
    rows[6] = (6, encode(Record(t=0.0, kind="CallEnded", meta={"disposition": "forged"})))
    tree = TreeBuilder()
    for idx, data in rows:  # the attacker rewrites every stored root consistently
        tree.append(leaf_hash(data))
        conn.execute("UPDATE records SET data=?, root=? WHERE idx=?", (data, tree.root(), idx))
    conn.commit()
    conn.close()
    report = check(db, keys)
    assert not report.ok and "checkpoint" in str(report.problem)


def test_crypto_shredding_keeps_the_log_verifiable(tmp_path: Path, keys) -> None:  # noqa: ANN001
    log = write_log(tmp_path, keys)
    assert log.shred(call_id="call0") == 1
    with pytest.raises(AuditError, match="shredded"):
        log.export_call("call0")
    assert log.export_call("call1")[1]["content"]
    log.close()
    report = check(tmp_path / "audit.sqlite", keys)
    assert report.ok, report.summary()
    assert report.shredded_calls == ["call0"]


def test_wrong_kek_cannot_read(tmp_path: Path, keys) -> None:  # noqa: ANN001
    write_log(tmp_path, keys, calls=1).close()
    other = envelope.load_kek(tmp_path / "other-kek", create=True)
    with pytest.raises(AuditError, match="other-kek.*not the log's current KEK"):
        AuditLog(
            tmp_path / "audit.sqlite",
            other,
            keys[1],
            origin="test/audit",
            checkpoint_file=tmp_path / "checkpoints.log",
        )


def test_world_readable_kek_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "kek"
    f.write_bytes(b"k" * 32)
    f.chmod(0o644)
    with pytest.raises(envelope.EnvelopeError, match="owner only"):
        envelope.load_kek(f)


def test_raw_kek_with_whitespace_bytes_loads(tmp_path: Path) -> None:
    f = tmp_path / "kek"
    raw = b"\n" + b"\x20" * 30 + b"\t"  # 32 raw bytes that look like white space
    f.write_bytes(raw)
    f.chmod(0o600)
    assert envelope.load_kek(f).key == raw
    f.write_text(raw.hex() + "\n")
    assert envelope.load_kek(f).key == raw


def test_retention_sweep_shreds_only_old_calls(tmp_path: Path, keys) -> None:  # noqa: ANN001
    import time

    from appliance.audit.service import retention_sweep

    log = write_log(tmp_path, keys, calls=2)
    conn = log._db  # backdate call0's key by 40 days
    conn.execute("UPDATE deks SET created = ? WHERE call_id = 'call0'", [time.time() - 40 * 86400])
    assert retention_sweep(log, 30) == 1
    with pytest.raises(AuditError, match="shredded"):
        log.export_call("call0")
    assert log.export_call("call1")[1]["content"]
    log.checkpoint()
    log.close()
    report = check(tmp_path / "audit.sqlite", keys)
    assert report.ok and report.shredded_calls == ["call0"], report.summary()


def test_consent_records_are_sealed_and_exportable(tmp_path: Path, keys) -> None:  # noqa: ANN001
    from appliance.audit.observer import AuditObserver
    from appliance.events import ConsentRecorded

    log = write_log(tmp_path, keys, calls=0)
    observer = AuditObserver(log)
    observer(
        ConsentRecorded(
            "call7",
            phone_number="+1 555 867 5309",
            scope="reminders",
            method="verbal-on-call",
            evidence="yes you can text me",
        )
    )
    observer(
        ConsentRecorded(
            "call7", phone_number="+1 555 867 5309", scope="reminders", method="dtmf", revoked=True
        )
    )
    assert observer.flush(5) and observer.acknowledged == 2
    records = log.export_call("call7")
    assert [r["meta"]["revoked"] for r in records] == [False, True]
    assert records[0]["meta"]["scope"] == "reminders"
    assert records[0]["content"]["phone_number"] == "+1 555 867 5309"
    log.close()
    assert b"867 5309" not in (tmp_path / "audit.sqlite").read_bytes()


def test_kek_rotation_rewraps_keys_and_keeps_content(tmp_path: Path, keys) -> None:  # noqa: ANN001
    log = write_log(tmp_path, keys, calls=2)
    old = keys[0]
    new = envelope.load_kek(tmp_path / "kek2", create=True)
    assert log.rotate_kek(new) == 2
    assert log.export_call("call1")[1]["content"]["user_text"].endswith(SECRET_WORDS[0])
    log.append([Entry("TurnEnded", "call2", content={"user_text": "after rotation"})])
    log.checkpoint()
    log.close()
    with pytest.raises(AuditError, match="not the log's current KEK"):  # the old KEK is refused
        AuditLog(
            tmp_path / "audit.sqlite",
            old,
            keys[1],
            origin="test/audit",
            checkpoint_file=tmp_path / "checkpoints.log",
        )
    wrapped = [r[0] for r in sqlite3.connect(tmp_path / "audit.sqlite").execute(
        "SELECT wrapped FROM deks WHERE wrapped IS NOT NULL")]  # fmt: skip
    for blob in wrapped:  # and opens no key even when asked directly
        with pytest.raises(envelope.EnvelopeError):
            envelope.unwrap(old, blob)
    assert check(tmp_path / "audit.sqlite", keys).ok


def test_a_second_process_appending_does_not_break_the_agents_log(
    tmp_path: Path,
    keys,  # noqa: ANN001
) -> None:
    agent = write_log(tmp_path, keys, calls=1)
    other = AuditLog(
        tmp_path / "audit.sqlite",
        keys[0],
        keys[1],
        origin="test/audit",
        checkpoint_file=tmp_path / "checkpoints.log",
    )  # e.g. `audit export`
    assert other.append([Entry("AuditExport", meta={"call_id": "call0"})]) == [5]
    other.close()
    assert agent.append([Entry("CallAnswered", "call1")]) == [6]
    agent.checkpoint()
    agent.close()
    assert check(tmp_path / "audit.sqlite", keys).ok
