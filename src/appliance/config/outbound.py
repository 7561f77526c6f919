"""``[outbound]`` settings: the reminder dialler (issue 15, ADR 0019 "Dialler").

The TCPA gates themselves (consent, DNC, calling window) live in :mod:`appliance.policy`; this
section only says where their files are, how the window may be narrowed, and how fast and how
often the dialler may dial. The window can be made stricter than 08:00-21:00 callee-local time
(47 CFR 64.1200(c)(1)) but never wider: a wider one is refused at load.
"""

from __future__ import annotations

import re
from datetime import date, time
from pathlib import Path

import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

#: The widest calling window the law allows (local wall time of the callee).
TCPA_START = time(8, 0)
TCPA_END = time(21, 0)


#: The voicemail message's default (ADR 0022, "The voicemail message"): after the AI
#: disclosure, which names the clinic, only a call-back number (47 CFR 64.1200(b)(2) asks for
#: the caller's number in a prerecorded message; HIPAA minimum necessary allows nothing more).
VOICEMAIL_DEFAULT = (
    "This message is for you from {clinic}. Please call us back at {callback_number}. "
    "Thank you, goodbye."
)
#: Placeholders a voicemail message may use.
VOICEMAIL_FIELDS = frozenset({"clinic", "callback_number"})
VOICEMAIL_FIELD = re.compile(r"\{([^{}]*)\}")
VOICEMAIL_MAX_CHARS = 300


class OutboundSettings(BaseModel):
    """The outbound dialler (appointment reminders), off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(False, description="Allow the box to place outbound reminder calls.")
    trunk_uri: str = Field(
        "sip:{number}@127.0.0.1:5062",
        description="SIP URI template of the PBX trunk; {number} is the callee's E.164 number.",
    )
    caller_id: str = Field(
        "",
        description="Caller ID (a number or SIP URI) sent in P-Asserted-Identity; empty: none.",
    )
    region: str = Field("US", description="Region assumed for numbers without a country code.")
    consent_db: Path = Field(
        Path("var/outbound/consent.sqlite"), description="Consent records (SQLite)."
    )
    dnc_db: Path = Field(Path("var/outbound/dnc.sqlite"), description="Do-not-call list (SQLite).")
    outcomes_db: Path = Field(
        Path("var/outbound/dialler.sqlite"), description="Dial jobs and their outcomes (SQLite)."
    )
    window_start: time = Field(
        TCPA_START, description="Earliest callee-local time a dial may start (not before 08:00)."
    )
    window_end: time = Field(
        TCPA_END, description="Callee-local time from which dials are refused (not after 21:00)."
    )
    holidays: list[date] = Field(
        default_factory=list, description="Dates (callee-local) on which nobody is called."
    )
    max_concurrent: int = Field(
        1, ge=1, description="Outbound calls at once; must stay below [sip] max_calls."
    )
    rate_per_minute: int = Field(
        6, ge=1, le=600, description="Dials per minute per campaign (a token bucket)."
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="Dials per job, the first included (busy/no-answer retry)."
    )
    busy_backoff_s: list[float] = Field(
        default_factory=lambda: [300.0, 900.0],
        description="Waits before the 2nd, 3rd... dial after busy (486/600); the last repeats.",
    )
    no_answer_backoff_s: list[float] = Field(
        default_factory=lambda: [1800.0, 3600.0],
        description="Waits before a re-dial after no answer (408/480/ring timeout), in s.",
    )
    ring_timeout_s: float = Field(
        30.0, gt=0, le=120, description="Ringing longer than this is no answer (CANCEL)."
    )

    callback_number: str = Field(
        "",
        description="The clinic's call-back number said in the voicemail message (a number "
        "phonenumbers parses, E.164 preferred); empty: caller_id.",
    )
    voicemail_message: str = Field(
        VOICEMAIL_DEFAULT,
        description="Said after the AI disclosure on an answering machine, after the beep; "
        "{clinic} and {callback_number} only: no patient name, no appointment detail.",
    )

    @field_validator("voicemail_message")
    @classmethod
    def _check_voicemail(cls, value: str) -> str:
        fields = set(VOICEMAIL_FIELD.findall(value))
        if fields - VOICEMAIL_FIELDS:
            raise ValueError(
                f"the voicemail message may only use {sorted(VOICEMAIL_FIELDS)}: a voicemail "
                "holds the clinic's name and a call-back number, nothing more (HIPAA minimum "
                "necessary)"
            )
        if "callback_number" not in fields:
            raise ValueError("the voicemail message must say {callback_number}")
        if len(value) > VOICEMAIL_MAX_CHARS:
            raise ValueError(f"at most {VOICEMAIL_MAX_CHARS} characters, got {len(value)}")
        return value

    @field_validator("callback_number")
    @classmethod
    def _check_callback(cls, value: str, info: ValidationInfo) -> str:
        if value:
            try:
                number = phonenumbers.parse(value, str(info.data.get("region", "US")))
            except phonenumbers.NumberParseException as exc:
                raise ValueError(f"not a phone number: {exc}") from exc
            if not phonenumbers.is_possible_number(number):
                raise ValueError("not a possible phone number")
        return value

    @field_validator("trunk_uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        if "{number}" not in value or not value.startswith(("sip:", "sips:")):
            raise ValueError("trunk_uri must be a sip: URI template containing {number}")
        return value

    @field_validator("busy_backoff_s", "no_answer_backoff_s")
    @classmethod
    def _check_backoff(cls, value: list[float]) -> list[float]:
        if not value or any(v < 0 for v in value):
            raise ValueError("a back-off schedule needs at least one wait, none negative")
        return value

    @model_validator(mode="after")
    def _check_window(self) -> OutboundSettings:
        start, end = self.window_start, self.window_end
        if start.tzinfo is not None or end.tzinfo is not None:
            raise ValueError("the calling window's bounds are local wall times, without a zone")
        if start < TCPA_START or end > TCPA_END:
            raise ValueError(
                "the calling window may only be stricter than 08:00-21:00 (47 CFR 64.1200(c)(1))"
            )
        if start >= end:
            raise ValueError("the calling window's start must be before its end")
        return self


def check_room_for_inbound(outbound: OutboundSettings, max_calls: int) -> None:
    """Refuse an outbound cap that could take every SIP call slot.

    Raises:
        ValueError: ``outbound.max_concurrent >= max_calls`` while outbound is enabled.
    """
    if outbound.enabled and outbound.max_concurrent >= max_calls:
        raise ValueError(
            f"[outbound] max_concurrent ({outbound.max_concurrent}) must be below [sip] "
            f"max_calls ({max_calls}) so inbound calls keep a slot"
        )
