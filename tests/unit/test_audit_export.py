"""`appliance audit export --redact`: a view without PHI access, and the export on the record."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.audit.record import decode
from appliance.audit.service import open_audit
from appliance.audit.store import Entry, connect, iter_records
from appliance.cli import main
from appliance.config import load_settings


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text('[audit]\ndb = "audit/audit.sqlite"\nkek_file = "audit/kek.key"\n'
                    'signing_key_file = "audit/signing.key"\n'
                    'checkpoint_file = "audit/checkpoints.jsonl"\n')  # fmt: skip
    log = open_audit(load_settings(path).audit)
    said = "My number is 555-201-3344 and my card is 4111 1111 1111 1111, born March 4, 1982."
    log.append([Entry(kind="TurnEnded", call_id="c-1", content={"user_text": said})])
    log.checkpoint()
    log.close()
    return path


def test_redacted_export_marks_phi_and_is_recorded(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--config", str(config), "export", "--call", "c-1", "--redact"]) == 0
    out = capsys.readouterr().out
    assert "555-201-3344" not in out and "4111 1111 1111 1111" not in out and "1982" not in out
    assert "[PHONE]" in out and "[PAN]" in out and "[DOB]" in out
    assert main(["audit", "--config", str(config), "export", "--call", "c-1"]) == 0
    full = capsys.readouterr().out
    assert "4111 1111 1111 1111" in full  # the authorised, unredacted view still has it
    db = connect(load_settings(config).audit.db)
    records = [decode(data) for _, data in iter_records(db)]
    db.conn.close()
    assert [r.meta["redacted"] for r in records if r.kind == "AuditExport"] == [True, False]
