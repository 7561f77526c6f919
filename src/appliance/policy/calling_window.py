"""The calling window as a hard block: 08:00-21:00 in the callee's local time, or stricter.

47 CFR 64.1200(c)(1): no telephone solicitation "before the hour of 8 a.m. or after 9 p.m.
(local time at the called party's location)". The box applies it to every outbound call,
reminders included, and lets a practice make it stricter (e.g. 09:00-19:00) and block
holidays; it can never be made wider.

The callee's zone comes from the patient's address when known (an IANA zone name the caller
of :func:`callee_zones` derives from it), else from the number's prefix through
``phonenumbers.timezone.time_zones_for_number`` (libphonenumber's geocoding data). A prefix
can map to several zones (Idaho's +1 208: Boise and Los Angeles; a toll-free +1 800: every
North American zone, Guam to St John's): then an instant counts only when it is inside the
window in EVERY candidate zone (their overlap: for a toll-free number, 08:00 in Guam to 21:00
in St John's, 90 minutes a day in July). An unknown zone is refused. Local times come from
:mod:`zoneinfo` (the IANA tz database), so daylight-saving time is handled per zone and per
date; the window's bounds are local wall times (start inclusive, end exclusive: a call at
21:00:00 is refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from phonenumbers import PhoneNumber
from phonenumbers import timezone as pn_timezone

from appliance.policy.phone import DEFAULT_REGION, parse_number

TCPA_START = time(8, 0)
"""Earliest local time a call may start (47 CFR 64.1200(c)(1))."""
TCPA_END = time(21, 0)
"""Local time from which calls are refused (47 CFR 64.1200(c)(1))."""

UNKNOWN_ZONE = "Etc/Unknown"
"""What ``phonenumbers`` answers for a number it cannot place."""


@dataclass(frozen=True)
class WindowDecision:
    """Whether an instant is inside the calling window for a callee.

    Attributes:
        allowed: Inside the window in every candidate zone, on no blocked holiday.
        reason: ``"ok"``, ``"outside-window"``, ``"holiday"`` or ``"unknown-timezone"``.
        zones: The candidate IANA zones considered.
        local_times: The instant's local wall time per zone (ISO 8601), for the record.
    """

    allowed: bool
    reason: str
    zones: tuple[str, ...]
    local_times: tuple[str, ...] = ()


def _zone(name: str) -> ZoneInfo | None:
    if not name or name == UNKNOWN_ZONE:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def callee_zones(
    number: str | PhoneNumber,
    address_tz: str | tuple[str, ...] | None = None,
    region: str = DEFAULT_REGION,
) -> tuple[str, ...]:
    """The candidate IANA zones of a callee; empty when unknown.

    Args:
        number: The callee's number (E.164 or any format ``phonenumbers`` parses, or already
            parsed by :func:`~appliance.policy.phone.parse_number`).
        address_tz: The IANA zone (or candidate zones, from
            :func:`appliance.policy.address_zone.address_zones`) of the patient's address when
            known; it wins over the number. An unknown zone name gives ``()`` (refused), never
            a fallback to the number; an empty tuple means the address placed nothing and the
            number decides.
        region: Region assumed for numbers without a ``+`` country code.

    Raises:
        InvalidNumber: ``number`` is not a valid phone number (only when ``address_tz`` is
            not given).
    """
    if isinstance(address_tz, str):
        address_tz = (address_tz,)
    if address_tz:
        zones = tuple(z for z in address_tz if _zone(z) is not None)
        return zones if len(zones) == len(address_tz) else ()
    parsed = number if isinstance(number, PhoneNumber) else parse_number(number, region)
    zones = pn_timezone.time_zones_for_number(parsed)
    return tuple(z for z in zones if _zone(z) is not None)


@dataclass(frozen=True)
class CallingWindow:
    """The daily window (local wall times) and blocked holidays.

    Args:
        start: Earliest local start time; not before 08:00.
        end: Local time from which calls are refused; not after 21:00.
        holidays: Dates (the callee's local calendar) on which no call is placed.

    Raises:
        ValueError: A window wider than 08:00-21:00, or ``start >= end``.
    """

    start: time = TCPA_START
    end: time = TCPA_END
    holidays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("the window's bounds are local wall times, without a zone")
        if self.start < TCPA_START or self.end > TCPA_END:
            raise ValueError(
                "the calling window may only be stricter than 08:00-21:00 (47 CFR 64.1200(c)(1))"
            )
        if self.start >= self.end:
            raise ValueError("the calling window's start must be before its end")
        object.__setattr__(self, "holidays", frozenset(self.holidays))

    def check(self, now: datetime, zones: tuple[str, ...]) -> WindowDecision:
        """Whether ``now`` is inside the window in every zone of ``zones``.

        Args:
            now: The instant of the dial (aware datetime; any zone).
            zones: Candidate IANA zones (from :func:`callee_zones`); empty: unknown.

        Returns:
            The decision; ``holiday`` wins over ``outside-window`` when both hold.

        Raises:
            ValueError: ``now`` is naive (the instant is unknown).
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the dial time must be an aware datetime")
        infos = [_zone(z) for z in zones]
        if not infos or any(i is None for i in infos):
            return WindowDecision(False, "unknown-timezone", zones)
        local = [now.astimezone(i) for i in infos if i is not None]
        stamps = tuple(t.isoformat(timespec="minutes") for t in local)
        if any(t.date() in self.holidays for t in local):
            return WindowDecision(False, "holiday", zones, stamps)
        if not all(self.start <= t.time().replace(tzinfo=None) < self.end for t in local):
            return WindowDecision(False, "outside-window", zones, stamps)
        return WindowDecision(True, "ok", zones, stamps)
