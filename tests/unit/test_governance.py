"""Change requests: checklist, two-person sign-off, gates, applying and rolling back."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance.admin.auth import Principal
from appliance.admin.db import connect
from appliance.admin.governance import CHECKLIST, GovernanceError, GovernanceStore
from appliance.admin.rbac import Permission, Role
from appliance.admin.rollout import (
    RolloutError,
    apply_request,
    rollback_request,
    running_workflows,
    validate_proposed,
)
from appliance.agent.workflow import default_dir
from appliance.config.settings import load_settings
from appliance.control import ControlError
from appliance.events import CallScored
from appliance.metrics.store import CallMetadataStore

PERMS = {
    "request": (Permission.REQUEST_CHANGE,),
    "review": (Permission.COMPLIANCE_REVIEW,),
    "sign_off": (Permission.SIGN_OFF,),
    "apply": (Permission.SIGN_OFF, Permission.MANAGE_SETTINGS),
}


class Audit:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, kind: str, actor: str, **meta: Any) -> None:
        self.records.append((kind, actor, meta))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.records]


class Control:
    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.fail = fail

    def call(self, op: str, args: dict[str, Any], actor: str) -> Any:
        self.calls.append((op, args, actor))
        if self.fail:
            raise ControlError(self.fail, "agent not reachable")
        return {"accepted": True}


def _user(uid: int, *roles: Role) -> Principal:
    return Principal(uid, f"u{uid}", frozenset(roles), f"s{uid}", "csrf")


ENGINEER = _user(1, Role.PLATFORM_ENGINEER)
COMPLIANCE = _user(2, Role.COMPLIANCE_OFFICER)
OWNER = _user(3, Role.OWNER)
BOTH = _user(4, Role.OWNER, Role.COMPLIANCE_OFFICER)
VIEWER = _user(5, Role.VIEWER)


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def store(tmp_path: Path, audit: Audit) -> GovernanceStore:
    return GovernanceStore(connect(tmp_path / "admin.sqlite"), audit, PERMS)


def _tier_change(store: GovernanceStore, who: Principal = ENGINEER, tier: str = "medium") -> int:
    change = store.create(
        who,
        kind="tier",
        target=tier,
        action="enable",
        from_version="low",
        to_version=f"low,{tier}",
        reason="billing line is ready",
        payload={},
    )
    return change.id


def _complete(store: GovernanceStore, change_id: int, who: Principal = ENGINEER) -> None:
    for key, _ in CHECKLIST:
        if key == "warm_transfer":
            store.record_transfer_test(
                change_id, who, {"ok": True, "webhook_status": 200, "detail": "handoff 200"}
            )
        else:
            store.complete_item(change_id, who, key, f"evidence for {key}")


def _approved(store: GovernanceStore) -> int:
    cid = _tier_change(store)
    _complete(store, cid)
    store.submit(cid, ENGINEER)
    store.review(cid, COMPLIANCE, True, "controls confirmed")
    store.sign_off(cid, OWNER, True, "go")
    return cid


def _code(exc: pytest.ExceptionInfo[GovernanceError]) -> str:
    return exc.value.code


def test_full_flow_and_audit(store: GovernanceStore, audit: Audit) -> None:
    cid = _approved(store)
    change = store.get(cid)
    assert change.state == "approved"
    assert change.review is not None and change.review.by_name == "u2"
    assert change.signoff is not None and change.signoff.by_name == "u3"
    assert change.signoff.at > 0
    assert audit.kinds()[0] == "AdminChangeRequested"
    assert "AdminComplianceReviewed" in audit.kinds()
    assert audit.kinds()[-1] == "AdminSignedOff"
    assert all(meta["change_id"] == cid for _, _, meta in audit.records)
    # Notes (free text) never go into audit meta.
    assert not any("evidence" in str(meta) for _, _, meta in audit.records)


def test_requester_cannot_review_or_sign(store: GovernanceStore) -> None:
    cid = _tier_change(store, BOTH)  # an owner + compliance officer asks for a change
    _complete(store, cid, BOTH)
    store.submit(cid, BOTH)
    with pytest.raises(GovernanceError) as exc:
        store.review(cid, BOTH, True, "self-approval")
    assert _code(exc) == "forbidden"
    store.review(cid, COMPLIANCE, True, "ok")
    with pytest.raises(GovernanceError) as exc:
        store.sign_off(cid, BOTH, True, "self sign-off")
    assert _code(exc) == "forbidden"
    assert store.get(cid).state == "in_review"


def test_reviewer_and_signer_must_be_two_people(store: GovernanceStore) -> None:
    cid = _tier_change(store)
    _complete(store, cid)
    store.submit(cid, ENGINEER)
    store.review(cid, BOTH, True, "ok")
    with pytest.raises(GovernanceError) as exc:
        store.sign_off(cid, BOTH, True, "ok")
    assert _code(exc) == "forbidden"
    store.sign_off(cid, OWNER, True, "")
    assert store.get(cid).state == "approved"


def test_permissions_and_order(store: GovernanceStore) -> None:
    with pytest.raises(GovernanceError) as exc:
        _tier_change(store, VIEWER)
    assert _code(exc) == "forbidden"
    cid = _tier_change(store)
    # Incomplete checklist: no review yet.
    with pytest.raises(GovernanceError) as exc:
        store.submit(cid, ENGINEER)
    assert _code(exc) == "conflict" and "Rollback plan written" in str(exc.value)
    with pytest.raises(GovernanceError) as exc:
        store.review(cid, COMPLIANCE, True, "ok")
    assert _code(exc) == "conflict"
    _complete(store, cid)
    store.submit(cid, ENGINEER)
    # The owner cannot sign before the compliance review; an owner cannot review.
    with pytest.raises(GovernanceError) as exc:
        store.sign_off(cid, OWNER, True, "")
    assert _code(exc) == "conflict"
    with pytest.raises(GovernanceError) as exc:
        store.review(cid, OWNER, True, "ok")
    assert _code(exc) == "forbidden"
    with pytest.raises(GovernanceError) as exc:
        store.review(cid, COMPLIANCE, True, "   ")
    assert _code(exc) == "invalid"
    # The checklist is frozen once in review.
    with pytest.raises(GovernanceError) as exc:
        store.complete_item(cid, ENGINEER, "risk_tier", "late edit")
    assert _code(exc) == "conflict"


def test_checklist_rules(store: GovernanceStore) -> None:
    cid = _tier_change(store)
    with pytest.raises(GovernanceError) as exc:
        store.complete_item(cid, ENGINEER, "warm_transfer", "trust me")
    assert _code(exc) == "invalid"
    with pytest.raises(GovernanceError) as exc:
        store.complete_item(cid, ENGINEER, "rollback_plan", "")
    assert _code(exc) == "invalid"
    with pytest.raises(GovernanceError) as exc:
        store.complete_item(cid, ENGINEER, "nonsense", "x")
    assert _code(exc) == "invalid"
    failed = store.record_transfer_test(cid, ENGINEER, {"ok": False, "webhook_status": 500})
    assert "warm_transfer" not in failed.checklist
    ok = store.record_transfer_test(cid, ENGINEER, {"ok": True, "webhook_status": 200})
    assert "status 200" in ok.checklist["warm_transfer"].notes


def test_rejection_ends_request(store: GovernanceStore) -> None:
    cid = _tier_change(store)
    _complete(store, cid)
    store.submit(cid, ENGINEER)
    assert store.review(cid, COMPLIANCE, False, "no PHI controls").state == "rejected"
    with pytest.raises(GovernanceError):
        store.sign_off(cid, OWNER, True, "")


# -- applying -----------------------------------------------------------------------------


def _settings_file(tmp_path: Path, tiers: str = '["low"]') -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(f"[agent]\nenabled_tiers = {tiers}\n[clinic]\nname = 'Test'\n")
    return path


def _metrics(tmp_path: Path, contained: int, transferred: int) -> Path:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    base = {
        "disclosure_ok": True,
        "identity_before_phi_ok": True,
        "no_card_number_ok": True,
        "sentiment": 0.1,
        "judge": "rules",
    }
    for i in range(contained):
        s = CallScored(
            f"c{i}", outcome="resolved", contained=True, transfer_appropriate=None, **base
        )
        store.record_score(s.call_id, s)
    for i in range(transferred):
        s = CallScored(
            f"x{i}", outcome="transferred", contained=False, transfer_appropriate=True, **base
        )
        store.record_score(s.call_id, s)
    store.close()
    return db


def test_apply_refused_until_gate_met_then_rollback(
    tmp_path: Path, store: GovernanceStore, audit: Audit
) -> None:
    path = _settings_file(tmp_path)
    settings = load_settings(path)
    cid = _approved(store)
    control = Control()
    # 50% containment: the low tier's gate is not met, medium cannot be enabled.
    bad = _metrics(tmp_path / "bad", contained=5, transferred=5)
    with pytest.raises(GovernanceError) as exc:
        apply_request(
            store,
            cid,
            OWNER,
            settings=settings,
            settings_path=path,
            metrics_db=bad,
            control=control,
        )
    assert _code(exc) == "gate_not_met"
    assert not (tmp_path / "appliance.toml.d" / "60-admin.toml").exists()
    # A compliance officer may not apply.
    good = _metrics(tmp_path / "good", contained=8, transferred=2)
    with pytest.raises(GovernanceError) as exc:
        apply_request(
            store,
            cid,
            COMPLIANCE,
            settings=settings,
            settings_path=path,
            metrics_db=good,
            control=control,
        )
    assert _code(exc) == "forbidden"
    out = apply_request(
        store, cid, OWNER, settings=settings, settings_path=path, metrics_db=good, control=control
    )
    assert out.change.state == "applied" and out.reloaded
    assert control.calls == [("config.reload", {}, "user:3")]
    dropin = tmp_path / "appliance.toml.d" / "60-admin.toml"
    assert tomllib.loads(dropin.read_text())["agent"]["enabled_tiers"] == ["low", "medium"]
    assert dropin.stat().st_mode & 0o777 == 0o640
    assert load_settings(path).agent.enabled_tiers == ["low", "medium"]
    assert audit.kinds()[-1] == "AdminChangeApplied"

    # Rollback needs a reason, then restores the earlier value (the key was absent).
    with pytest.raises(GovernanceError):
        rollback_request(
            store, cid, OWNER, "", settings=settings, settings_path=path, control=control
        )
    back = rollback_request(
        store,
        cid,
        OWNER,
        "complaints rose",
        settings=settings,
        settings_path=path,
        control=Control(fail="unavailable"),
    )
    assert back.change.state == "rolled_back"
    assert not back.reloaded and "next start" in back.message
    assert load_settings(path).agent.enabled_tiers == ["low"]
    assert audit.kinds()[-1] == "AdminRolledBack"


def test_apply_without_settings_file_is_refused(tmp_path: Path, store: GovernanceStore) -> None:
    cid = _approved(store)
    good = _metrics(tmp_path, contained=8, transferred=2)
    with pytest.raises(RolloutError) as exc:
        apply_request(
            store,
            cid,
            OWNER,
            settings=load_settings(None),
            settings_path=None,
            metrics_db=good,
            control=None,
        )
    assert exc.value.code == "no_settings_file"
    assert store.get(cid).state == "approved"


def test_proposed_workflow_validation_and_apply(tmp_path: Path, store: GovernanceStore) -> None:
    faq = (default_dir() / "faq.yaml").read_text()
    header, error = validate_proposed(faq.replace("version: 1", "version: 2", 1))
    assert error == "" and header["id"] == "faq" and header["version"] == 2
    _, error = validate_proposed(faq.replace("schema: 1", "schema: 9", 1))
    assert error.startswith("proposed.yaml") and "schema" in error
    _, error = validate_proposed("id: [unclosed")
    assert "not valid YAML" in error

    wf_dir = tmp_path / "workflows"
    shutil.copytree(default_dir(), wf_dir)
    path = _settings_file(tmp_path)
    settings = load_settings(path, agent__workflows_dir=str(wf_dir))
    new_text = faq.replace("version: 1", "version: 2", 1)
    change = store.create(
        ENGINEER,
        kind="workflow",
        target="faq",
        action="update",
        from_version="1",
        to_version="2",
        reason="new FAQ",
        payload={"text": new_text},
    )
    _complete(store, change.id)
    store.submit(change.id, ENGINEER)
    store.review(change.id, COMPLIANCE, True, "ok")
    store.sign_off(change.id, OWNER, True, "ok")
    out = apply_request(
        store,
        change.id,
        OWNER,
        settings=settings,
        settings_path=path,
        metrics_db=tmp_path / "none.sqlite",
        control=None,
    )
    assert out.change.state == "applied"
    assert (wf_dir / "faq.yaml").read_text() == new_text
    rows = {w.id: w for w in running_workflows(settings)}
    assert rows["faq"].version == 2 and rows["faq"].source == "configured"
    assert "+" in rows["faq"].diff and rows["faq"].error == ""
    rollback_request(
        store, change.id, OWNER, "revert", settings=settings, settings_path=path, control=None
    )
    assert (wf_dir / "faq.yaml").read_text() == faq


def test_workflow_apply_needs_configured_dir(tmp_path: Path, store: GovernanceStore) -> None:
    faq = (default_dir() / "faq.yaml").read_text()
    change = store.create(
        ENGINEER,
        kind="workflow",
        target="faq",
        action="update",
        from_version="1",
        to_version="2",
        reason="x",
        payload={"text": faq},
    )
    _complete(store, change.id)
    store.submit(change.id, ENGINEER)
    store.review(change.id, COMPLIANCE, True, "ok")
    store.sign_off(change.id, OWNER, True, "ok")
    with pytest.raises(RolloutError) as exc:
        apply_request(
            store,
            change.id,
            OWNER,
            settings=load_settings(None),
            settings_path=None,
            metrics_db=tmp_path / "none.sqlite",
            control=None,
        )
    assert exc.value.code == "no_workflows_dir"
