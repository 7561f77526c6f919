"""Caller benchmark: reactive scripted calls, several voices, real recorded digits, on the wire.

Each call is placed by the appliance's own SIP client (``python -m appliance.app.client`` with a
JSON call script, G.711 at 8 kHz): it waits for the agent's prompt to end (Silero VAD on the
audio it receives) before each turn, as a person would, and talks over the agent only in the
barge-in scripts. Transfers (REFER) are followed to a front-desk UA (the echo UA) or declined,
as the script says. Voices: espeak-ng variants, Festival's 8 kHz diphone voices, hibari-tts,
espeak-ng Spanish, plus real recorded FSDD digits stitched into dates of birth and phone
numbers (see ``caller_voices.py``).

Every script says its expected outcome and the slots it needs with their true values. What the
agent captured is read from its own event stream (``--test-events``: ``SlotFilled``,
``TurnEnded``, ``MessageTaken``, ``CallScored``, ``TurnLatency``). Reported: task completion and
containment, per-slot accuracy (date of birth, name, phone, FSDD digits, yes/no) by voice,
voice-to-voice P50/P90 on the wire (tshark loopback capture) per reply kind with the agent's
per-stage breakdown, and the same-run echo reference.

Run: ``python -m benchmarks.callers [--limit N] [--only SUBSTR] [--voices v1,v2]`` (the full set,
one call at a time: clinic questions take about 32 s each, identity calls 55-70 s, so the full
set takes about an hour on 2 cores; ``--limit``/``--only`` for quick runs). JSON goes to
``benchmarks/results/callers-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

from benchmarks.caller_voices import ENGLISH, VOICES, fsdd_available, missing_tools, render

RESULTS = Path(__file__).resolve().parent / "results"
AGENT_RTP = 46000
CLIENT_RTP = 42000
ECHO_RTP = 47000
TARGETS = {
    "task_completion_rate": (">=", 0.90),
    "dob_capture_rate": (">=", 0.95),
    "fsdd_digit_accuracy": (">=", 0.95),
    "voice_to_voice_p50_s": ("<=", 1.0),
    "voice_to_voice_p90_s": ("<=", 1.5),
}


# ------------------------------------------------------------------------------------ scripts


@dataclass
class Turn:
    """One caller step: ``say``, ``dtmf``, ``wait`` or ``barge``.

    ``say`` is text (``{fsdd:...}`` for real digits); with ``barge`` it is said over the agent,
    ``barge`` seconds into its next prompt.

    ``slot`` names what the turn gives (dob, name, phone, yesno) and ``truth`` its true value
    (ISO date, "Given Family", digits, True/False).
    """

    say: str = ""
    dtmf: str = ""
    wait: float = 0.0
    barge: float | None = None
    slot: str | None = None
    truth: str | bool | None = None
    voice: str | None = None


@dataclass
class Script:
    """One call: turns, the outcome it should reach, how a REFER is answered."""

    name: str
    workflow: str
    turns: list[Turn]
    expect: str  # resolved | transferred | message_taken
    refer: str = "follow"
    voice: str | None = None  # fixed voice (else rotated)
    tags: list[str] = field(default_factory=list)

    def needs(self) -> dict[str, object]:
        """Slot -> true value (the last turn giving it wins: corrections)."""
        out: dict[str, object] = {}
        for t in self.turns:
            if t.slot and t.slot != "yesno":
                out[t.slot] = t.truth
        if any(t.slot == "yesno" for t in self.turns):
            out["yesno"] = [t.truth for t in self.turns if t.slot == "yesno"]
        return out


def say(text: str, slot: str | None = None, truth: str | bool | None = None) -> Turn:
    return Turn(say=text, slot=slot, truth=truth)


def yes(text: str = "Yes, that's right.") -> Turn:
    return Turn(say=text, slot="yesno", truth=True)


def no(text: str = "No, that's all, thank you.") -> Turn:
    return Turn(say=text, slot="yesno", truth=False)


def key(digits: str, slot: str | None = None, truth: str | None = None) -> Turn:
    return Turn(dtmf=digits, slot=slot, truth=truth)


def name(text: str, truth: str) -> Turn:
    return say(text, "name", truth)


def dob(text: str, truth: str) -> Turn:
    return say(text, "dob", truth)


# The demo calendar's fictional patients (src/appliance/agent/calendar/demo.py).
MARIA = ("Maria Lopez", "1982-03-04")
JAMES = ("James Carter", "1975-11-20")
AISHA = ("Aisha Khan", "1990-07-15")
ROBERT = ("Robert Brown", "1968-09-12")
LINDA = ("Linda Miller", "1955-01-30")


def ident(who: tuple[str, str], name_text: str, dob_text: str, *, keyed: bool = False) -> list:
    """Name, date of birth and (spoken only: it is always read back) the yes to the read-back."""
    turns = [name(name_text, who[0])]
    if keyed:
        d = date.fromisoformat(who[1])
        turns.append(key(f"{d:%m%d%Y}", "dob", who[1]))
    else:
        turns += [dob(dob_text, who[1]), yes()]
    return turns


def faq(n: str, question: str, bye: str = "No, that's all, thank you.") -> Script:
    return Script(n, "faq", [say(question), no(bye)], "resolved")


SCRIPTS: list[Script] = [
    # --- clinic questions (knowledge base), phrased unlike the workflow's examples
    faq("faq-hours-sat", "Hi there, are you folks open Saturday mornings?"),
    faq("faq-hours-week", "What hours are you open Monday through Friday?", "Nope, that's it."),
    faq("faq-hours-late", "How late are you open in the evening?"),
    faq("faq-address", "Could you tell me the street address of the office?", "No thanks."),
    faq("faq-directions", "I'm coming for the first time, where exactly is the clinic?"),
    faq("faq-parking", "Is there somewhere I can leave my car when I come in?"),
    faq("faq-parking-cost", "Do I have to pay for parking at your building?", "No, thanks."),
    faq("faq-insurance-aetna", "Are you in network with Aetna?"),
    faq("faq-insurance-list", "What kinds of health insurance do you work with?", "Nope."),
    faq("faq-medicare", "Do you accept Medicare patients?"),
    faq("faq-walkin", "Can I just stop by without an appointment?"),
    faq("faq-cancel-fee", "If I cancel the same day, will I be charged?", "No, that's all."),
    faq("faq-first-visit", "I'm a new patient, what do I need to bring with me?"),
    faq("faq-sunday", "Is anybody there on Sundays?", "No, that's everything."),
    Script(
        "faq-two-questions",
        "faq",
        [say("What's your address?"), yes("Yes, one more."), say("And where do I park?"), no()],
        "resolved",
    ),
    Script(
        "faq-barge-in",
        "faq",
        [
            Turn(say="Sorry to cut in, I just need your address.", barge=1.0),
            no("No, that's all."),
        ],
        "resolved",
        tags=["barge-in"],
    ),
    Script(
        "faq-barge-answer",
        "faq",
        [
            say("What are your opening hours?"),
            Turn(say="Okay, and do you take walk-ins?", barge=1.5),
            no("No, thanks."),
        ],
        "resolved",
        tags=["barge-in"],
    ),
    Script(
        "faq-silence-first",
        "faq",
        [Turn(wait=12.0), say("Sorry, I was distracted. When do you open tomorrow?"), no()],
        "resolved",
        tags=["silence"],
    ),
    # --- off-topic and out of scope
    Script(
        "offtopic-weather",
        "general",
        [say("Is it supposed to rain this afternoon?"), no("No, never mind."), no("No.")],
        "resolved",
        tags=["off-topic"],
    ),
    Script(
        "offtopic-pizza",
        "general",
        [say("Can you recommend a good pizza place nearby?"), no("Nah, forget it."), no("No.")],
        "resolved",
        tags=["off-topic"],
    ),
    Script(
        "offtopic-then-person",
        "general",
        [say("Do you sell gift cards for the spa next door?"), yes("Yes please.")],
        "transferred",
        tags=["off-topic"],
    ),
    # --- Spanish speaker: should be handed to a person
    Script(
        "spanish-appointment",
        "general",
        [
            Turn(say="Hola, necesito hacer una cita con el doctor, por favor.", voice="espeak-es"),
            Turn(say="Sí, por favor. No hablo inglés.", voice="espeak-es"),
        ],
        "transferred",
        voice="espeak-es",
        tags=["spanish"],
    ),
    Script(
        "spanish-question",
        "general",
        [
            Turn(say="Buenos días. ¿Hay alguien que hable español?", voice="espeak-es"),
            Turn(say="Sí, gracias.", voice="espeak-es"),
        ],
        "transferred",
        voice="espeak-es",
        tags=["spanish"],
    ),
    # --- transfer to a person
    Script(
        "person-frontdesk",
        "general",
        [say("Could I talk to somebody at the front desk?")],
        "transferred",
    ),  # fmt: skip
    Script(
        "person-human", "general", [say("I'd rather speak with a human, please.")], "transferred"
    ),  # fmt: skip
    Script(
        "person-nurse", "general", [say("Can you put me through to a nurse?")], "transferred"
    ),  # fmt: skip
    Script(
        "person-declined-message",
        "general",
        [
            say("I need to talk to someone in the office."),
            say(
                "Hi, this is Linda Miller, please call me back at {fsdd:555 201 4477}.",
                "phone",
                "5552014477",
            ),
        ],
        "message_taken",
        refer="decline",
        tags=["fsdd-phone"],
    ),
    # --- messages (callbacks)
    Script(
        "message-referral",
        "billing",
        [
            say("Could somebody from the office give me a call back?"),
            say(
                "It's about my referral. My number is five five five, three one two, "
                "eight eight four oh.",
                "phone",
                "5553128840",
            ),
        ],
        "message_taken",
    ),
    Script(
        "message-fsdd-phone",
        "billing",
        [
            say("I want to leave a message for the billing office."),
            say(
                "My number is {fsdd:555 867 5309}. It's about a double charge.",
                "phone",
                "5558675309",
            ),  # fmt: skip
        ],
        "message_taken",
        tags=["fsdd-phone"],
    ),
    Script(
        "message-grouped-phone",
        "billing",
        [
            say("Can I leave a message for the doctor's assistant?"),
            say(
                "Please call me at five five five, two twelve, forty four, ninety.",
                "phone",
                "5552124490",
            ),  # fmt: skip
        ],
        "message_taken",
        tags=["groups"],
    ),
    # --- billing: card payment with the PCI pause
    Script(
        "pay-balance",
        "billing",
        [
            say("I got a bill in the mail and I'd like to pay it now."),
            key("4111111111111111#"),
            key("1230"),
            key("123#"),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "pay-card",
        "billing",
        [
            say("Can I settle my balance with a credit card?"),
            key("5555555555554444#"),
            key("1230"),
            key("123#"),
            no("No, that's it."),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "pay-visit",
        "billing",
        [
            say("How do I pay for my last visit?"),
            key("4012888888881881#"),
            key("1230"),
            key("123#"),
            no(),
        ],
        "resolved",
    ),
    # --- clinical: refills and results (verify, then a person)
    Script(
        "refill-maria",
        "clinical",
        [
            say("I'm almost out of my blood pressure pills."),
            *ident(MARIA, "Maria Lopez.", "March fourth, nineteen eighty two."),
        ],  # fmt: skip
        "transferred",
    ),
    Script(
        "refill-fsdd-dob",
        "clinical",
        [
            say("I need my inhaler prescription renewed."),
            *ident(ROBERT, "This is Robert Brown.", "{fsdd:09 12 1968}"),
        ],  # fmt: skip
        "transferred",
        tags=["fsdd-dob"],
    ),
    Script(
        "results-james",
        "clinical",
        [
            say("I had blood work done last week, is it back yet?"),
            *ident(JAMES, "James Carter.", "November twentieth, nineteen seventy five."),
        ],  # fmt: skip
        "transferred",
    ),
    Script(
        "results-keyed",
        "clinical",
        [
            say("I'm calling to find out about my lab work."),
            *ident(LINDA, "Linda Miller.", "", keyed=True),
        ],  # fmt: skip
        "transferred",
    ),
    Script(
        "refill-declined",
        "clinical",
        [
            say("I need more of my thyroid medication."),
            *ident(AISHA, "Aisha Khan.", "July fifteenth, nineteen ninety."),
            say("Please have the nurse call me at {fsdd:555 430 1298}.", "phone", "5554301298"),
        ],
        "message_taken",
        refer="decline",
        tags=["fsdd-phone"],
    ),
    Script(
        "results-unknown-apostrophe",
        "clinical",
        [
            say("I'm calling about my biopsy results."),
            name("Siobhan O'Connor.", "Siobhan O'Connor"),
            dob("June second, nineteen seventy.", "1970-06-02"),
            yes(),
            name("Siobhan O'Connor.", "Siobhan O'Connor"),
            dob("June second, nineteen seventy.", "1970-06-02"),
            yes(),
        ],
        "transferred",
        tags=["apostrophe"],
    ),
    # --- booking
    Script(
        "book-aisha",
        "appointments",
        [
            say("Hi, I'd like to come in and see the doctor sometime next week."),
            *ident(AISHA, "Aisha Khan.", "July fifteenth, nineteen ninety."),
            say("Next Monday at nine in the morning."),
            yes("Yes, book it."),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "book-linda-keyed",
        "appointments",
        [
            say("I need to set up a checkup."),
            *ident(LINDA, "Linda Miller.", "", keyed=True),
            say("Wednesday afternoon, around two."),
            yes("That works."),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "book-groups",
        "appointments",
        [
            say("Could you get me in to see Dr. Patel?"),
            *ident(AISHA, "Aisha Khan.", "Oh seven, fifteen, nineteen ninety."),
            say("Tuesday at ten in the morning."),
            yes("Sure."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["groups"],
    ),
    Script(
        "book-groups-2digit-year",
        "appointments",
        [
            say("I want to make an appointment for a physical."),
            *ident(LINDA, "Linda Miller.", "Oh one, thirty, fifty five."),
            say("Thursday morning at eleven."),
            yes("Yes please."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["groups"],
    ),
    Script(
        "book-fsdd-dob",
        "appointments",
        [
            say("I'd like to schedule a visit, please."),
            *ident(LINDA, "My name is Linda Miller.", "{fsdd:01 30 1955}"),
            say("Friday at three in the afternoon."),
            yes("Yes."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["fsdd-dob"],
    ),
    Script(
        "book-fsdd-dob-2",
        "appointments",
        [
            say("Can I get an appointment for my back pain?"),
            *ident(AISHA, "Aisha Khan.", "It's {fsdd:07 15 1990}"),
            say("Monday at one in the afternoon."),
            yes("That's fine."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["fsdd-dob"],
    ),
    Script(
        "book-spelled-name",
        "appointments",
        [
            say("I'd like to book a flu shot appointment."),
            *ident(
                AISHA, "Aisha Khan, that's A I S H A, K H A N.", "July fifteen, nineteen ninety."
            ),
            say("Next Tuesday at eleven."),
            yes("Perfect."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["rare-spelling"],
    ),
    Script(
        "book-changes-mind",
        "appointments",
        [
            say("I'd like an appointment please."),
            *ident(LINDA, "Linda Miller.", "January thirtieth, nineteen fifty five."),
            say("Monday at ten in the morning."),
            no("Hmm, actually no, that doesn't work for me."),
            say("Thursday at two in the afternoon instead."),
            yes("Yes, that one."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["changes-mind"],
    ),
    Script(
        "book-dob-correction",
        "appointments",
        [
            say("I want to schedule a follow up visit."),
            name("Aisha Khan.", AISHA[0]),
            dob("July fifth, nineteen ninety.", "1990-07-05"),
            no("No, that's wrong."),
            dob("It's July fifteenth, nineteen ninety. One five.", AISHA[1]),
            yes(),
            say("Wednesday at nine in the morning."),
            yes("Great."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["correction"],
    ),
    Script(
        "book-unknown-apostrophe",
        "appointments",
        [
            say("Hi, I'd like to make my first appointment."),
            name("D'Angelo Okonkwo-Smith.", "D'Angelo Okonkwo-Smith"),
            dob("April ninth, two thousand one.", "2001-04-09"),
            yes(),
            name("D'Angelo Okonkwo-Smith.", "D'Angelo Okonkwo-Smith"),
            dob("April ninth, two thousand one.", "2001-04-09"),
            yes(),
        ],
        "transferred",
        tags=["apostrophe"],
    ),
    Script(
        "book-fast-talker",
        "appointments",
        [
            say(
                "Hi yeah I need to book a checkup this is Aisha Khan date of birth July fifteenth "
                "nineteen ninety anything next week works."
            ),
            *ident(AISHA, "Aisha Khan.", "July fifteenth, nineteen ninety."),
            say("Monday at eleven in the morning."),
            yes("Yep."),
            no("Nope, thanks."),
        ],  # fmt: skip
        "resolved",
        tags=["fast-talker"],
    ),
    # --- rescheduling
    Script(
        "resched-maria",
        "appointments",
        [
            say("Something came up and I can't make my Tuesday appointment."),
            *ident(MARIA, "Maria Lopez.", "March fourth, nineteen eighty two."),
            say("How about next Wednesday at eleven?"),
            yes("Yes, move it."),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "resched-maria-keyed",
        "appointments",
        [
            say("I have to push my appointment back a few days."),
            *ident(MARIA, "It's Maria Lopez.", "", keyed=True),
            say("Friday at ten in the morning."),
            yes("Sounds good."),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "resched-james",
        "appointments",
        [
            say("Can we find a different day for my visit with Dr. Nguyen?"),
            *ident(JAMES, "James Carter.", "The twentieth of November, nineteen seventy five."),
            say("Monday at two in the afternoon."),
            yes("Yes."),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "resched-robert-fsdd",
        "appointments",
        [
            say("I need to switch my appointment to another time."),
            *ident(ROBERT, "Robert Brown.", "{fsdd:09 12 1968}"),
            say("Thursday at ten in the morning."),
            yes("Okay."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["fsdd-dob"],
    ),
    Script(
        "resched-fsdd-mixed",
        "appointments",
        [
            say("My appointment time doesn't work anymore."),
            *ident(MARIA, "Maria Lopez.", "March fourth, {fsdd:1982}"),
            say("Next Thursday at nine."),
            yes("Yes please."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["fsdd-dob"],
    ),
    Script(
        "resched-name-correction",
        "appointments",
        [
            say("Could I move my appointment?"),
            name("Robert Browne.", ROBERT[0]),
            dob("September twelfth, nineteen sixty eight.", ROBERT[1]),
            yes(),
            say("Wednesday at three in the afternoon."),
            yes("Yes."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["rare-spelling"],
    ),
    Script(
        "resched-groups",
        "appointments",
        [
            say("I need to change when I'm coming in."),
            *ident(JAMES, "James Carter.", "Eleven, twenty, nineteen seventy five."),
            say("Friday at eleven in the morning."),
            yes("Yes."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["groups"],
    ),
    Script(
        "resched-changes-mind",
        "appointments",
        [
            say("I want to reschedule."),
            *ident(ROBERT, "Robert Brown.", "September twelfth, nineteen sixty eight."),
            say("Monday at nine in the morning."),
            no("Wait, no, not Monday."),
            say("Let's do Wednesday at ten instead."),
            yes("Yes, that's better."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["changes-mind"],
    ),
    Script(
        "resched-silence-mid",
        "appointments",
        [
            say("I'd like to pick a new date for my appointment."),
            name("Maria Lopez.", MARIA[0]),
            Turn(wait=10.0),
            dob("Sorry. March fourth, nineteen eighty two.", MARIA[1]),
            yes(),
            say("Thursday at eleven in the morning."),
            yes("Yes."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["silence"],
    ),
    Script(
        "resched-barge-in",
        "appointments",
        [
            say("I need to reschedule my visit."),
            Turn(say="Maria Lopez.", barge=1.0, slot="name", truth=MARIA[0]),
            dob("March fourth, nineteen eighty two.", MARIA[1]),
            yes(),
            say("Friday at two in the afternoon."),
            yes("Yes."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["barge-in"],
    ),
    # --- cancelling (kept ones first; real cancellations last, they change the calendar)
    Script(
        "cancel-keeps-it",
        "appointments",
        [
            say("I think I need to cancel my appointment."),
            *ident(MARIA, "Maria Lopez.", "March fourth, nineteen eighty two."),
            no("Actually no, I'll keep it."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["changes-mind"],
    ),
    Script(
        "cancel-none-booked",
        "appointments",
        [
            say("Please take me off the schedule."),
            *ident(LINDA, "Linda Miller.", "January thirtieth, nineteen fifty five."),
            no("No, that's fine."),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "cancel-keeps-keyed",
        "appointments",
        [
            say("I might not make it on Thursday, can you cancel?"),
            *ident(JAMES, "James Carter.", "", keyed=True),
            no("Hmm, no, leave it as it is."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["changes-mind"],
    ),
    Script(
        "cancel-robert",
        "appointments",
        [
            say("I won't be coming in on Tuesday, please cancel it."),
            *ident(ROBERT, "Robert Brown.", "September twelfth, nineteen sixty eight."),
            yes("Yes, cancel it."),
            no(),
        ],  # fmt: skip
        "resolved",
    ),
    Script(
        "cancel-james-fsdd",
        "appointments",
        [
            say("I need to call off my appointment."),
            *ident(JAMES, "James Carter.", "{fsdd:11 20 1975}"),
            yes("Yes please."),
            no(),
        ],  # fmt: skip
        "resolved",
        tags=["fsdd-dob"],
    ),
]


def _variants() -> list[Script]:
    """Second takes of the identity-heavy scripts in other voices and phrasings."""
    out = []
    more = [
        ("refill-2", "clinical", "Could I get a refill on my cholesterol medicine?", MARIA,
         "Maria Lopez.", "{fsdd:03 04 1982}", "transferred", ["fsdd-dob"]),
        ("results-2", "clinical", "Have my x-ray results come in?", ROBERT, "Robert Brown.",
         "Nine twelve nineteen sixty eight.", "transferred", ["groups"]),
        ("results-3", "clinical", "Did the doctor look at my test yet?", AISHA, "Aisha Khan.",
         "{fsdd:07 15 1990}", "transferred", ["fsdd-dob"]),
        ("refill-3", "clinical", "My prescription ran out yesterday.", JAMES, "James Carter.",
         "{fsdd:11 20 1975}", "transferred", ["fsdd-dob"]),
        ("refill-4", "clinical", "I'd like to renew my allergy medicine.", LINDA,
         "Linda Miller.", "The thirtieth of January, nineteen fifty five.", "transferred", []),
    ]  # fmt: skip
    for n, wf, intent, who, name_text, dob_text, expect, tags in more:
        out.append(Script(n, wf, [say(intent), *ident(who, name_text, dob_text)], expect,
                          tags=tags))  # fmt: skip
    out += [
        faq("faq-hours-holiday", "Are you open on public holidays?"),
        faq("faq-parking-2", "Where should I park when I get there?", "No, thank you."),
        faq("faq-insurance-bc", "I have Blue Cross Blue Shield, is that okay?"),
        Script(
            "person-billing",
            "general",
            [say("Let me speak to someone about my account.")],
            "transferred",
        ),  # fmt: skip
    ]
    return out


SCRIPTS += _variants()
# Real cancellations last (they change the demo calendar for later calls).
SCRIPTS.sort(key=lambda s: s.name in ("cancel-robert", "cancel-james-fsdd"))


# ------------------------------------------------------------------------------------ running


def voice_of(i: int, script: Script, voices: list[str]) -> str:
    return script.voice or voices[i % len(voices)]


def build_call(script: Script, voice: str, work: Path, cache: Path) -> tuple[Path, list[dict]]:
    """Render the script's WAVs and write its client JSON; returns (script path, turn info)."""
    steps: list[dict[str, object]] = []
    info: list[dict[str, object]] = []
    for k, t in enumerate(script.turns):
        v = t.voice or voice
        if t.dtmf:
            steps.append({"dtmf": t.dtmf})
            src = "keypad"
        elif t.say:
            wav = render(t.say, v, cache, seed=k)
            step: dict[str, object] = {"say": str(wav)}
            if t.barge is not None:
                step = {"barge": str(wav), "after_s": t.barge}
            steps.append(step)
            src = f"fsdd+{v}" if "{fsdd:" in t.say else v
        else:
            steps.append({"wait": t.wait})
            src = "silence"
        info.append(
            {
                "turn": k,
                "source": src,
                **{a: b for a, b in asdict(t).items() if b is not None and b != ""},
            }
        )
    path = work / "script.json"
    path.write_text(json.dumps({"steps": steps}, indent=1))
    return path, info


