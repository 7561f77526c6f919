"""The outbound gate: consent, do-not-call and calling window, checked before every dial.

The controls sit in code, not in a prompt (TCPA 47 U.S.C. 227(b); an AI voice is an
"artificial voice", FCC 24-17). :meth:`OutboundGate.check` is meant to be called when a
campaign is built AND again immediately before each INVITE: it caches nothing, every call reads
the consent and DNC files and the clock it is given, so a revocation or an opt-out made while a
campaign runs stops the next dial.

Checks, in order (the first that fails is the reason):

1. ``invalid-number``: not a valid phone number (``phonenumbers``);
2. ``dnc``: on the do-not-call list (an opt-out or an imported list), 47 CFR 64.1200(c)(2), (d);
3. ``consent-revoked`` / ``no-consent`` / ``consent-out-of-scope``: the callee's consent for
   this scope (47 CFR 64.1200(a)(1)-(2), revocation (a)(10));
4. ``unknown-timezone`` / ``holiday`` / ``outside-window``: the calling window in the callee's
   zone(s), 47 CFR 64.1200(c)(1).

Every refusal is emitted as a :class:`~appliance.events.DialRefused` (the number sealed as
content, the reason clear) through the sink, so the audit log shows each refused dial.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import phonenumbers

from appliance.events import DialRefused
from appliance.policy.calling_window import CallingWindow, callee_zones
from appliance.policy.consent import SCOPES, ConsentError, ConsentStore, Sink
from appliance.policy.dnc import DncList
from appliance.policy.phone import DEFAULT_REGION, InvalidNumber, parse_number

REASONS = (
    "invalid-number",
    "dnc",
    "consent-revoked",
    "no-consent",
    "consent-out-of-scope",
    "unknown-timezone",
    "holiday",
    "outside-window",
)
"""The stable, machine-readable refusal reasons (:attr:`GateDecision.reason`)."""

OK = "ok"
"""The reason of an allowed dial."""


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer for one dial.

    Attributes:
        allowed: ``True`` only when every gate passed.
        reason: ``"ok"`` or one of :data:`REASONS`.
        number: The E.164 number (``""`` for an invalid number).
        scope: The consent scope checked.
        zones: The callee's candidate IANA zones (empty when not reached or unknown).
        local_times: The dial instant's local time per zone (ISO 8601), when checked.
    """

    allowed: bool
    reason: str
    number: str
    scope: str
    zones: tuple[str, ...] = ()
    local_times: tuple[str, ...] = ()


class OutboundGate:
    """Decides whether one outbound dial may be placed now.

    Args:
        consent: The consent records.
        dnc: The do-not-call list.
        window: The calling window (stricter hours, holidays).
        sink: Receives a :class:`~appliance.events.DialRefused` per refusal.
        region: Region assumed for numbers without a ``+`` country code.
    """

    def __init__(
        self,
        consent: ConsentStore,
        dnc: DncList,
        window: CallingWindow,
        sink: Sink,
        *,
        region: str = DEFAULT_REGION,
    ) -> None:
        self.consent = consent
        self.dnc = dnc
        self.window = window
        self._sink = sink
        self._region = region

    def check(
        self,
        number: str,
        scope: str,
        now: datetime,
        address_tz: str | tuple[str, ...] | None = None,
        *,
        call_id: str = "",
    ) -> GateDecision:
        """Check every gate for a dial to ``number`` at ``now``; emit the refusal if refused.

        Args:
            number: The callee's number, any format ``phonenumbers`` parses.
            scope: The consent scope the call needs (one of
                :data:`~appliance.policy.consent.SCOPES`).
            now: The dial instant (aware datetime): pass the real clock at dial time.
            address_tz: The IANA zone(s) of the patient's address, when known
                (:func:`~appliance.policy.address_zone.address_zones`).
            call_id: The planned call's id for the record, or ``""``.

        Returns:
            The decision (never cached).

        Raises:
            ConsentError: ``scope`` is not a consent scope (a programming error).
            ValueError: ``now`` is naive.
        """
        if scope not in SCOPES:
            raise ConsentError(f"unknown consent scope {scope!r}; expected one of {SCOPES}")
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the dial time must be an aware datetime")
        try:
            parsed = parse_number(number, self._region)
        except InvalidNumber:
            return self._refuse(GateDecision(False, "invalid-number", "", scope), number, call_id)
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        if self.dnc.contains(e164):
            return self._refuse(GateDecision(False, "dnc", e164, scope), e164, call_id)
        record = self.consent.lookup(e164, scope)
        if record is None or not record.granted:
            if record is not None:
                reason = "consent-revoked"
            elif any(self.consent.scopes_of(e164).values()):
                reason = "consent-out-of-scope"
            else:
                reason = "no-consent"
            return self._refuse(GateDecision(False, reason, e164, scope), e164, call_id)
        zones = callee_zones(parsed, address_tz, self._region)
        window = self.window.check(now, zones)
        decision = GateDecision(
            window.allowed, window.reason, e164, scope, window.zones, window.local_times
        )
        return decision if decision.allowed else self._refuse(decision, e164, call_id)

    def _refuse(self, decision: GateDecision, number: str, call_id: str) -> GateDecision:
        self._sink(
            DialRefused(call_id, phone_number=number, scope=decision.scope, reason=decision.reason)
        )
        return decision
