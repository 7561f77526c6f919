"""The reminder conversation (issue 15, Deliver item 5) on the shipped ``reminders`` workflow.

Real embeddings, the demo calendar and the real dialogue manager: identity (date of birth)
before any appointment detail, confirm / cancel / reschedule with the calendar tools, and an
opt-out said or keyed anywhere that is recorded before it is confirmed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.agent.dialog import DialogManager, Next
from appliance.agent.opt_out import is_opt_out
from appliance.agent.runtime import AgentRuntime
from appliance.agent.scheduling_tools import default_tools
from appliance.agent.workflow import (
    AskNode,
    EndNode,
    ToolNode,
    WorkflowError,
    default_dir,
    load_workflow,
)
from appliance.events import Event, IdentityVerified, ToolCalled
from tests.conftest import NOW

APPT = "appt-demo-1"  # Maria Lopez (born 1982-03-04), Dr. Patel, Tuesday November 24 10:30
DETAILS = re.compile(r"Patel|Nguyen|November|Tuesday|10:30|Maria|Lopez")


class Call:
    def __init__(self, agent: AgentRuntime) -> None:
        self.events: list[Event] = []
        self.opt_outs: list[str] = []
        self.dm = DialogManager(
            "r1", agent.workflows, agent.classifier, agent.kb, agent.calendar,
            self.events.append, agent.settings, now=lambda: NOW,
        )  # fmt: skip
        self.said: list[str] = []

    def open(self) -> str:
        return self._say(self.dm.start_outbound("reminders", APPT, self.opt_outs.append).text)

    def turn(self, text: str) -> str:
        return self._say(self.dm.handle_turn(text, 0.9).text)

    def _say(self, text: str) -> str:
        self.said.append(text)
        return text

    def tools(self) -> list[tuple[str, bool]]:
        return [(e.tool, e.ok) for e in self.events if isinstance(e, ToolCalled)]


def test_the_opening_names_the_clinic_and_the_opt_out_and_no_detail(agent: AgentRuntime) -> None:
    call = Call(agent)
    opening = call.open()
    assert "Maple Street Family Clinic" in opening
    assert "stop calling me" in opening and "press 9" in opening
    assert "date of birth" in opening
    assert not DETAILS.search(opening)


def test_confirm_after_the_date_of_birth_matches(agent: AgentRuntime) -> None:
    call = Call(agent)
    call.open()
    assert call.turn("March fourth, nineteen eighty two.") == (
        "I heard March 4, 1982. Is that right?"
    )
    assert not DETAILS.search(" ".join(call.said))  # nothing before the match
    remind = call.turn("Yes.")
    assert "Maria" in remind and "Dr. Patel" in remind and "November 24 at 10:30 AM" in remind
    bye = call.dm.handle_turn("Yes, I'll be there.", 0.9)
    assert bye.next is Next.HANGUP and "confirmed" in bye.text
    assert call.tools() == [("reminder.verify", True), ("reminder.confirm", True)]
    assert agent.calendar is not None
    assert agent.calendar.appointment(APPT).status == "booked"
    assert not call.dm.opted_out
    # The tail of the last answer, heard again as a turn, only ends the call.
    late = call.dm.handle_turn("I'll be there.", 0.9)
    assert late.next is Next.HANGUP and late.text == "Goodbye."
    assert len(call.tools()) == 2


def test_a_wrong_date_of_birth_never_hears_a_detail(agent: AgentRuntime) -> None:
    call = Call(agent)
    call.open()
    call.turn("January first, nineteen ninety.")
    again = call.turn("Yes.")
    assert "doesn't match" in again
    call.turn("February second, two thousand.")
    bye = call.dm.handle_turn("Yes.", 0.9)
    call.said.append(bye.text)
    assert bye.next is Next.HANGUP
    assert not DETAILS.search(" ".join(call.said))
    verified = [e.ok for e in call.events if isinstance(e, IdentityVerified)]
    assert verified == [False, False]
    assert call.tools() == [("reminder.verify", False), ("reminder.verify", False)]


def test_cancel_changes_the_calendar_row(agent: AgentRuntime) -> None:
    call = Call(agent)
    call.open()
    call.turn("March 4th 1982")
    call.turn("Yes.")
    assert "move it" in call.turn("No, I can't make it.")
    assert "cancel" in call.turn("No.")
    assert "cancelled" in call.turn("Yes, please.")
    assert agent.calendar is not None
    assert agent.calendar.appointment(APPT).status == "cancelled"
    assert ("calendar.cancel", True) in call.tools()


def test_reschedule_moves_the_appointment(agent: AgentRuntime) -> None:
    call = Call(agent)
    call.open()
    call.turn("March 4th 1982")
    call.turn("Yes.")
    offer = call.turn("No.")
    offer = call.turn("Yes, another time please.")
    assert offer.startswith("The next opening with Dr. Patel is")
    done = call.turn("Yes.")
    assert done.startswith("Done. Your appointment is now on")
    assert agent.calendar is not None
    moved = agent.calendar.appointment(APPT)
    assert moved.status == "booked" and moved.start > NOW
    assert ("calendar.reschedule", True) in call.tools()


@pytest.mark.parametrize("words", ["Stop calling me.", "Please take me off your list."])
def test_a_spoken_opt_out_during_the_identity_question_is_recorded_then_confirmed(
    agent: AgentRuntime, words: str
) -> None:
    call = Call(agent)
    call.open()
    reply = call.dm.handle_turn(words, 0.9)
    assert call.opt_outs == ["verbal-on-call"]
    assert reply.next is Next.HANGUP
    assert "won't get any more" in reply.text and "Maple Street" in reply.text
    assert call.dm.opted_out
    assert not DETAILS.search(reply.text)


def test_the_keypad_opt_out(agent: AgentRuntime) -> None:
    call = Call(agent)
    call.open()
    call.turn("March 4th 1982")
    call.turn("Yes.")
    reply = call.dm.handle_dtmf("9")
    assert reply is not None and reply.next is Next.HANGUP
    assert call.opt_outs == ["dtmf"]
    assert call.tools() == [("reminder.verify", True)]  # nothing confirmed


def test_an_opt_out_that_cannot_be_recorded_is_not_confirmed(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = DialogManager(
        "r2", agent.workflows, agent.classifier, agent.kb, agent.calendar, events.append,
        agent.settings, now=lambda: NOW,
    )  # fmt: skip

    def broken(method: str) -> None:
        raise OSError("consent file unwritable")

    dm.start_outbound("reminders", APPT, broken)
    reply = dm.handle_turn("Stop calling me!", 0.9)
    assert reply.next is Next.TRANSFER
    assert "won't get any more" not in reply.text
    assert not dm.opted_out


def test_inbound_callers_never_reach_the_reminder_workflow(agent: AgentRuntime) -> None:
    assert all(wf.id != "reminders" for wf, _ in agent.workflows.intents().values())
    dm = DialogManager(
        "r3", agent.workflows, agent.classifier, agent.kb, agent.calendar, lambda e: None,
        agent.settings, now=lambda: NOW,
    )  # fmt: skip
    dm.handle_turn("Stop calling me.", 0.9)  # an inbound caller: no opt-out machinery
    assert not dm.opted_out
    assert dm.handle_dtmf("9") is None


def test_no_text_before_the_identity_check_names_a_record_field() -> None:
    """Static: every node the callee can hear before ``reminder.verify`` succeeded."""
    wf = load_workflow(default_dir() / "reminders.yaml", default_tools())
    before = {"intro", "ask_dob", "ask_dob_again", "not_verified", "opted_out"}
    for node_id in before:
        assert "{appointment" not in wf.nodes[node_id].text
        assert "{patient" not in wf.nodes[node_id].text
        assert "{slot" not in wf.nodes[node_id].text
    verify = wf.nodes["verify"]
    assert isinstance(verify, ToolNode) and verify.on_ok == "remind"
    assert all(
        not (isinstance(n, AskNode) and (n.slot.dtmf or n.slot.type == "digits"))
        for n in wf.nodes.values()
    )
    assert all(n.hangup for n in wf.nodes.values() if isinstance(n, EndNode))


def test_outbound_workflow_schema_checks(tmp_path: Path) -> None:
    text = (default_dir() / "reminders.yaml").read_text()
    cases = [
        ("opt_out: opted_out", "opt_out: nowhere", "no node 'nowhere'"),
        ("direction: outbound\n", "", "an inbound workflow needs an intent"),
        (
            "      confirm_below: 1.0  # a",
            "      dtmf: true\n      confirm_below: 1.0  # a",
            "clash",
        ),
    ]
    for old, new, says in cases:
        path = tmp_path / "reminders.yaml"
        path.write_text(text.replace(old, new, 1))
        with pytest.raises(WorkflowError, match=says):
            load_workflow(path, default_tools())


def test_opt_out_phrases() -> None:
    for yes in (
        "stop calling me",
        "Don't call me again",
        "please take me off your calling list",
        "remove my number from your list",
        "I want to opt out",
        "no more calls please",
        "Do not call this number",
    ):
        assert is_opt_out(yes), yes
    for no in ("Yes I'll be there", "Can you call me back later?", "stop", "take me to the list"):
        assert not is_opt_out(no), no


def test_the_date_of_birth_question_is_heard_without_a_slot_vocabulary(
    agent: AgentRuntime,
) -> None:
    """A date vocabulary cannot spell "stop calling me": an outbound call listens freely."""
    call = Call(agent)
    call.open()
    assert call.dm.listening.kind == "free" and call.dm.listening.slot == "birth_date"
    inbound = DialogManager(
        "r4", agent.workflows, agent.classifier, agent.kb, agent.calendar, lambda e: None,
        agent.settings, now=lambda: NOW,
    )  # fmt: skip
    inbound.handle_turn("I need to reschedule my appointment.", 0.9)
    inbound.handle_turn("My name is Maria Lopez.", 0.9)
    assert inbound.listening.kind == "date"  # the inbound caller keeps the date decoding
