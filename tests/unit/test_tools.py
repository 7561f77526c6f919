"""The tool registry: arguments come from the workflow's ``args``, one key per tool call."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import date, datetime
from pathlib import Path

import pytest

from appliance.agent.calendar import SqliteCalendar, seed_demo
from appliance.agent.dialog import DialogManager
from appliance.agent.runtime import load_agent
from appliance.agent.scheduling_tools import default_tools
from appliance.agent.tools import (
    ArgsError,
    Param,
    ToolCall,
    ToolRegistry,
    ToolResult,
    ToolSession,
    ToolSpec,
)
from appliance.agent.workflow import default_dir
from appliance.config.settings import ApplianceSettings
from appliance.events import Event, IdentityVerified, ToolCalled
from tests.conftest import NOW

MARIA_DOB = date(1982, 3, 4)


def keys_in(calendar: SqliteCalendar) -> dict[str, str]:
    """The calendar's own idempotency records: key -> operation."""
    conn = sqlite3.connect(str(calendar.path))
    try:
        return dict(conn.execute("SELECT key, operation FROM idempotency").fetchall())
    finally:
        conn.close()


def call_tool(
    registry: ToolRegistry,
    tool: str,
    calendar: SqliteCalendar | None,
    session: ToolSession,
    events: list[Event],
    *,
    args: dict[str, str] | None = None,
    slots: dict[str, object] | None = None,
    run: int = 1,
) -> ToolResult:
    return registry.call(
        tool,
        args or {},
        slots or {},
        call_id="c1",
        workflow="appointments",
        run=run,
        node="n1",
        attempt=1,
        now=NOW,
        calendar=calendar,
        session=session,
        emit=events.append,
    )


# --------------------------------------------------------------------------- arguments


def test_arguments_are_resolved_from_args_to_the_slots_typed_values() -> None:
    seen: list[ToolCall] = []

    def record(call: ToolCall) -> ToolResult:
        seen.append(call)
        return ToolResult(True, {"n": len(call.arguments)}, {"greeting": "hi"})

    registry = ToolRegistry(
        [
            ToolSpec(
                "test.record",
                record,
                params=(Param("who", ("person_name",)), Param("when", ("date_time",), False)),
                outputs=("greeting",),
            )
        ]
    )
    events: list[Event] = []
    when = datetime(2026, 11, 25, 11, 0)
    result = call_tool(
        registry,
        "test.record",
        None,
        ToolSession(),
        events,
        args={"who": "{caller}", "when": "{later}"},
        slots={"caller": "Maria Lopez", "later": when, "unrelated": "x"},
    )
    assert result.ok and result.outputs == {"greeting": "hi"}
    assert dict(seen[0].arguments) == {"who": "Maria Lopez", "when": when}
    [event] = events
    assert isinstance(event, ToolCalled) and event.tool == "test.record" and event.ok
    assert json.loads(event.arguments) == {"who": "Maria Lopez", "when": "2026-11-25T11:00:00"}
    assert event.idempotency_key == seen[0].key


def test_missing_argument_and_missing_identity_fail_without_running_the_tool(
    tmp_path: Path,
) -> None:
    calendar = seed_demo(tmp_path / "c.sqlite", NOW.date())
    try:
        events: list[Event] = []
        tools, session = default_tools(), ToolSession()
        # The birth_date slot was never filled: the tool does not run.
        result = call_tool(
            tools,
            "identity.verify",
            calendar,
            session,
            events,
            args={"name": "{patient_name}", "birth_date": "{birth_date}"},
            slots={"patient_name": "Maria Lopez"},
        )
        assert result.result == {"error": "missing_argument", "argument": "birth_date"}
        assert not [e for e in events if isinstance(e, IdentityVerified)]
        # Record tools refuse to run before the identity check.
        result = call_tool(tools, "calendar.upcoming", calendar, session, events)
        assert result.result == {"error": "identity_not_verified"}
        assert [(e.tool, e.ok) for e in events if isinstance(e, ToolCalled)] == [
            ("identity.verify", False),
            ("calendar.upcoming", False),
        ]
    finally:
        calendar.close()


