"""Phase gates on a real call metadata database written by CallMetadataStore."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from appliance.admin.gates import (
    WINDOW_S,
    compute_gates,
    gate_for_enabling,
    window_counts,
)
from appliance.events import CallScored
from appliance.metrics.store import CallMetadataStore

NOW = 1_800_000_000.0
DAY = 86400.0


def _score(call_id: str, t: float, **over: object) -> CallScored:
    fields: dict[str, object] = {
        "outcome": "resolved",
        "contained": True,
        "transfer_appropriate": None,
        "disclosure_ok": True,
        "identity_before_phi_ok": True,
        "no_card_number_ok": True,
        "sentiment": 0.2,
        "judge": "rules",
    }
    fields.update(over)
    return CallScored(call_id, t=t, **fields)  # type: ignore[arg-type]


def _write(db: Path, scores: list[CallScored]) -> None:
    store = CallMetadataStore(db)
    try:
        for s in scores:
            store.record_score(s.call_id, s)
    finally:
        store.close()


def _transferred(call_id: str, t: float, sentiment: float = 0.0) -> CallScored:
    return _score(
        call_id,
        t,
        outcome="transferred",
        contained=False,
        transfer_appropriate=True,
        sentiment=sentiment,
    )


def _failed_transfer(call_id: str, t: float) -> CallScored:
    # A transfer was attempted but failed: the caller left a message, still contained.
    return _score(call_id, t, outcome="message_taken", contained=True, transfer_appropriate=True)


def test_low_gate_met_with_good_figures(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    t = NOW - DAY
    scores = [_score(f"r{i}", t) for i in range(75)]
    scores += [_transferred(f"x{i}", t) for i in range(25)]
    _write(db, scores)
    gates = compute_gates(db, NOW)
    low = gates["low"]
    assert low.source == "ok"
    assert low.calls == 100
    by_key = {c.key: c for c in low.criteria}
    assert by_key["containment_rate"].value == pytest.approx(0.75)
    assert by_key["compliance_flag_rate"].value == 0.0
    assert by_key["transfer_success_rate"].value == 1.0
    assert by_key["transfer_success_rate"].denominator == 25
    assert low.met
    # Medium gate: containment 75% >= 60%, no complaints.
    assert gates["medium"].met


def test_low_gate_fails_on_each_criterion(tmp_path: Path) -> None:
    t = NOW - DAY
    # Containment 69%: just under 70%.
    db = tmp_path / "a.sqlite"
    _write(
        db, [_score(f"r{i}", t) for i in range(69)] + [_transferred(f"x{i}", t) for i in range(31)]
    )
    low = compute_gates(db, NOW)["low"]
    assert not low.met
    assert [c.key for c in low.criteria if not c.met] == ["containment_rate"]

    # Compliance flags on 2 of 100 calls: 2% is not < 2%.
    db = tmp_path / "b.sqlite"
    scores = [_score(f"r{i}", t) for i in range(78)] + [_transferred(f"x{i}", t) for i in range(20)]
    scores += [_score("d", t, disclosure_ok=False), _score("p", t, identity_before_phi_ok=False)]
    _write(db, scores)
    low = compute_gates(db, NOW)["low"]
    flag = next(c for c in low.criteria if c.key == "compliance_flag_rate")
    assert flag.numerator == 2 and flag.denominator == 100
    assert not flag.met and not low.met

    # One failed transfer in 20 attempts: 95% is not > 95%.
    db = tmp_path / "c.sqlite"
    scores = [_score(f"r{i}", t) for i in range(80)] + [_transferred(f"x{i}", t) for i in range(19)]
    scores.append(_failed_transfer("f", t))
    _write(db, scores)
    low = compute_gates(db, NOW)["low"]
    transfer = next(c for c in low.criteria if c.key == "transfer_success_rate")
    assert transfer.value == pytest.approx(0.95)
    assert not transfer.met and not low.met


def test_window_is_rolling_seven_days(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    old = NOW - WINDOW_S - 60
    # Bad calls older than the window do not count; one good call inside it does.
    scores = [_score(f"old{i}", old, contained=False, disclosure_ok=False) for i in range(50)]
    scores.append(_score("new", NOW - 3600))
    scores.append(_transferred("newx", NOW - 3600))
    scores.append(_score("future", NOW + 3600, contained=False))  # after `now`: not counted
    _write(db, scores)
    counts, source = window_counts(db, NOW)
    assert source == "ok"
    assert counts["calls"] == 2
    assert counts["flagged"] == 0


def test_medium_gate_complaint_conversion(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    t = NOW - DAY
    scores = [_score(f"r{i}", t) for i in range(70)]
    scores += [_transferred(f"x{i}", t) for i in range(18)]
    scores += [_transferred("angry1", t, sentiment=-0.6)]  # 1 of 20 escalations: 5%
    scores += [_failed_transfer("angry2", t)]
    _write(db, scores)
    medium = compute_gates(db, NOW)["medium"]
    complaint = next(c for c in medium.criteria if c.key == "complaint_rate")
    assert complaint.numerator == 1 and complaint.denominator == 20
    assert not complaint.met  # 5% is not < 5%
    # A very negative non-escalated call is not an escalation complaint.
    db2 = tmp_path / "d.sqlite"
    _write(db2, [_score(f"r{i}", t, sentiment=-0.9) for i in range(10)] + [_transferred("x", t)])
    medium = compute_gates(db2, NOW)["medium"]
    complaint = next(c for c in medium.criteria if c.key == "complaint_rate")
    assert complaint.value == 0.0 and complaint.met


def test_no_data_fails_closed(tmp_path: Path) -> None:
    missing = compute_gates(tmp_path / "none.sqlite", NOW)
    assert missing["low"].source == "no metrics database"
    assert not missing["low"].met and not missing["medium"].met
    assert all(c.value is None and not c.met for c in missing["low"].criteria)

    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.commit()
    assert compute_gates(empty, NOW)["low"].source == "no call scores recorded"

    # Calls but no transfer attempt: the transfer criterion has no value, so the gate fails.
    db = tmp_path / "calls.sqlite"
    _write(db, [_score(f"r{i}", NOW - DAY) for i in range(10)])
    low = compute_gates(db, NOW)["low"]
    transfer = next(c for c in low.criteria if c.key == "transfer_success_rate")
    assert transfer.value is None and not low.met

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    assert compute_gates(garbage, NOW)["low"].source == "metrics database unreadable"


def test_gate_for_enabling(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    assert gate_for_enabling("low", db, NOW) is None
    medium_needs = gate_for_enabling("medium", db, NOW)
    high_needs = gate_for_enabling("high", db, NOW)
    assert medium_needs is not None and medium_needs.tier == "low"
    assert high_needs is not None and high_needs.tier == "medium"
    with pytest.raises(KeyError):
        gate_for_enabling("extreme", db, NOW)


def test_database_is_opened_read_only(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    _write(db, [_score("r", NOW - DAY)])
    db.chmod(0o400)
    try:
        assert compute_gates(db, NOW)["low"].calls == 1
    finally:
        db.chmod(0o600)
