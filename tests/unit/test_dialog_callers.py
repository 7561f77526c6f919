"""Failures seen with real callers, replayed as transcripts through the dialogue manager.

Each test drives :class:`~appliance.agent.dialog.DialogManager` on the shipped workflows, real
embeddings and the demo calendar with the words callers said.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.agent.dialog import DialogManager, Next
from appliance.agent.replies import LANGUAGE_HOLD_TEXTS, Reply, is_fragment
from appliance.agent.runtime import AgentRuntime
from appliance.events import (
    Escalated,
    Event,
    IdentityVerified,
    IntentRecognized,
    MessageTaken,
    SlotFilled,
)
from tests.conftest import NOW

PARAPHRASES = Path(__file__).parent / "data" / "intent_paraphrases.yaml"

#: Measured on the held-out paraphrases (34 turns): 26 accepted with the right intent (0.76),
#: 31 with the right intent ranked first (0.91); before the examples were broadened 14 (0.41)
#: and 27 (0.79). The floors leave two turns of margin.
ACCEPTED_FLOOR = 0.70
TOP1_FLOOR = 0.85


def dialog(agent: AgentRuntime, events: list[Event]) -> DialogManager:
    return DialogManager(
        "c1", agent.workflows, agent.classifier, agent.kb, agent.calendar, events.append,
        agent.settings, now=lambda: NOW,
    )  # fmt: skip


def say(dm: DialogManager, *turns: str, conf: float = 0.9) -> list[Reply]:
    return [dm.handle_turn(t, conf) for t in turns]


def filled(events: list[Event]) -> dict[str, str]:
    return {e.slot: e.value for e in events if isinstance(e, SlotFilled)}


# 1. an answer to a read-back is checked against what was asked ------------------------------


def test_a_birth_date_said_during_the_name_read_back_is_not_a_name(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to reschedule my appointment.")
    check = dm.handle_turn("Maria Lopez.", 0.4)  # unsure: read back
    assert check.text == "I heard Maria Lopez. Is that right?"
    reply = dm.handle_turn("March 4th 1982", 0.9)
    # Moving on to the next question confirms the name; the date goes to the date of birth.
    assert reply.text == "I heard March 4, 1982. Is that right?"
    assert filled(events) == {"patient_name": "Maria Lopez"}
    done = dm.handle_turn("Yes.", 0.9)
    assert "Dr. Patel on Tuesday, November 24" in done.text
    assert filled(events)["birth_date"] == "March 4, 1982"
    assert [e.ok for e in events if isinstance(e, IdentityVerified)] == [True]


def test_a_poor_guess_is_read_back_again_not_confirmed_by_moving_on(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to reschedule my appointment.")
    check = dm.handle_turn("Maria Lopez.", 0.2)  # a poor guess
    assert check.text == "I heard Maria Lopez. Is that right?"
    again = dm.handle_turn("March fourth, nineteen eighty two.", 0.9)
    assert "I heard Maria Lopez. Is that right?" in again.text
    assert filled(events) == {}  # neither the guess nor the date was taken as the name
    # Confirmed now: the date said before is read back instead of asked for.
    assert dm.handle_turn("Yes.", 0.9).text.endswith("I heard March 4, 1982. Is that right?")


def test_a_date_given_for_the_name_is_kept_for_its_own_question(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to cancel my appointment.")
    reply = dm.handle_turn("March 4th 1982.", 0.9)
    assert "first and last name" in reply.text and "didn't get" not in reply.text
    assert filled(events) == {}
    assert dm.handle_turn("Maria Lopez.", 0.9).text == "I heard March 4, 1982. Is that right?"
    assert "Would you like me to cancel it?" in dm.handle_turn("Yes.", 0.9).text


# 2. every slot volunteered is taken from the same utterance ----------------------------------


def test_intent_name_and_birth_date_from_one_opening(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    first = dm.handle_turn("I need to reschedule, this is Maria Lopez, born March 4th 1982", 0.9)
    assert "name" not in first.text and "date of birth?" not in first.text
    assert first.text.endswith("I heard March 4, 1982. Is that right?")
    reply = dm.handle_turn("Yes.", 0.9)
    assert "Dr. Patel on Tuesday, November 24 at 10:30 AM" in reply.text
    assert filled(events) == {"patient_name": "Maria Lopez", "birth_date": "March 4, 1982"}


def test_a_name_and_birth_date_in_one_answer_fill_both(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need a refill of my blood pressure medication.")
    reply = dm.handle_turn("Maria Lopez, March fourth nineteen eighty two.", 0.9)
    assert reply.text == "I heard March 4, 1982. Is that right?"
    assert filled(events) == {"patient_name": "Maria Lopez"}
    assert dm.handle_turn("Yes.", 0.9).next is Next.TRANSFER
    assert [e.ok for e in events if isinstance(e, IdentityVerified)] == [True]


def test_a_day_the_caller_cannot_come_is_not_taken_as_the_new_day(agent: AgentRuntime) -> None:
    dm = dialog(agent, [])
    say(dm, "I can't make it on Friday.", "My name is Maria Lopez.", "March 4th 1982.")
    reply = dm.handle_turn("Yes.", 0.9)
    assert reply.text.endswith("What day and time would work better for you?")


# 3. corrections --------------------------------------------------------------------------------


def test_no_its_lopez_replaces_the_family_name_read_back(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to cancel my appointment.")
    assert dm.handle_turn("Maria Lopes.", 0.4).text == "I heard Maria Lopes. Is that right?"
    reply = dm.handle_turn("No, it's Lopez.", 0.9)
    assert reply.text == "Thank you. And what is your date of birth?"
    assert filled(events) == {"patient_name": "Maria Lopez"}


def test_no_wait_tuesday_replaces_the_day_read_back(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to reschedule my appointment.", "Maria Lopez.", "March 4th 1982.", "Yes.")
    check = dm.handle_turn("Next Wednesday.", 0.3)
    assert check.text == "I heard Wednesday, November 25 at 9 AM. Is that right?"
    reply = dm.handle_turn("No wait, Tuesday.", 0.9)
    assert "Sorry" not in reply.text
    assert reply.text.startswith("The first opening is Tuesday, November 24 at 9 AM")
    assert filled(events)["new_time"] == "Tuesday, November 24 at 9 AM"


def test_a_caller_who_changes_their_mind_replaces_the_day(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to reschedule my appointment.", "Maria Lopez.", "March 4th 1982.", "Yes.")
    offer = dm.handle_turn("Next Wednesday at eleven in the morning.", 0.9)
    assert offer.text.startswith("The first opening is Wednesday, November 25 at 11 AM")
    reply = dm.handle_turn("Actually, make it Thursday.", 0.9)
    assert reply.text.startswith("The first opening is Thursday, November 26 at 9 AM")
    assert "Yes" not in reply.text and "yes or a no" not in reply.text
    assert "now on Thursday, November 26 at 9 AM" in dm.handle_turn("Yes.", 0.9).text


def test_no_its_lopez_after_the_name_was_taken_replaces_it(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to cancel my appointment.", "My name is Maria Lopes.")
    reply = dm.handle_turn("No, it's Lopez.", 0.9)
    assert reply.text == "Thank you. And what is your date of birth?"
    assert [e.value for e in events if isinstance(e, SlotFilled)] == ["Maria Lopes", "Maria Lopez"]


# 4. everyday reasons reach their workflow ------------------------------------------------------


@pytest.mark.parametrize(
    "opening",
    [
        "I can't make it on Friday",
        "something came up and I need a different day",
        "I need to see the doctor",
        "my kid needs a checkup",
    ],
)
def test_an_everyday_reason_starts_the_appointment_workflow(
    agent: AgentRuntime, opening: str
) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    reply = dm.handle_turn(opening, 0.9)
    assert reply.text.endswith("What is your first and last name?"), reply.text
    # The reason was not taken as a name: the next question is still the name.
    assert filled(events) == {}


def test_intent_accuracy_on_held_out_paraphrases(agent: AgentRuntime) -> None:
    data: dict[str, list[str]] = yaml.safe_load(PARAPHRASES.read_text(encoding="utf-8"))
    intents = agent.workflows.intents()
    examples = {e.lower().strip(" .?!") for _wf, spec in intents.values() for e in spec.examples}
    turns = [(label, text) for label, texts in data.items() for text in texts]
    assert len(turns) >= 30 and set(data) <= set(intents)
    assert not [t for _, t in turns if t.lower().strip(" .?!") in examples]  # held out
    accepted = top1 = 0
    for label, text in turns:
        result = agent.classifier.classify(text)
        accepted += result.intent == label
        top1 += result.candidates[0][0] == label
    assert accepted / len(turns) >= ACCEPTED_FLOOR, (accepted, len(turns))
    assert top1 / len(turns) >= TOP1_FLOOR, (top1, len(turns))


# 5. names: spell the family name, then a person -----------------------------------------------


def test_a_name_that_fails_the_check_is_spelled_then_verified(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    replies = say(dm, "I need to cancel my appointment.", "My name is Maria Lobitz.",
                  "March 4th 1982.", "Yes.")  # fmt: skip
    assert replies[-1].text.endswith("Could you spell your last name for me, letter by letter?")
    assert dm.listening.kind == "spelling"
    # Nothing of the record (the stored name, the appointment) before the check passed.
    assert not [r for r in replies if "Lopez" in r.text or "Patel" in r.text]
    reply = dm.handle_turn("L, O, P, E, Z.", 0.9)
    assert "Dr. Patel on Tuesday, November 24" in reply.text
    assert [e.ok for e in events if isinstance(e, IdentityVerified)] == [False, True]


def test_a_wrong_spelling_hands_the_caller_to_a_person(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to reschedule my appointment.", "My name is Maria Lobitz.",
        "March 4th 1982.", "Yes.")  # fmt: skip
    reply = dm.handle_turn("L O B I T Z", 0.9)
    assert reply.next is Next.TRANSFER and reply.transfer is not None
    assert "Lopez" not in reply.text and "Maria" not in reply.text
    assert reply.transfer.context["identity_verified"] is False
    assert [e.ok for e in events if isinstance(e, IdentityVerified)] == [False, False]


def test_keypad_entry_is_still_offered_for_the_birth_date(agent: AgentRuntime) -> None:
    dm = dialog(agent, [])
    say(dm, "I need to reschedule, this is Maria Lopez, born March 4th 1982")
    offer = dm.handle_turn("No.", 0.9)
    assert "key in your date of birth as eight digits" in offer.text and dm.expects_dtmf


# 6. a turn split by a pause is joined ----------------------------------------------------------


def test_do_you_have_pause_parking_is_one_question(agent: AgentRuntime) -> None:
    dm = dialog(agent, [])
    held = dm.handle_turn("Do you have...", 0.9)
    assert held.texts == [] and held.next is Next.CONTINUE
    assert "parking" in dm.handle_turn("...parking?", 0.9).text.lower()


def test_i_wanted_to_ask_pause_about_my_bill_is_one_request(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    assert dm.handle_turn("I wanted to ask", 0.9).texts == []
    reply = dm.handle_turn("about my bill", 0.9)
    assert reply.texts and "didn't catch" not in reply.text
    assert [e.intent for e in events if isinstance(e, IntentRecognized)][-1] in (
        "pay_copay",
        "callback_request",
    )


@pytest.mark.parametrize(
    ("said", "held"),
    [
        ("I wanted to ask", True),
        ("Um, so", True),
        ("Do you have...", True),
        ("I need to talk to you about", True),
        ("Can I get a refill of my", True),
        ("Where is the clinic at?", False),
        ("I need to reschedule my appointment.", False),
        ("Yes.", False),
        ("No, that's all", False),
    ],
)
def test_obvious_fragments(said: str, held: bool) -> None:
    assert is_fragment(said) is held


def test_um_so_is_held_but_a_slot_answer_never_is(agent: AgentRuntime) -> None:
    dm = dialog(agent, [])
    assert dm.handle_turn("Um, so", 0.9).texts == []
    assert "verify your identity" in dm.handle_turn("I need a refill.", 0.9).text
    reply = dm.handle_turn("Maria and", 0.9)  # a slot turn: answered, not held
    assert reply.texts


# 7. another language -------------------------------------------------------------------------


def test_a_spanish_speaker_is_answered_in_spanish_and_handed_to_staff(
    agent: AgentRuntime,
) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    reply = dm.handle_turn(
        "Necesito cambiar mi cita.", 0.8, language="es", language_probability=0.93
    )
    assert reply.text == "Un momento, por favor. Le comunico con una persona del personal."
    assert reply.next is Next.TRANSFER and reply.transfer is not None
    assert reply.transfer.reason == "language"
    assert [e.reason for e in events if isinstance(e, Escalated)] == ["language"]


def test_language_needs_a_sure_detection_and_english_is_unchanged(agent: AgentRuntime) -> None:
    unsure = dialog(agent, []).handle_turn(
        "I need to reschedule my appointment.", 0.9, language="es", language_probability=0.5
    )
    english = dialog(agent, []).handle_turn(
        "I need to reschedule my appointment.", 0.9, language="en", language_probability=0.99
    )
    assert unsure.text == english.text and "verify your identity" in english.text
    other = dialog(agent, []).handle_turn("...", 0.9, language="de", language_probability=0.9)
    assert other.next is Next.TRANSFER and "Please hold" in other.text
    assert {"es", "zh", "vi", "tl", "fr", "ar"} <= set(LANGUAGE_HOLD_TEXTS)


# 8. a request for a person escalates in every wait state ----------------------------------------


@pytest.mark.parametrize(
    ("turns", "conf"),
    [
        ((), 0.9),  # nothing asked yet
        (("I need to reschedule my appointment.",), 0.9),  # a slot question
        (("I need to reschedule my appointment.", "Maria Lopez."), 0.4),  # a read-back
        (("I'd like to pay my carpet",), 0.6),  # an unsure intent
        (("Where can I park?",), 0.9),  # "anything else?"
        (("Can you order me a pizza?",), 0.9),  # a yes/no node
    ],
)
def test_a_request_for_a_person_escalates_while_waiting(
    agent: AgentRuntime, turns: tuple[str, ...], conf: float
) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, *turns, conf=conf)
    reply = dm.handle_turn("Can I talk to somebody?", 0.9)
    assert reply.next is Next.TRANSFER
    assert [e.reason for e in events if isinstance(e, Escalated)] == ["explicit_request"]


def test_a_message_asking_for_a_person_is_taken_as_the_message(agent: AgentRuntime) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "Can someone call me back?")
    reply = dm.handle_turn("I'd like to talk to a person about my bill.", 0.9)
    assert reply.next is Next.HANGUP
    assert len([e for e in events if isinstance(e, MessageTaken)]) == 1


# 9. a silent caller hears the pending question again --------------------------------------------


def test_silence_repeats_the_pending_question(agent: AgentRuntime) -> None:
    dm = dialog(agent, [])
    say(dm, "I need to reschedule, this is Maria Lopez, born March 4th 1982")
    assert dm.caller_silent(1).texts == [
        "Are you still there?",
        "I heard March 4, 1982. Is that right?",
    ]
    say(dm, "No.")
    assert dm.caller_silent(1).texts[-1] == "Thank you. And what is your date of birth?"
    bye = dm.caller_silent(2)
    assert bye.next is Next.HANGUP and dm.outcome == "caller_silent"


def test_a_confirmation_cut_in_two_by_a_pause_is_not_an_answer_to_the_next_question(
    agent: AgentRuntime,
) -> None:
    events: list[Event] = []
    dm = dialog(agent, events)
    say(dm, "I need to reschedule my appointment.", "My name is Maria Lopez.")
    assert dm.handle_turn("March 4th 1982.", 0.9).text == "I heard March 4, 1982. Is that right?"
    after_yes = dm.handle_turn("Yeah.", 0.9)
    assert "Dr. Patel on Tuesday, November 24" in after_yes.text
    # "...that's right." arrives as its own turn: absorbed, not "Sorry, I didn't get that."
    rest = dm.handle_turn("That's right.", 0.9)
    assert rest.text == "" and rest.next is Next.CONTINUE
    # The next real answer is taken as usual.
    assert "Wednesday" in dm.handle_turn("Next Wednesday at eleven in the morning.", 0.9).text