def test_undeclared_output_and_a_raising_tool_are_failed_results() -> None:
    def sloppy(call: ToolCall) -> ToolResult:
        return ToolResult(True, outputs={"surprise": "x"})

    def broken(call: ToolCall) -> ToolResult:
        raise ValueError("caller content must not reach the log")

    registry = ToolRegistry([ToolSpec("t.sloppy", sloppy), ToolSpec("t.broken", broken)])
    events: list[Event] = []
    assert call_tool(registry, "t.sloppy", None, ToolSession(), events).result == {
        "error": "undeclared_output",
        "outputs": ["surprise"],
    }
    assert call_tool(registry, "t.broken", None, ToolSession(), events).result == {
        "error": "ValueError"
    }
    assert [e.ok for e in events if isinstance(e, ToolCalled)] == [False, False]


def test_registry_refuses_duplicates_and_checks_args() -> None:
    tools = default_tools()
    with pytest.raises(ValueError, match="already registered"):
        tools.register(tools.spec("calendar.book"))
    slots = {"patient_name": {"person_name"}, "birth_date": {"date_of_birth"}}
    tools.check_args(
        "identity.verify", {"name": "{patient_name}", "birth_date": "{birth_date}"}, slots
    )
    with pytest.raises(ArgsError) as info:
        tools.check_args("identity.verify", {"name": "{patient_name}"}, slots)
    assert info.value.field == "args.birth_date"
    with pytest.raises(ArgsError) as info:
        tools.check_args("calendar.teleport", {}, slots)
    assert info.value.field == "tool"


# --------------------------------------------------------------------------- idempotency


def test_one_key_goes_to_the_calendar_and_into_the_tool_called_event(tmp_path: Path) -> None:
    calendar = seed_demo(tmp_path / "c.sqlite", NOW.date())
    try:
        events: list[Event] = []
        tools, session = default_tools(), ToolSession()
        verify_args = {"name": "{patient_name}", "birth_date": "{birth_date}"}
        slots = {"patient_name": "Maria Lopez", "birth_date": MARIA_DOB}
        assert call_tool(tools, "identity.verify", calendar, session, events, args=verify_args,
                         slots=slots).ok  # fmt: skip
        assert call_tool(tools, "calendar.free_slots", calendar, session, events).ok
        booked = call_tool(tools, "calendar.book", calendar, session, events)
        assert booked.ok
        [book_event] = [
            e for e in events if isinstance(e, ToolCalled) and e.tool == "calendar.book"
        ]
        assert keys_in(calendar) == {book_event.idempotency_key: "book"}

        # The same node on the same request (a repeated turn): same key, the calendar replays.
        again = call_tool(tools, "calendar.book", calendar, session, events)
        assert again.result == booked.result
        books = [e for e in events if isinstance(e, ToolCalled) and e.tool == "calendar.book"]
        assert books[1].idempotency_key == book_event.idempotency_key
        assert len(keys_in(calendar)) == 1

        # A later workflow run is another request: another key, kept by the calendar too.
        cancelled = call_tool(tools, "calendar.cancel", calendar, session, events, run=2)
        assert cancelled.ok and cancelled.result["status"] == "cancelled"
        cancel_event = [e for e in events if isinstance(e, ToolCalled)][-1]
        assert cancel_event.idempotency_key not in (book_event.idempotency_key, "")
        assert keys_in(calendar)[cancel_event.idempotency_key] == "cancel"
    finally:
        calendar.close()