def place(uri: str, script_path: Path, refer: str, work: Path) -> dict:
    report = work / "client.json"
    argv = [
        sys.executable, "-m", "appliance.app.client", uri, "--script", str(script_path),
        "--report", str(report), "--refer", refer, "--rtp-port", str(CLIENT_RTP),
        "--max-duration-s", "300", "--turn-timeout-s", "25",
    ]  # fmt: skip
    try:
        run = subprocess.run(argv, capture_output=True, text=True, timeout=360)  # noqa: S603
        (work / "client.log").write_text(run.stdout + run.stderr)
    except subprocess.TimeoutExpired:
        return {"status": "client timeout", "turns": []}
    if not report.exists():
        return {"status": f"client failed rc={run.returncode}", "turns": []}
    return dict(json.loads(report.read_text()))


def wire_turns(cap: Path, t0: float, turns: list[dict]) -> list[float | None]:
    """Voice-to-voice per client turn from the capture.

    Last voiced caller packet of the turn to the agent's first voiced packet after it (None:
    barge-in, DTMF or no answer).
    """
    from benchmarks.wire import voiced_times
    from tests.kit.pcap import read_rtp_streams

    streams = read_rtp_streams(cap)

    def pick(src_lo: int, dst_lo: int):  # noqa: ANN202
        cands = [
            s for s in streams
            if src_lo <= s.src[1] < src_lo + 1000 and dst_lo <= s.dst[1] < dst_lo + 1000
            and s.audio_packets
        ]  # fmt: skip
        return max(cands, key=lambda s: len(s.audio_packets)) if cands else None

    caller, agent = pick(CLIENT_RTP, AGENT_RTP), pick(AGENT_RTP, CLIENT_RTP)
    if caller is None or agent is None:
        return [None] * len(turns)
    cv, av = voiced_times(caller), voiced_times(agent)
    out: list[float | None] = []
    for j, t in enumerate(turns):
        if t.get("kind") != "say":
            out.append(None)
            continue
        lo, hi = t0 + float(t["start_s"]) - 0.2, t0 + float(t["caller_end_s"]) + 0.6
        mine = [x for x in cv if lo <= x <= hi]
        if not mine:
            out.append(None)
            continue
        end = max(mine)
        nxt = t0 + float(turns[j + 1]["start_s"]) if j + 1 < len(turns) else end + 30
        if [x for x in av if end - 0.4 <= x <= end]:
            out.append(None)  # the agent was still talking when the caller stopped
            continue
        reply = [x for x in av if end < x < nxt]
        out.append(round(min(reply) - end, 3) if reply else None)
    return out


