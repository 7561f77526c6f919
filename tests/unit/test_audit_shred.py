"""Crypto-shredding that a forensic scan confirms, KEK epochs, key scopes and lost keys.

Real SQLite files, real AES key wrap and AES-GCM, real key files (issue 14, Deliver 1).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.audit import envelope
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.observer import AuditObserver
from appliance.audit.record import decode
from appliance.audit.service import open_audit, retention_sweep
from appliance.audit.store import AuditError, AuditLog, ContentShredded, Entry, connect
from appliance.audit.verify import VerifyReport, verify
from appliance.config import load_settings
from appliance.config.settings import AuditSettings
from appliance.events import ConsentRecorded

SAID = "my name is Margaret Hamilton, born 1982-03-04"


def _log(tmp_path: Path, kek: envelope.Kek | None = None) -> AuditLog:
    return AuditLog(
        tmp_path / "audit.sqlite",
        kek or envelope.load_kek(tmp_path / "keys" / "kek", create=True),
        load_or_create_signing_key(tmp_path / "keys" / "signing.key"),
        origin="test/audit",
        checkpoint_file=tmp_path / "checkpoints.log",
    )


def _call(log: AuditLog, call_id: str) -> None:
    log.append(
        [
            Entry("CallAnswered", call_id, meta={"codec": "PCMU"}),
            Entry("TurnEnded", call_id, content={"user_text": f"{SAID} ({call_id})"}),
            Entry("CallEnded", call_id, meta={"disposition": "caller_hangup"}),
        ]
    )


def _wrapped(db: Path) -> dict[str, bytes]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT call_id, wrapped FROM deks WHERE wrapped IS NOT NULL")
        return {call_id: bytes(wrapped) for call_id, wrapped in rows}
    finally:
        conn.close()


def _files(db: Path) -> dict[str, bytes]:
    """Raw bytes of the database and its -wal and -shm files (those that exist)."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        f = db.with_name(db.name + suffix)
        if f.exists():
            out[f.name] = f.read_bytes()
    return out


def _check(tmp_path: Path) -> VerifyReport:
    key = load_or_create_signing_key(tmp_path / "keys" / "signing.key")
    return verify(tmp_path / "audit.sqlite", key.public_key(), origin="test/audit")