def test_dialog_reschedule_uses_the_event_key_at_the_calendar(agent) -> None:  # noqa: ANN001
    events: list[Event] = []
    dm = agent.new_dialog("c1", events.append)
    dm._now = lambda: NOW  # noqa: SLF001 - the demo calendar is seeded for NOW
    for turn in (
        "I need to reschedule my appointment.",
        "My name is Maria Lopez.",
        "March fourth, nineteen eighty two.",
        "Yes.",
        "Next Wednesday at eleven in the morning.",
        "Yes, that's right.",
    ):
        reply = dm.handle_turn(turn, 0.9)
    assert "now on Wednesday, November 25 at 11 AM" in reply.text
    [moved] = [e for e in events if isinstance(e, ToolCalled) and e.tool == "calendar.reschedule"]
    assert moved.ok
    assert keys_in(agent.calendar) == {moved.idempotency_key: "reschedule"}


# --------------------------------------------------------------------------- renamed slots


def test_a_workflow_that_renames_its_slots_still_verifies_the_caller(
    embedder,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    workflows = tmp_path / "workflows"
    shutil.copytree(default_dir(), workflows)
    path = workflows / "appointments.yaml"
    text = path.read_text()
    for old, new in (
        ("name: patient_name", "name: caller_name"),
        ('"{patient_name}"', '"{caller_name}"'),
        ("name: birth_date", "name: dob"),
        ('"{birth_date}"', '"{dob}"'),
    ):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    calendar = seed_demo(tmp_path / "c.sqlite", NOW.date())
    try:
        settings = ApplianceSettings(agent={"workflows_dir": workflows})
        agent = load_agent(settings, embedder.encode, calendar=calendar)
        events: list[Event] = []
        dm = DialogManager(
            "c1", agent.workflows, agent.classifier, agent.kb, agent.calendar, events.append,
            agent.settings, now=lambda: NOW, tools=agent.tools,
        )  # fmt: skip
        for turn in (
            "I need to reschedule my appointment.",
            "My name is Maria Lopez.",
            "March fourth, nineteen eighty two.",
        ):
            dm.handle_turn(turn, 0.9)
        reply = dm.handle_turn("Yes.", 0.9)
        assert "Dr. Patel on Tuesday, November 24 at 10:30 AM" in reply.text
        assert [e.ok for e in events if isinstance(e, IdentityVerified)] == [True]
        [verify] = [e for e in events if isinstance(e, ToolCalled) and e.tool == "identity.verify"]
        assert json.loads(verify.arguments) == {"birth_date": "1982-03-04", "name": "Maria Lopez"}
    finally:
        calendar.close()


def test_a_spelled_family_name_is_one_more_try_of_the_same_check(tmp_path: Path) -> None:
    calendar = seed_demo(tmp_path / "c.sqlite", NOW.date())
    try:
        args = {
            "name": "{patient_name}",
            "birth_date": "{birth_date}",
            "family_name": "{family_name}",
        }
        tools = default_tools()
        tools.check_args(
            "identity.verify",
            args,
            {
                "patient_name": {"person_name"},
                "birth_date": {"date_of_birth"},
                "family_name": {"spelled_name"},
            },
        )
        with pytest.raises(ArgsError):  # a spoken name is not a spelled one
            tools.check_args(
                "identity.verify",
                args,
                {
                    "patient_name": {"person_name"},
                    "birth_date": {"date_of_birth"},
                    "family_name": {"person_name"},
                },
            )
        heard = {"patient_name": "Maria Lobitz", "birth_date": MARIA_DOB}
        events: list[Event] = []
        failed = call_tool(tools, "identity.verify", calendar, ToolSession(), events,
                           args=args, slots=heard)  # fmt: skip
        assert not failed.ok and failed.outputs == {}  # nothing of the record on a failure
        session = ToolSession()
        spelled = call_tool(tools, "identity.verify", calendar, session, events, args=args,
                            slots={**heard, "family_name": "Lopez"})  # fmt: skip
        assert spelled.ok and session.patient is not None
        wrong = call_tool(tools, "identity.verify", calendar, ToolSession(), events, args=args,
                          slots={**heard, "family_name": "Carter"})  # fmt: skip
        assert not wrong.ok  # the spelled name must match the record too: not a looser check
        assert [e.ok for e in events if isinstance(e, IdentityVerified)] == [False, True, False]
    finally:
        calendar.close()