def norm_name(s: str) -> str:
    return re.sub(r"[^a-z]", "", s.lower())


def dob_display(iso: str) -> str:
    d = date.fromisoformat(iso)
    return f"{d:%B} {d.day}, {d.year}"


def dob_digits(display: str) -> str:
    from datetime import datetime

    try:
        return f"{datetime.strptime(display, '%B %d, %Y'):%m%d%Y}"
    except ValueError:
        return ""


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def dist(values: list[float]) -> dict[str, float | int | None]:
    return {"p50": pct(values, 0.5), "p90": pct(values, 0.9), "n": len(values)}


def score_call(script: Script, info: list[dict], client: dict, events: list[dict]) -> dict:
    """Slot results from the agent's events against the script's truths."""
    from appliance.agent.understanding import itn, yes_no

    t0 = float(client.get("t0_epoch") or 0.0)
    cturns = list(client.get("turns") or [])
    filled = [e for e in events if e["kind"] == "SlotFilled"]
    heard = [e for e in events if e["kind"] == "TurnEnded"]
    slots: list[dict[str, object]] = []
    needs = script.needs()
    src_of = {}
    for t in info:
        if t.get("slot"):
            src_of[t["slot"]] = t["source"]
    if "dob" in needs:
        got = [e["value"] for e in filled if e["slot"] == "birth_date"]
        truth = str(needs["dob"])
        slots.append({"slot": "dob", "truth": truth, "got": got[-1] if got else None,
                      "ok": bool(got) and got[-1] == dob_display(truth),
                      "source": src_of.get("dob")})  # fmt: skip
        if "fsdd" in str(src_of.get("dob")):
            want = date.fromisoformat(truth).strftime("%m%d%Y")
            have = dob_digits(got[-1]) if got else ""
            right = sum(a == b for a, b in zip(want, have.ljust(8), strict=True))
            slots.append({"slot": "fsdd_digits", "truth": want, "got": have, "right": right,
                          "of": 8, "ok": have == want, "source": src_of.get("dob")})  # fmt: skip
    if "name" in needs:
        got = [e["value"] for e in filled if e["slot"] == "patient_name"]
        truth = str(needs["name"])
        slots.append({"slot": "name", "truth": truth, "got": got[-1] if got else None,
                      "ok": bool(got) and norm_name(got[-1]) == norm_name(truth),
                      "source": src_of.get("name")})  # fmt: skip
    if "phone" in needs:
        msgs = [e.get("text", "") for e in events if e["kind"] == "MessageTaken"]
        digits = [re.sub(r"\D", "", itn(m)) for m in msgs]
        truth = str(needs["phone"])
        slots.append({"slot": "phone", "truth": truth, "got": msgs[-1] if msgs else None,
                      "ok": any(truth in d for d in digits),
                      "source": src_of.get("phone")})  # fmt: skip
    # yes/no: what the agent heard in the turn after each yes/no step, through its own yes_no()
    steps_to_client = {int(t["step"]): t for t in cturns}
    for t in info:
        if t.get("slot") != "yesno":
            continue
        ct = steps_to_client.get(int(t["turn"]))
        if ct is None:
            slots.append({"slot": "yesno", "truth": t["truth"], "got": None, "ok": False,
                          "source": t["source"], "note": "not reached"})  # fmt: skip
            continue
        lo = t0 + float(ct["start_s"])
        nxt = [t0 + float(c["start_s"]) for c in cturns if float(c["start_s"]) > ct["start_s"]]
        hi = min(nxt) if nxt else lo + 60
        said = [e["user_text"] for e in heard if lo <= e["t"] < hi]
        answers = [yes_no(s) for s in said]
        got = next((a for a in answers if a is not None), None)
        slots.append({"slot": "yesno", "truth": t["truth"], "got": got, "heard": said,
                      "ok": got is (t["truth"] is True), "source": t["source"]})  # fmt: skip
    return {"slots": slots}