def test_connection_has_secure_delete_whatever_the_build_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some SQLite builds default to SECURE_DELETE, others do not: start from "off".
    plain = sqlite3.connect

    def off_by_default(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = plain(*args, **kwargs)
        conn.execute("PRAGMA secure_delete=OFF")
        return conn

    monkeypatch.setattr(sqlite3, "connect", off_by_default)
    db = connect(tmp_path / "x.sqlite")
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    db.conn.close()


def test_shredded_dek_is_gone_from_database_wal_and_shm(tmp_path: Path) -> None:
    log = _log(tmp_path)
    for call in ("c1", "c2", "c3"):
        _call(log, call)
    log.checkpoint()
    db = tmp_path / "audit.sqlite"
    before = _wrapped(db)
    assert set(before) == {"c1", "c2", "c3"}
    # the bytes are really there before the shred (so the scan below can fail)
    assert any(before["c1"] in blob for blob in _files(db).values())
    old_kek = (tmp_path / "keys" / "kek").read_bytes()

    assert log.shred(call_id="c1") == 1
    scanned = _files(db)  # the log is still open, as in the running agent
    assert set(scanned) >= {"audit.sqlite", "audit.sqlite-wal"}
    for name, blob in scanned.items():
        for call, wrapped in before.items():  # no DEK wrapped under the dead KEK survives
            assert wrapped not in blob, f"{call}'s old wrapped DEK is in {name}"
    assert scanned["audit.sqlite-wal"] == b""
    assert (tmp_path / "keys" / "kek").read_bytes() != old_kek
    assert not (tmp_path / "keys" / "kek.next").exists()

    with pytest.raises(ContentShredded):
        log.export_call("c1")
    assert log.export_call("c2")[1]["content"]["user_text"].endswith("(c2)")
    log.checkpoint()
    log.close()
    for name, blob in _files(db).items():
        assert before["c1"] not in blob, name
    report = _check(tmp_path)
    assert report.ok, report.summary()
    assert report.shredded_calls == ["c1"]


def test_kek_epoch_change_is_on_the_record_without_key_bytes(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _call(log, "c1")
    _call(log, "c2")
    old = log.kek
    assert log.shred(call_id="c1") == 1
    epochs = [r for r in log.call_records("") if r["kind"] == "KekEpoch"]
    assert len(epochs) == 1
    meta = epochs[0]["meta"]
    assert meta == {
        "epoch": 1,
        "from_kek": old.kek_id,
        "to_kek": log.kek.kek_id,
        "rewrapped": 1,
        "shredded_keys": 1,
        "scopes": ["call"],
        "reason": "shred",
    }
    log.close()
    raw = (tmp_path / "audit.sqlite").read_bytes()
    assert old.key not in raw and log.kek.key not in raw
    assert old.key.hex().encode() not in raw


def test_a_backup_from_before_the_shred_cannot_be_opened(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _call(log, "c1")
    _call(log, "c2")
    log.checkpoint()
    backup = tmp_path / "backup"
    backup.mkdir()
    with (
        sqlite3.connect(tmp_path / "audit.sqlite") as src,
        sqlite3.connect(backup / "audit.sqlite") as dst,
    ):
        src.backup(dst)  # an online backup, as a backup job would take it
    old_kek_bytes = (tmp_path / "keys" / "kek").read_bytes()

    assert log.shred(call_id="c1") == 1
    new_kek = envelope.load_kek(tmp_path / "keys" / "kek")
    assert new_kek.kek_id == log.kek.kek_id
    # The KEK the backup's DEKs are wrapped under exists nowhere on the box any more.
    for f in (tmp_path / "keys").iterdir():
        assert old_kek_bytes not in f.read_bytes(), f.name
    old_wrapped = _wrapped(backup / "audit.sqlite")
    with pytest.raises(envelope.EnvelopeError):
        envelope.unwrap(new_kek, old_wrapped["c1"])
    with pytest.raises(envelope.EnvelopeError):
        envelope.unwrap(new_kek, old_wrapped["c2"])
    # The live call still decrypts after the epoch change, in this and in a new process.
    assert log.export_call("c2")[1]["content"]["user_text"].endswith("(c2)")
    log.close()
    again = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))
    assert again.export_call("c2")[1]["content"]["user_text"].endswith("(c2)")
    with pytest.raises(ContentShredded):
        again.export_call("c1")
    again.close()


def test_credential_kek_is_never_the_direct_kek_and_epochs_replace_the_epoch_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "audit-kek").write_bytes(bytes(range(envelope.KEY_BYTES)))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    key_file = tmp_path / "keys" / "kek"
    key_file.parent.mkdir()
    root = envelope.load_kek(key_file)
    assert root.source == "systemd-credential"
    log = _log(tmp_path, root)
    # Opening moved off the credential: it wraps only the epoch KEK, never a DEK.
    assert log.kek.source == "systemd-credential+epoch" and log.kek.kek_id != root.kek_id
    epoch_file = tmp_path / "keys" / "kek.epoch"
    assert epoch_file.stat().st_mode & 0o777 == 0o600 and not key_file.exists()
    _call(log, "c1")
    _call(log, "c2")
    wrapped = _wrapped(tmp_path / "audit.sqlite")
    old_epoch_file = epoch_file.read_bytes()
    assert log.shred(call_id="c1") == 1
    assert epoch_file.read_bytes() != old_epoch_file
    current = envelope.load_kek(key_file)
    assert current.kek_id == log.kek.kek_id
    for kek in (root, current):  # the credential and the new epoch both fail on the old DEK
        with pytest.raises(envelope.EnvelopeError):
            envelope.unwrap(kek, wrapped["c1"])
    log.close()
    again = _log(tmp_path, envelope.load_kek(key_file))
    assert again.export_call("c2")[1]["content"]["user_text"].endswith("(c2)")
    again.close()


def test_a_crash_between_commit_and_key_rename_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _log(tmp_path)
    _call(log, "c1")
    _call(log, "c2")
    monkeypatch.setattr(envelope.KekStore, "promote", lambda self: None)  # "crash" here
    assert log.shred(call_id="c1") == 1
    log.close()
    monkeypatch.undo()
    assert (tmp_path / "keys" / "kek.next").exists()
    again = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))  # the old file
    assert not (tmp_path / "keys" / "kek.next").exists()
    assert envelope.load_kek(tmp_path / "keys" / "kek").kek_id == again.kek.kek_id
    assert again.export_call("c2")[1]["content"]["user_text"].endswith("(c2)")
    again.close()


