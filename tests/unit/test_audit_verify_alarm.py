"""The verify timer's alarm: the CLI writes and clears the marker, the admin page's rule fires."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from appliance.admin.alerts import RULES_BY_KEY, evaluate
from appliance.audit.alarm import alarm_path, read_alarm
from appliance.audit.service import open_audit
from appliance.audit.store import Entry
from appliance.cli import main
from appliance.config import load_settings


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.toml"
    lines = [
        "[store]",
        'metadata_db = "state/calls.sqlite"',
        "[audit]",
        'db = "state/audit/audit.sqlite"',
        'kek_file = "state/keys/kek"',
        'signing_key_file = "state/keys/signing.key"',
        'checkpoint_file = "state/audit/checkpoints.log"',
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def _rule(metrics_db: Path) -> float | None:
    reading = next(
        r for r in evaluate(metrics_db, None, time.time()) if r.rule.key == "audit_verify_failed"
    )
    return reading.value


def test_a_failed_verify_raises_the_alarm_and_a_passing_one_clears_it(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(config)
    metrics_db = settings.store.metadata_db
    marker = alarm_path(metrics_db.parent)
    log = open_audit(settings.audit)
    log.append([Entry("ConfigChanged", meta={"n": 1}, t=time.time() - 7200)])  # never signed
    log.close()
    argv = ["audit", "--config", str(config), "verify", "--alarm-file", str(marker)]
    assert main(argv) == 1
    alarm = read_alarm(marker)
    assert alarm is not None and "not covered by a signed checkpoint" in alarm["problem"]
    assert marker.stat().st_mode & 0o777 == 0o640
    assert _rule(metrics_db) == 1.0
    assert "public key: the box's own copy" in capsys.readouterr().out

    # The timer's OnFailure= unit keeps the verifier's precise problem.
    alarm_argv = ["audit", "--config", str(config), "alarm", "--alarm-file", str(marker)]
    assert main(alarm_argv) == 0
    assert read_alarm(marker) == alarm

    log = open_audit(settings.audit)
    log.checkpoint()
    log.close()
    assert main(argv) == 0
    assert not marker.exists()
    assert _rule(metrics_db) == 0.0


def test_the_alarm_unit_alone_raises_it(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = alarm_path(load_settings(config).store.metadata_db.parent)
    assert main(["audit", "--config", str(config), "alarm", "--alarm-file", str(marker)]) == 0
    assert "appliance-audit-verify.service failed" in json.loads(marker.read_text())["problem"]
    assert capsys.readouterr().err.startswith("<2>audit log verification failed")


def test_a_damaged_marker_still_fires(tmp_path: Path) -> None:
    metrics_db = tmp_path / "calls.sqlite"
    sqlite3.connect(metrics_db).close()
    assert _rule(metrics_db) is None  # no verify timer on this host: no data
    marker = alarm_path(tmp_path)
    marker.parent.mkdir()
    assert _rule(metrics_db) == 0.0
    marker.write_text("{not json")
    assert _rule(metrics_db) == 1.0
    assert RULES_BY_KEY["audit_verify_failed"].severity == "alert"