def classify(text: str, source: str, fixed: set[str], kb_answers: list[str]) -> str:
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    if source == "kb" or any(a in text for a in kb_answers):
        return "kb"
    if sentences and all(s in fixed for s in sentences):
        return "pre-rendered"
    return "dynamic"


def main() -> int:  # noqa: C901, PLR0915
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="run only the first N scripts")
    ap.add_argument(
        "--only",
        default=None,
        help="scripts whose name contains this (comma-separated: any of these; exact names win)",
    )
    ap.add_argument("--voices", default=",".join(ENGLISH),
                    help=f"English voices to rotate through (of {', '.join(ENGLISH)})")  # fmt: skip
    ap.add_argument("--list", action="store_true", help="list the scripts and exit")
    args = ap.parse_args()
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    bad = [v for v in voices if v not in VOICES]
    if bad:
        ap.error(f"unknown voices: {bad}")
    wanted = [w for w in (args.only or "").split(",") if w]
    exact = [s for s in SCRIPTS if s.name in wanted]
    if wanted and len(exact) == len(wanted):
        scripts = exact
    else:
        scripts = [s for s in SCRIPTS if not wanted or any(w in s.name for w in wanted)]
    if args.limit is not None:
        scripts = scripts[: args.limit]
    if args.list:
        for i, s in enumerate(scripts):
            print(f"{s.name:28s} {s.workflow:13s} {s.expect:14s} {voice_of(i, s, voices):13s} "
                  f"{json.dumps(s.needs())}")  # fmt: skip
        print(f"{len(scripts)} scripts")
        return 0
    missing = missing_tools([*voices, "espeak-es"])
    if missing or not fsdd_available():
        print(f"missing: {missing or ''} {'' if fsdd_available() else 'FSDD data'}")
        return 2

    from benchmarks.wire import Echo, conversation_call
    from tests.e2e.capture import LoopbackCapture
    from tests.e2e.server import ApplianceProcess, free_udp_port

    work = Path(tempfile.mkdtemp(prefix="appliance-callers-"))
    cache = work / "voices"
    print(f"work dir {work}", flush=True)
    echo_port = free_udp_port()
    echo = Echo(echo_port, ECHO_RTP)  # the front desk for transfers, and the reference
    rows: list[dict] = []
    try:
        print("reference: echo UA ...", flush=True)
        (work / "echo").mkdir()
        try:
            ref = conversation_call(f"127.0.0.1:{echo_port}", ECHO_RTP, work / "echo", [0, 1, 2],
                                    reply_wait_ms=1500, opening_ms=500)  # fmt: skip
            ref_lat = [t.latency for t in ref if t.latency is not None]
        except (RuntimeError, ValueError) as exc:
            print(f"echo reference failed: {exc}")
            ref_lat = []
        (work / "agent").mkdir()
        proc = ApplianceProcess(
            work / "agent",
            sip_port=free_udp_port(),
            rtp_port=AGENT_RTP,
            max_calls=2,
            extra_toml=(
                "[agent]\nidle_timeout_s = 600\n[scheduling]\ndemo_seed = true\n"
                f'[transfer]\ntarget = "sip:frontdesk@127.0.0.1:{echo_port}"\ntimeout_s = 15\n'
            ),
        )
        print("appliance: starting ...", flush=True)
        proc.start()
        try:
            from appliance.agent.runtime import load_agent
            from appliance.config.settings import load_settings
            from appliance.models.engines import EmbeddingEngine
            from tests.conftest import STORE

            emb = EmbeddingEngine(STORE / "embedding" / "all-MiniLM-L6-v2")
            runtime = load_agent(load_settings(proc.config), emb.encode)
            fixed = set(runtime.fixed_phrases())
            kb_answers = list(runtime.kb.answers)
            for i, script in enumerate(scripts):
                voice = voice_of(i, script, voices)
                cwork = work / f"call{i:02d}-{script.name}"
                cwork.mkdir()
                script_path, info = build_call(script, voice, cwork, cache)
                known = {e["call_id"] for e in proc.events() if e["kind"] == "CallOffered"}
                cap = cwork / "call.pcap"
                t_wall = time.monotonic()
                with LoopbackCapture(cap, bpf="udp"):
                    client = place(f"sip:bench@{proc.uri}", script_path, script.refer, cwork)
                call_id = next((e["call_id"] for e in proc.events()
                                if e["kind"] == "CallOffered" and e["call_id"] not in known),
                               None)  # fmt: skip
                deadline = time.monotonic() + 45
                while call_id and time.monotonic() < deadline:
                    if any(e["kind"] == "CallScored" and e["call_id"] == call_id
                           for e in proc.events()):  # fmt: skip
                        break
                    time.sleep(0.5)
                events = [e for e in proc.events() if call_id and e["call_id"] == call_id]
                score = next((e for e in reversed(events) if e["kind"] == "CallScored"), {})
                t0 = float(client.get("t0_epoch") or 0.0)
                try:
                    v2v = wire_turns(cap, t0, list(client.get("turns") or [])) if t0 else []
                except (ValueError, OSError):
                    v2v = []
                spoken = [e for e in events if e["kind"] == "AgentSpoke"
                          and e.get("source") not in ("opening", "disclosure",
                                                      "greeting")]  # fmt: skip
                lats = [e for e in events if e["kind"] == "TurnLatency"]
                turns = []
                for ct, lat in zip(client.get("turns") or [], v2v, strict=False):
                    end = t0 + float(ct["caller_end_s"])
                    reply = next((e for e in spoken if e["t"] >= end - 0.3), None)
                    stage = next((e for e in lats if e["t"] >= end - 0.3), None)
                    turns.append({
                        "step": ct["step"], "kind": ct["kind"], "v2v_s": lat,
                        "client_response_s": ct.get("response_s"),
                        "reply_kind": classify(reply["text"], reply.get("source", ""), fixed,
                                               kb_answers) if reply else None,
                        "reply": reply["text"] if reply else None,
                        "stages": {k: stage.get(k) for k in ("endpointing_s", "stt_s",
                                   "agent_s", "reply_s", "llm_ttft_s", "tts_ttfa_s",
                                   "voice_to_voice_s")}
                        if stage else None,
                    })  # fmt: skip
                slot_rows = score_call(script, info, client, events)["slots"]
                row = {
                    "script": script.name,
                    "workflow": script.workflow,
                    "voice": voice,
                    "tags": script.tags,
                    "expected": script.expect,
                    "outcome": score.get("outcome"),
                    "completed": score.get("outcome") == script.expect,
                    "contained": score.get("contained"),
                    "needs": script.needs(),
                    "slots": slot_rows,
                    "client_status": client.get("status"),
                    "refers": client.get("refers"),
                    "turns": turns,
                    "heard": [e["user_text"] for e in events if e["kind"] == "TurnEnded"],
                    "agent_said": [e["text"] for e in events if e["kind"] == "AgentSpoke"],
                    "wall_s": round(time.monotonic() - t_wall, 1),
                }
                rows.append(row)
                bad_slots = [s["slot"] for s in slot_rows if not s["ok"]]
                print(f"{i + 1:2d}/{len(scripts)} {script.name:26s} {voice:13s} "
                      f"outcome={row['outcome']!s:14s} expected={script.expect:14s} "
                      f"{'OK  ' if row['completed'] else 'MISS'} slots-wrong={bad_slots} "
                      f"{row['wall_s']}s", flush=True)  # fmt: skip
        finally:
            proc.stop()
    finally:
        echo.close()
    report = summarise(rows, ref_lat, voices)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"callers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"wrote {out}")
    return 0