def test_a_shred_that_did_not_commit_keeps_the_old_kek(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _log(tmp_path)
    _call(log, "c1")
    _call(log, "c2")
    old = (tmp_path / "keys" / "kek").read_bytes()

    def broken(self: AuditLog, new_kek: envelope.Kek) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(AuditLog, "_rewrap_locked", broken)
    with pytest.raises(AuditError, match="nothing destroyed"):
        log.shred(call_id="c1")
    monkeypatch.undo()
    assert (tmp_path / "keys" / "kek").read_bytes() == old
    assert not (tmp_path / "keys" / "kek.next").exists()
    assert log.export_call("c1")[1]["content"]["user_text"].endswith("(c1)")
    log.close()


def test_a_second_process_follows_the_new_epoch(tmp_path: Path) -> None:
    agent = _log(tmp_path)
    _call(agent, "c1")
    other = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))  # e.g. `audit` CLI
    assert other.shred(call_id="c1") == 1
    other.close()
    _call(agent, "c2")  # the agent's in-memory KEK is dead: it must not wrap a DEK with it
    assert agent.kek.kek_id == envelope.load_kek(tmp_path / "keys" / "kek").kek_id
    agent.close()
    third = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))
    assert third.export_call("c2")[1]["content"]["user_text"].endswith("(c2)")
    third.close()


def _backdate(log: AuditLog, days: float) -> None:
    """Age every data key by ``days`` (the log's cache would otherwise keep the young times)."""
    log._db.execute("UPDATE deks SET created = ?", [time.time() - days * 86400])
    log._deks.clear()


def test_consent_survives_the_transcript_sweep_and_has_its_own_retention(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path)
    _call(log, "c7")
    observer = AuditObserver(log, checkpoint_on_call_end=False)
    observer(
        ConsentRecorded(
            "c7",
            phone_number="+1 555 867 5309",
            scope="reminders",
            method="verbal-on-call",
            evidence="yes you can text me",
        )
    )
    assert observer.flush(5)
    log.append([Entry("AdminPhiViewed", "c7", meta={"actor": "user:1"}, content={"reason": "QA"})])
    log.append([Entry("AdminLogin", meta={"user": "it"}, content={"from": "10.0.0.5"})])
    scopes = dict(log._db.execute("SELECT scope, COUNT(*) FROM deks GROUP BY scope").fetchall())
    assert scopes == {"call": 1, "consent": 1, "system": 2}
    _backdate(log, 40)

    assert retention_sweep(log, 30, consent_retention_days=2557) == 1
    with pytest.raises(ContentShredded):
        log.export_call("c7")
    records = log.call_records("c7", decrypt=True, allow_shredded=True)
    by_kind = {r["kind"]: r for r in records}
    assert by_kind["TurnEnded"].get("shredded") is True and "content" not in by_kind["TurnEnded"]
    assert by_kind["ConsentRecorded"]["content"]["phone_number"] == "+1 555 867 5309"
    assert by_kind["AdminPhiViewed"]["content"] == {"reason": "QA"}
    sweep = [r for r in log.call_records("") if r["kind"] == "RetentionSweep"][-1]
    assert sweep["meta"]["shredded_keys"] == 1 and "consent_cutoff" in sweep["meta"]

    # Without a consent retention the sweep leaves consent alone however old it is.
    _backdate(log, 9 * 365)
    assert retention_sweep(log, 30) == 0
    assert retention_sweep(log, 30, consent_retention_days=2557) == 3
    records = log.call_records("c7", decrypt=True, allow_shredded=True)
    assert all(r.get("shredded") for r in records if r["kind"] != "CallAnswered" and
               r["kind"] != "CallEnded")  # fmt: skip
    log.checkpoint()
    log.close()
    report = _check(tmp_path)
    assert report.ok, report.summary()


