"""The change-request model of :mod:`appliance.admin.governance`: checklist, decisions, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.errors import ApplianceError

#: The pre-deployment checklist (issue 12): ``(key, label)``. The named reviewer and date are
#: the sign-off itself.
CHECKLIST: tuple[tuple[str, str], ...] = (
    ("risk_tier", "Risk tier documented"),
    ("compliance_controls", "Compliance requirements and controls confirmed"),
    ("warm_transfer", "Warm transfer tested with a real context payload"),
    ("alert_thresholds", "Alert thresholds set and tested"),
    ("escalation_triggers", "Escalation triggers defined"),
    ("rollback_plan", "Rollback plan written"),
)
#: Ticked only by a successful test transfer (:meth:`GovernanceStore.record_transfer_test`).
TRANSFER_ITEM = "warm_transfer"
STATES = ("draft", "in_review", "approved", "applied", "rejected", "rolled_back")
#: Longest note, characters.
MAX_NOTES = 4000


class GovernanceError(ApplianceError):
    """A change-request rule refused an action; nothing changed.

    ``code``: ``not_found``, ``forbidden`` (permission or the two-person rule), ``conflict``
    (wrong state), ``invalid`` (bad input) or ``gate_not_met``.
    """

    stage = "admin"


class Actor(Protocol):
    """Who acts: :class:`appliance.admin.auth.Principal` fits."""

    @property
    def actor(self) -> str: ...  # noqa: D102

    @property
    def username(self) -> str: ...  # noqa: D102

    def can(self, perm: Any) -> bool: ...  # noqa: D102


@dataclass(frozen=True)
class ChecklistEntry:
    """A done checklist item: who (actor and name), when (epoch s) and the note."""

    item: str
    by: str
    by_name: str
    at: float
    notes: str


@dataclass(frozen=True)
class Decision:
    """A compliance review or a sign-off."""

    by: str
    by_name: str
    at: float
    decision: str  # "approved" | "rejected"
    notes: str


@dataclass
class ChangeRequest:
    """One change request (see the module doc); ``payload`` holds what applying needs."""

    id: int
    kind: str  # "tier" | "workflow"
    target: str  # tier name or workflow id
    action: str  # "enable" | "disable" | "update"
    from_version: str
    to_version: str
    reason: str
    requested_by: str
    requested_by_name: str
    created_at: float
    state: str
    payload: dict[str, Any]
    checklist: dict[str, ChecklistEntry] = field(default_factory=dict)
    review: Decision | None = None
    signoff: Decision | None = None
    applied: dict[str, Any] | None = None
    rolled_back: dict[str, Any] | None = None

    @property
    def checklist_complete(self) -> bool:
        """Every :data:`CHECKLIST` item is done."""
        return all(key in self.checklist for key, _ in CHECKLIST)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view (the proposed text excluded; ``payload`` keys only)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "action": self.action,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "requested_by": self.requested_by_name,
            "created_at": self.created_at,
            "state": self.state,
            "checklist": {
                key: ({"by": e.by_name, "at": e.at} if (e := self.checklist.get(key)) else None)
                for key, _ in CHECKLIST
            },
            "review": None
            if self.review is None
            else {
                "by": self.review.by_name,
                "at": self.review.at,
                "decision": self.review.decision,
            },
            "signoff": None
            if self.signoff is None
            else {
                "by": self.signoff.by_name,
                "at": self.signoff.at,
                "decision": self.signoff.decision,
            },
        }