def summarise(rows: list[dict], ref_lat: list[float], voices: list[str]) -> dict:
    n = len(rows)

    def rate(ok: list[bool]) -> float | None:
        return round(sum(ok) / len(ok), 3) if ok else None

    slots = [dict(s, voice=r["voice"]) for r in rows for s in r["slots"]]
    by_voice: dict[str, dict[str, dict[str, object]]] = {}
    for s in slots:
        src = str(s.get("source") or s["voice"])
        bucket = "keypad" if src == "keypad" else ("fsdd" if src.startswith("fsdd") else src)
        cell = by_voice.setdefault(str(s["slot"]), {}).setdefault(bucket, {"ok": 0, "n": 0})
        cell["ok"] = int(cell["ok"]) + int(bool(s["ok"]))  # type: ignore[call-overload]
        cell["n"] = int(cell["n"]) + 1  # type: ignore[call-overload]
    for per in by_voice.values():
        for cell in per.values():
            cell["rate"] = round(int(cell["ok"]) / int(cell["n"]), 3)  # type: ignore[call-overload]
    fsdd = [s for s in slots if s["slot"] == "fsdd_digits"]
    turns = [t for r in rows for t in r["turns"]]
    kinds = sorted({t["reply_kind"] for t in turns if t["reply_kind"]})
    v2v_all = [t["v2v_s"] for t in turns if t["v2v_s"] is not None]
    per_kind = {}
    for k in kinds:
        mine = [t for t in turns if t["reply_kind"] == k]
        stages: dict[str, object] = {}
        for st in (
            "endpointing_s", "stt_s", "agent_s", "reply_s", "llm_ttft_s", "tts_ttfa_s",
            "voice_to_voice_s",
        ):  # fmt: skip
            vals = [
                t["stages"][st] for t in mine if t["stages"] and t["stages"].get(st) is not None
            ]
            stages[st] = dist(vals)
        per_kind[k] = {"wire": dist([t["v2v_s"] for t in mine if t["v2v_s"] is not None]),
                       "agent_stages": stages}  # fmt: skip
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "calls": n,
        "voices": voices,
        "task_completion_rate": rate([r["completed"] for r in rows]),
        "containment_rate": rate([bool(r["contained"]) for r in rows]),
        "dob_capture_rate": rate([bool(s["ok"]) for s in slots if s["slot"] == "dob"]),
        "fsdd_digit_accuracy": (
            round(sum(int(s["right"]) for s in fsdd) / sum(int(s["of"]) for s in fsdd), 3)
            if fsdd
            else None
        ),
        "fsdd_turn_exact_rate": rate([bool(s["ok"]) for s in fsdd]),
        "name_accuracy": rate([bool(s["ok"]) for s in slots if s["slot"] == "name"]),
        "phone_accuracy": rate([bool(s["ok"]) for s in slots if s["slot"] == "phone"]),
        "yes_no_accuracy": rate([bool(s["ok"]) for s in slots if s["slot"] == "yesno"]),
        "voice_to_voice_p50_s": pct(v2v_all, 0.5),
        "voice_to_voice_p90_s": pct(v2v_all, 0.9),
        "voice_to_voice_by_reply_kind": per_kind,
        "reference_echo_v2v_s": dist(ref_lat),
        "slot_accuracy_by_voice": by_voice,
        "completion_by_workflow": {
            wf: rate([r["completed"] for r in rows if r["workflow"] == wf])
            for wf in sorted({r["workflow"] for r in rows})
        },
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "misses": [r["script"] for r in rows if not r["completed"]],
        "rows": rows,
    }


