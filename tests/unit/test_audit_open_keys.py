"""`open_audit` records KeyCreated only for keys it actually created."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.audit import envelope
from appliance.audit.record import decode
from appliance.audit.service import open_audit
from appliance.audit.store import connect, iter_records
from appliance.config import load_settings
from appliance.config.settings import AuditSettings


def _settings(tmp_path: Path) -> AuditSettings:
    path = tmp_path / "appliance.toml"
    path.write_text('[audit]\ndb = "audit/audit.sqlite"\nkek_file = "audit/kek.key"\n'
                    'signing_key_file = "audit/signing.key"\n'
                    'checkpoint_file = "audit/checkpoints.jsonl"\n')  # fmt: skip
    return load_settings(path).audit


def _key_created(settings: AuditSettings) -> list[dict[str, object]]:
    db = connect(settings.db)
    records = [decode(data) for _, data in iter_records(db)]
    db.conn.close()
    return [r.meta for r in records if r.kind == "KeyCreated"]


def test_key_file_creation_is_recorded_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for _ in range(2):
        open_audit(settings).close()
    metas = _key_created(settings)
    assert len(metas) == 1
    assert metas[0]["keys"] == ["signing", "kek"] and metas[0]["kek_source"] == "key-file"


def test_kek_from_credential_is_not_recorded_as_created_on_every_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "audit-kek").write_bytes(bytes(range(envelope.KEY_BYTES)))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = _settings(tmp_path)
    for _ in range(3):
        open_audit(settings).close()
    assert not settings.kek_file.exists()
    metas = _key_created(settings)
    # The signing key was made by the first start; the KEK came from the credential.
    assert [m["keys"] for m in metas] == [["signing"]]
    assert metas[0]["kek_source"] == "systemd-credential"
