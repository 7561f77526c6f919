"""The SIP admission decision: who is answered, refused with 403, or refused with 503."""

from __future__ import annotations

import pytest

from appliance.config.settings import SipSettings
from appliance.media.admission import PJSUA_MAX_CALLS, admit

OPEN = dict(
    peer_allowed=True,
    takes_calls=True,
    draining=False,
    loop_stalled=False,
    callers=0,
    max_calls=3,
    pjsua_calls=0,
)


def test_a_trunk_peer_with_room_is_answered() -> None:
    decision = admit(**OPEN)
    assert decision.answered and decision.status == 200 and decision.reason == ""


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"peer_allowed": False}, 403, "not_allowed"),
        ({"takes_calls": False}, 403, "not_allowed"),
        ({"draining": True}, 503, "draining"),
        ({"loop_stalled": True}, 503, "stalled"),
        ({"callers": 3}, 503, "at_capacity"),
        ({"callers": 2, "pjsua_calls": 3}, 503, "no_free_slot"),
    ],
)
def test_refusals(change: dict[str, object], status: int, reason: str) -> None:
    decision = admit(**{**OPEN, **change})  # type: ignore[arg-type]
    assert (decision.status, decision.reason, decision.answered) == (status, reason, False)


def test_a_stranger_is_refused_403_even_while_draining_or_full() -> None:
    # The trunk ACL comes first: a stranger learns nothing about load or drain state.
    decision = admit(**{**OPEN, "peer_allowed": False, "draining": True, "callers": 3})
    assert decision.status == 403


def test_a_consult_leg_holds_a_slot_but_is_not_a_caller() -> None:
    # Two callers and one consult leg of an attended transfer: the caller limit (3) is not
    # reached, but answering would leave no pjsua slot to refuse the next INVITE with 503.
    assert admit(**{**OPEN, "callers": 2, "pjsua_calls": 3}).reason == "no_free_slot"
    # Two callers, no consult leg: the third caller is answered.
    assert admit(**{**OPEN, "callers": 2, "pjsua_calls": 2}).answered
    assert PJSUA_MAX_CALLS == 4


def test_peer_allowlist_from_settings() -> None:
    settings = SipSettings(allowed_peers=["10.0.0.0/24", "192.0.2.7"])
    assert settings.peer_allowed("10.0.0.9") and settings.peer_allowed("192.0.2.7")
    assert not settings.peer_allowed("10.0.1.9") and not settings.peer_allowed("not an ip")