def test_shred_of_a_call_keeps_its_consent(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _call(log, "c8")
    log.append([Entry("ConsentRecorded", "c8", meta={"scope": "x"}, content={"evidence": "yes"})])
    assert log.shred(call_id="c8") == 1
    records = log.call_records("c8", decrypt=True, allow_shredded=True)
    assert [r["content"] for r in records if r["kind"] == "ConsentRecorded"] == [
        {"evidence": "yes"}
    ]
    with pytest.raises(AuditError, match="unknown key scope"):
        log.shred(call_id="c8", scopes=("everything",))
    log.close()


def _settings(tmp_path: Path, extra: str = "") -> AuditSettings:
    path = tmp_path / "appliance.toml"
    path.write_text('[audit]\ndb = "audit/audit.sqlite"\nkek_file = "keys/kek"\n'
                    'signing_key_file = "keys/signing.key"\n'
                    f'checkpoint_file = "audit/checkpoints.jsonl"\n{extra}')  # fmt: skip
    return load_settings(path).audit


def test_create_keys_defaults_to_false() -> None:
    assert AuditSettings().create_keys is False
    assert AuditSettings().consent_retention_days == 2557


def test_a_log_whose_kek_is_gone_does_not_open_and_gets_no_new_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log = open_audit(settings)  # first start: a brand-new log gets its keys
    log.append([Entry("TurnEnded", "c1", content={"user_text": SAID})])
    log.close()
    settings.kek_file.unlink()
    with pytest.raises(AuditError, match=r"KEK missing: .*keys/kek.*exists"):
        open_audit(settings)
    assert not settings.kek_file.exists()
    assert not (settings.kek_file.parent / "kek.next").exists()


def test_a_replaced_kek_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    open_audit(settings).close()
    settings.kek_file.write_bytes(b"\x01" * envelope.KEY_BYTES)
    with pytest.raises(AuditError, match=r"keys/kek .*not the log's current KEK"):
        open_audit(settings)


def test_a_log_whose_signing_key_is_gone_does_not_open(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    open_audit(settings).close()
    settings.signing_key_file.unlink()
    with pytest.raises(AuditError, match=r"signing key missing: .*signing.key"):
        open_audit(settings)
    assert not settings.signing_key_file.exists()


def test_create_keys_true_replaces_a_lost_kek_on_the_record(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    log = open_audit(settings)
    log.append([Entry("TurnEnded", "c1", content={"user_text": SAID})])
    log.close()
    settings.kek_file.unlink()
    explicit = _settings(tmp_path, "create_keys = true\n")
    log = open_audit(explicit)
    with pytest.raises(ContentShredded):
        log.export_call("c1")
    log.append([Entry("TurnEnded", "c2", content={"user_text": "after"})])
    assert log.export_call("c2")[0]["content"] == {"user_text": "after"}
    log.close()
    db = connect(settings.db)
    kinds = [decode(data) for _, data in db.execute("SELECT idx, data FROM records")]
    db.conn.close()
    lost = [r.meta for r in kinds if r.kind == "KekEpoch"]
    assert lost and lost[0]["reason"] == "kek-lost" and lost[0]["shredded_keys"] == 1
    assert [r.meta["keys"] for r in kinds if r.kind == "KeyCreated"][-1] == ["kek"]


def test_a_backup_copy_taken_with_files_is_also_dead(tmp_path: Path) -> None:
    """A file-level copy (db + -wal) taken before the shred, as a naive backup would."""
    log = _log(tmp_path)
    _call(log, "c1")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in _files(tmp_path / "audit.sqlite"):
        shutil.copy2(tmp_path / name, copy / name)
    assert log.shred(call_id="c1") == 1
    log.close()
    copied = _wrapped(copy / "audit.sqlite")["c1"]
    with pytest.raises(envelope.EnvelopeError):
        envelope.unwrap(envelope.load_kek(tmp_path / "keys" / "kek"), copied)


def test_the_key_outside_calls_is_renewed_so_retention_keeps_recent_records(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path)
    log.append([Entry("AdminLogin", meta={"user": "it"}, content={"from": "10.0.0.5"})])
    _backdate(log, 40)  # that system key is now 40 days old
    log.append([Entry("AdminLogin", meta={"user": "it"}, content={"from": "10.0.0.6"})])
    assert log._db.execute("SELECT COUNT(*) FROM deks WHERE scope = 'system'").fetchone()[0] == 2
    assert retention_sweep(log, 30, consent_retention_days=35) == 1
    records = log.call_records("", decrypt=True, allow_shredded=True)
    logins = [r for r in records if r["kind"] == "AdminLogin"]
    assert logins[0].get("shredded") is True
    assert logins[1]["content"] == {"from": "10.0.0.6"}
    log.close()


def test_a_reader_follows_the_new_epoch_too(tmp_path: Path) -> None:
    agent = _log(tmp_path)
    _call(agent, "c1")
    _call(agent, "c2")
    other = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))
    assert other.shred(call_id="c1") == 1
    other.close()
    # e.g. the admin page's transcript view, served by the agent after a CLI retention run
    assert agent.call_records("c2", decrypt=True)[1]["content"]["user_text"].endswith("(c2)")
    agent.close()


def test_a_torn_staged_file_does_not_stop_the_log_from_opening(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _call(log, "c1")
    log.close()
    (tmp_path / "keys" / "kek.next").write_bytes(b"\x00" * 7)  # a crash while staging
    again = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))
    assert not (tmp_path / "keys" / "kek.next").exists()
    assert again.export_call("c1")[1]["content"]["user_text"].endswith("(c1)")
    assert again.shred(call_id="c1") == 1
    again.close()


