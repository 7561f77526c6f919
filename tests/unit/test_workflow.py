"""Workflow files: the shipped set loads; corrupt files fail naming file, node and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from appliance.agent.scheduling_tools import default_tools
from appliance.agent.workflow import WorkflowError, default_dir, load_workflow, load_workflows

TOOLS = default_tools()


def test_shipped_workflows_cover_the_default_use_cases() -> None:
    ws = load_workflows(default_dir(), TOOLS)
    tiers = {wf.id: wf.risk_tier for wf in ws.workflows.values()}
    assert tiers["faq"] == "low"
    assert tiers["appointments"] == "medium"
    assert tiers["clinical"] == "high"
    intents = ws.intents()
    for name in ("clinic_question", "reschedule_appointment", "prescription_refill", "pay_copay"):
        assert name in intents


def corrupt(tmp_path: Path, old: str, new: str, name: str = "appointments.yaml") -> Path:
    target = tmp_path / "wf"
    shutil.copytree(default_dir(), target)
    path = target / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "node", "field", "says"),
    [
        ("type: date_of_birth", "type: birthday", "ask_dob", "slot.type", "Input should be"),
        ("on_ok: route", "on_ok: nowhere", "verify", "on_ok", "no node 'nowhere'"),
        (
            "tool: calendar.reschedule",
            "tool: calendar.teleport",
            "do_reschedule",
            "tool",
            "unknown",
        ),
        ("reason: low_confidence", "reason: bored", "not_verified", "reason", "must be one of"),
        (
            "{appointment_when}. What day",
            "{appointment_wen}. What day",
            "ask_new_time",
            "text",
            "appointment_wen",
        ),
        # A tool node's args must match the tool's parameters.
        (
            'args: {after: "{new_time}"}',
            'args: {after: "{new_time}", provider: "{new_time}"}',
            "find_slot",
            "args.provider",
            "calendar.free_slots does not take 'provider'",
        ),
        (
            'args: {name: "{patient_name}", birth_date: "{birth_date}"}',
            'args: {name: "{patient_name}"}',
            "verify",
            "args.birth_date",
            "identity.verify needs this argument",
        ),
        (
            'birth_date: "{birth_date}"}',
            'birth_date: "{patient_name}"}',
            "verify",
            "args.birth_date",
            "slot 'patient_name' is person_name",
        ),
        (
            'args: {after: "{new_time}"}',
            'args: {after: "next week"}',
            "find_slot",
            "args.after",
            "must be a reference to one slot",
        ),
        (
            'args: {after: "{new_time}"}',
            'args: {after: "{later}"}',
            "find_slot",
            "args.after",
            "no ask node collects slot 'later'",
        ),
    ],
)
def test_corrupt_workflow_names_file_node_and_field(
    tmp_path: Path, old: str, new: str, node: str, field: str, says: str
) -> None:
    path = corrupt(tmp_path, old, new)
    with pytest.raises(WorkflowError) as info:
        load_workflows(path.parent, TOOLS)
    err = info.value
    assert (err.file, err.node, err.field) == (path, node, field)
    assert str(path) in err.message and f"node {node!r}" in err.message and says in err.message


def test_broken_yaml_and_wrong_schema_are_file_level_errors(tmp_path: Path) -> None:
    path = corrupt(tmp_path, "risk_tier: medium", "risk_tier: [medium")
    with pytest.raises(WorkflowError, match=r"appointments\.yaml: not valid YAML at line"):
        load_workflow(path, TOOLS)
    path = corrupt(tmp_path / "b", "schema: 1", "schema: 2")
    with pytest.raises(WorkflowError, match="unsupported schema 2"):
        load_workflow(path, TOOLS)


def test_duplicate_intent_across_files_is_refused(tmp_path: Path) -> None:
    path = corrupt(tmp_path, "  callback_request:", "  clinic_question:", name="billing.yaml")
    with pytest.raises(WorkflowError, match="intent also declared in"):
        load_workflows(path.parent, TOOLS)


def test_identity_workflows_retry_with_a_spelled_family_name_then_a_person() -> None:
    from appliance.agent.workflow import AskNode, ToolNode, TransferNode

    ws = load_workflows(default_dir(), TOOLS)
    for wf_id in ("appointments", "clinical"):
        nodes = ws.workflows[wf_id].nodes
        verify, spell, again = nodes["verify"], nodes["ask_spelling"], nodes["verify_spelled"]
        assert isinstance(verify, ToolNode) and verify.on_fail == "ask_spelling"
        assert isinstance(spell, AskNode) and spell.slot.type == "spelled_name"
        assert isinstance(again, ToolNode) and again.tool == "identity.verify"
        assert again.args["family_name"] == "{family_name}"
        assert isinstance(nodes[again.on_fail], TransferNode)
        # The question names nothing of a record.
        assert "{" not in spell.text