def print_table(rep: dict) -> None:
    def mark(key: str, value: object) -> str:
        if key not in TARGETS or value is None:
            return ""
        op, target = TARGETS[key]
        ok = value >= target if op == ">=" else value <= target  # type: ignore[operator]
        return f"{op} {target}  {'PASS' if ok else 'FAIL'}"

    print()
    print(f"{'metric':34s} {'value':>8s}  target")
    for key in ("calls", "task_completion_rate", "containment_rate", "dob_capture_rate",
                "fsdd_digit_accuracy", "fsdd_turn_exact_rate", "name_accuracy",
                "phone_accuracy", "yes_no_accuracy", "voice_to_voice_p50_s",
                "voice_to_voice_p90_s"):  # fmt: skip
        print(f"{key:34s} {rep[key]!s:>8s}  {mark(key, rep[key])}")
    print("\nvoice-to-voice on the wire by reply kind (P50 <= 1.0 s, P90 <= 1.5 s each):")
    for k, d in rep["voice_to_voice_by_reply_kind"].items():
        w = d["wire"]
        st = d["agent_stages"]
        ok = w["p50"] is not None and w["p50"] <= 1.0 and w["p90"] <= 1.5
        print(f"  {k:13s} p50={w['p50']!s:6s} p90={w['p90']!s:6s} n={w['n']:<3d} "
              f"{'PASS' if ok else 'FAIL'}  agent p50: endpointing={st['endpointing_s']['p50']} "
              f"stt={st['stt_s']['p50']} agent={st['agent_s']['p50']} "
              f"reply={st['reply_s']['p50']} tts_first_audio={st['tts_ttfa_s']['p50']} "
              f"v2v={st['voice_to_voice_s']['p50']}")  # fmt: skip
    print(f"  {'echo ref':13s} {rep['reference_echo_v2v_s']}")
    print("\nslot accuracy by voice (ok/n):")
    for slot, per in rep["slot_accuracy_by_voice"].items():
        cells = "  ".join(f"{v}={c['ok']}/{c['n']}" for v, c in sorted(per.items()))
        print(f"  {slot:12s} {cells}")
    print(f"\ncompletion by workflow: {rep['completion_by_workflow']}")
    print(f"misses: {rep['misses']}")


if __name__ == "__main__":
    raise SystemExit(main())