def _shred_worker(root: str, name: str, rounds: int) -> None:
    log = _log(Path(root), envelope.load_kek(Path(root) / "keys" / "kek"))
    for i in range(rounds):
        _call(log, f"{name}-gone-{i}")
        _call(log, f"{name}-kept-{i}")
        assert log.shred(call_id=f"{name}-gone-{i}") == 1
    log.close()


def test_two_processes_shredding_at_once_lose_no_live_content(tmp_path: Path) -> None:
    import multiprocessing

    _log(tmp_path).close()
    ctx = multiprocessing.get_context("fork")
    workers = [
        ctx.Process(target=_shred_worker, args=(str(tmp_path), name, 8)) for name in ("a", "b")
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    log = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))
    for name in ("a", "b"):
        for i in range(8):
            kept = log.export_call(f"{name}-kept-{i}")
            assert kept[1]["content"]["user_text"].endswith(f"({name}-kept-{i})")
            with pytest.raises(ContentShredded):
                log.export_call(f"{name}-gone-{i}")
    epochs = log._db.execute("SELECT COUNT(*) FROM kek_epochs").fetchone()[0]
    assert epochs == 1 + 16
    assert not (tmp_path / "keys" / "kek.next").exists()
    log.close()
    assert _check(tmp_path).ok


def test_a_read_only_key_file_is_still_replaced(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _call(log, "c1")
    _call(log, "c2")
    (tmp_path / "keys" / "kek").chmod(0o400)
    old = (tmp_path / "keys" / "kek").read_bytes()
    assert log.shred(call_id="c1") == 1
    assert (tmp_path / "keys" / "kek").read_bytes() != old
    log.close()
    again = _log(tmp_path, envelope.load_kek(tmp_path / "keys" / "kek"))
    assert again.export_call("c2")[1]["content"]["user_text"].endswith("(c2)")
    again.close()


def _seed_expired(settings: AuditSettings, days: float) -> None:
    log = open_audit(settings)
    _call(log, "c1")
    log.append([Entry("ConsentRecorded", "c1", meta={"scope": "x"}, content={"evidence": "yes"})])
    _backdate(log, days)
    log.close()


def test_cli_retention_takes_transcripts_and_keeps_consent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli import main

    settings = _settings(tmp_path)
    _seed_expired(settings, 40)
    config = str(tmp_path / "appliance.toml")
    assert main(["audit", "--config", config, "retention"]) == 0
    assert capsys.readouterr().out.strip() == "1 data key(s) destroyed"
    log = open_audit(settings)
    records = log.call_records("c1", decrypt=True, allow_shredded=True)
    assert [r["content"] for r in records if r["kind"] == "ConsentRecorded"] == [
        {"evidence": "yes"}
    ]
    assert any(r.get("shredded") for r in records if r["kind"] == "TurnEnded")
    log.close()


async def test_the_agents_retention_timer_uses_both_periods(tmp_path: Path) -> None:
    import asyncio

    from appliance.app.server import ApplianceServer
    from appliance.config.settings import ApplianceSettings

    settings = ApplianceSettings.model_validate(
        {
            "audit": {
                "db": str(tmp_path / "audit" / "audit.sqlite"),
                "kek_file": str(tmp_path / "keys" / "kek"),
                "signing_key_file": str(tmp_path / "keys" / "signing.key"),
                "checkpoint_file": str(tmp_path / "audit" / "checkpoints.log"),
                "transcript_retention_days": 30,
                "consent_retention_days": 35,
            },
            "store": {"metadata_db": str(tmp_path / "calls.sqlite")},
        }
    )
    _seed_expired(settings.audit, 40)  # past both periods
    srv = ApplianceServer(settings)
    srv.audit = AuditObserver(open_audit(settings.audit), checkpoint_on_call_end=False)
    task = asyncio.create_task(srv._retention_loop())
    try:
        for _ in range(200):
            sweeps = [r for r in srv.audit.log.call_records("") if r["kind"] == "RetentionSweep"]
            if sweeps:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert sweeps and sweeps[0]["meta"]["shredded_keys"] == 2
    assert "consent_cutoff" in sweeps[0]["meta"]
    srv.audit.log.close()
