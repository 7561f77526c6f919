"""Whether to answer an INVITE: the admission decision, as a pure function.

Order (each check only runs when the ones before it passed):

1. the source address must be a configured trunk peer (``[sip] allowed_peers``), and the user
   agent must take calls at all (client mode takes none): else ``403 Forbidden``;
2. the worker must not be draining (SIGTERM, or the audit log failed closed): else ``503``;
3. its event loop must have answered a liveness probe recently: else ``503`` (a call answered
   into a stuck loop would get dead air);
4. fewer than ``[sip] max_calls`` callers may be connected: else ``503``;
5. a pjsua call slot must stay free for the next refusal: the wheel caps a process at
   :data:`PJSUA_MAX_CALLS` calls, consult legs of attended transfers included, and without a
   free slot pjsua itself answers ``486 Busy Here`` instead of our ``503`` + ``Retry-After``.

``503`` answers carry ``Retry-After`` (RFC 3261 section 21.5.4); the caller's number is never
part of a decision or a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Calls one pjsua2-python wheel process can hold (``PJSUA_MAX_CALLS``, compiled in).
PJSUA_MAX_CALLS = 4


@dataclass(frozen=True)
class Admission:
    """The decision for one INVITE.

    Attributes:
        status: SIP status to answer with: 200, 403 or 503 (the user agent also answers 488
            for an offer pjmedia cannot take: :func:`appliance.media.sip.offer_host_too_long`).
        reason: ``""`` when answered, else ``"not_allowed"``, ``"draining"``, ``"stalled"``,
            ``"at_capacity"`` or ``"no_free_slot"`` (metrics and logs; no PHI).
    """

    status: int
    reason: str = ""

    @property
    def answered(self) -> bool:
        """Whether the call is answered (200 OK)."""
        return self.status == 200


def admit(
    *,
    peer_allowed: bool,
    takes_calls: bool,
    draining: bool,
    loop_stalled: bool,
    callers: int,
    max_calls: int,
    pjsua_calls: int,
) -> Admission:
    """Decide an INVITE.

    Args:
        peer_allowed: The INVITE's source address is a trunk peer.
        takes_calls: The user agent answers calls (False in client mode).
        draining: The worker is draining.
        loop_stalled: The event loop has missed its liveness heartbeat.
        callers: Callers connected now (inbound calls answered and not ended).
        max_calls: ``[sip] max_calls``.
        pjsua_calls: pjsua calls alive now, not counting this INVITE (callers, consult legs,
            calls being refused or torn down).

    Returns:
        The decision.
    """
    if not (peer_allowed and takes_calls):
        return Admission(403, "not_allowed")
    if draining:
        return Admission(503, "draining")
    if loop_stalled:
        return Admission(503, "stalled")
    if callers >= max_calls:
        return Admission(503, "at_capacity")
    # This INVITE holds one slot already; keep one more free for answering the next with 503.
    if pjsua_calls + 1 >= PJSUA_MAX_CALLS:
        return Admission(503, "no_free_slot")
    return Admission(200)
