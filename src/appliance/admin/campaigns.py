"""Reminder campaigns: proposal, compliance review, owner's sign-off, start (issue 15).

A campaign is a reminder run over the calendar: every booked appointment in the next ``days``
days whose patient has a phone on file, dialled by the agent's dialler (control op
``outbound.reminders``, ADR 0021), each dial through the TCPA gate at dial time. Its life:

``in_review`` -> ``approved`` -> (``starting``) -> ``started``, or ``rejected`` from review or
sign-off.

Rules, all enforced here (the routes only translate :class:`GovernanceError` codes to HTTP):

* Anyone with ``propose_campaign`` (the contact-centre lead, the owner) proposes one: a name,
  ``days`` (1 to :data:`DAYS_MAX`) and the consent scope (``reminders``); the proposal keeps
  the dry-run counts of that moment (``outbound.preview``).
* The **compliance review** (``compliance_review``) and then the **owner's sign-off**
  (``sign_off``) come from two different people, neither of them the proposer: the same rules
  as a risk-tier change (:func:`appliance.admin.governance.check_not_requester`,
  :func:`~appliance.admin.governance.check_sign_off`).
* **Start** (``sign_off`` or ``propose_campaign``) only once both are given; the start is
  recorded, then the agent queues the campaign.

A campaign holds counts and the campaign name the dialler files its jobs under; never a phone
number or a patient name. Every step is an admin audit record with fixed identifiers only
(``AdminCampaignProposed``, ``AdminCampaignReviewed``, ``AdminCampaignSignedOff``,
``AdminCampaignStarted``); notes stay in ``admin.sqlite``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.admin.governance import (
    Actor,
    Decision,
    GovernanceError,
    TwoPersonStore,
    clean_text,
    parse_decision,
)

DAYS_MAX = 14
"""The furthest ahead a campaign may reach, days (the dialler's ``CAMPAIGN_DAYS_MAX``)."""
SCOPES = ("reminders",)
"""Consent scopes a campaign may dial under (reminder calls only, for now)."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
"""A campaign name: 1 to 64 letters, digits, spaces, ``._-``."""


def _m001(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE campaigns (
            id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, days INTEGER NOT NULL,
            scope TEXT NOT NULL, reason TEXT NOT NULL, requested_by TEXT NOT NULL,
            requested_by_name TEXT NOT NULL, created_at REAL NOT NULL, state TEXT NOT NULL,
            preview TEXT NOT NULL, review TEXT, signoff TEXT, started TEXT)"""
    )


MIGRATIONS = [("campaigns_001", _m001)]


@dataclass
class Campaign:
    """One proposed campaign (see the module doc).

    ``preview``: the dry-run counts when proposed, ``{"appointments": n, "refused": {reason:
    n}}`` (or ``{"error": text}`` when the agent could not answer). ``started``: ``{"by",
    "by_name", "at", "dialler_campaign", "jobs"}`` once started.
    """

    id: int
    name: str
    days: int
    scope: str
    reason: str
    requested_by: str
    requested_by_name: str
    created_at: float
    state: str
    preview: dict[str, Any]
    review: Decision | None = None
    signoff: Decision | None = None
    started: dict[str, Any] | None = field(default=None)

    @property
    def dialler_campaign(self) -> str:
        """The campaign name the dialler files this campaign's jobs under."""
        return f"admin-{self.id}"


class CampaignStore(TwoPersonStore[Campaign]):
    """Campaigns in ``admin.sqlite`` (table ``campaigns``).

    Args:
        conn: The admin database (autocommit mode).
        audit: Has ``record(kind, actor, **meta)`` (the admin audit outbox).
        perms: ``"propose"``, ``"review"``, ``"sign_off"``, ``"start"`` -> a tuple of
            permissions any one of which allows the step.

    Raises:
        sqlite3.Error: The table cannot be created.

    :meth:`review` and :meth:`sign_off` are :class:`~appliance.admin.governance.TwoPersonStore`'s
    (the same rules as a change request).
    """

    TABLE = "campaigns"
    NOUN = "campaign"
    LONG_NOUN = "campaign"
    ASKED = "proposed the campaign"
    ID_KEY = "campaign_id"
    REVIEWED = "AdminCampaignReviewed"
    SIGNED_OFF = "AdminCampaignSignedOff"

    MIGRATIONS = MIGRATIONS

    def _build(self, row: sqlite3.Row) -> Campaign:
        return Campaign(
            id=row["id"],
            name=row["name"],
            days=row["days"],
            scope=row["scope"],
            reason=row["reason"],
            requested_by=row["requested_by"],
            requested_by_name=row["requested_by_name"],
            created_at=row["created_at"],
            state=row["state"],
            preview=json.loads(row["preview"]),
            review=parse_decision(row["review"]),
            signoff=parse_decision(row["signoff"]),
            started=None if row["started"] is None else json.loads(row["started"]),
        )

    def check_propose(self, who: Actor, name: str, days: int, scope: str, reason: str) -> str:
        """Validate a proposal before the agent is asked for its preview; the cleaned name.

        Raises:
            GovernanceError: ``forbidden`` (no ``propose_campaign``), ``invalid``.
        """
        self._allow(who, "propose")
        clean = name.strip() if isinstance(name, str) else ""
        if not NAME.match(clean):
            raise GovernanceError(
                "invalid", "the name is 1 to 64 letters, digits, spaces, dots, dashes"
            )
        if not 1 <= days <= DAYS_MAX:
            raise GovernanceError("invalid", f"days ahead must be 1 to {DAYS_MAX}")
        if scope not in SCOPES:
            raise GovernanceError("invalid", f"the scope must be one of {', '.join(SCOPES)}")
        clean_text(reason, "the reason for the campaign")
        if self._conn.execute("SELECT 1 FROM campaigns WHERE name = ?", [clean]).fetchone():
            raise GovernanceError("invalid", f"a campaign named {clean!r} exists")
        return clean

    def propose(
        self,
        who: Actor,
        *,
        name: str,
        days: int,
        scope: str,
        reason: str,
        preview: dict[str, Any],
    ) -> Campaign:
        """Record a proposal (``in_review``) with the preview's counts.

        Raises:
            GovernanceError: as :meth:`check_propose`.
        """
        clean = self.check_propose(who, name, days, scope, reason)
        why = clean_text(reason, "the reason for the campaign")
        with self._lock:
            try:
                cur = self._conn.execute(
                    "INSERT INTO campaigns (name, days, scope, reason, requested_by,"
                    " requested_by_name, created_at, state, preview)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 'in_review', ?)",
                    [
                        clean,
                        days,
                        scope,
                        why,
                        who.actor,
                        who.username,
                        time.time(),
                        _counts(preview),
                    ],
                )
            except sqlite3.IntegrityError:
                raise GovernanceError("invalid", f"a campaign named {clean!r} exists") from None
        campaign_id = int(cur.lastrowid or 0)
        self._audit.record(
            "AdminCampaignProposed",
            who.actor,
            campaign_id=campaign_id,
            days=days,
            scope=scope,
            appointments=preview.get("appointments")
            if isinstance(preview.get("appointments"), int)
            else None,
        )
        return self.get(campaign_id)

    def check_start(self, campaign_id: int, who: Actor) -> Campaign:
        """Whether ``who`` may start the campaign now (approved: reviewed and signed off).

        Raises:
            GovernanceError: ``forbidden``, ``not_found``, ``conflict`` (not approved).
        """
        self._allow(who, "start")
        campaign = self.get(campaign_id)
        self._state(campaign, "approved")
        review, signoff = campaign.review, campaign.signoff
        if not (review and signoff and review.decision == signoff.decision == "approved"):
            raise GovernanceError("conflict", "the review and the sign-off are both needed")
        if len({campaign.requested_by, review.by, signoff.by}) != 3:
            raise GovernanceError("forbidden", "three different people are needed")
        return campaign

    def claim_start(self, campaign_id: int, who: Actor) -> Campaign:
        """:meth:`check_start`, then ``approved`` -> ``starting``: one start at a time.

        Raises:
            GovernanceError: as :meth:`check_start`; ``conflict`` when another start won.
        """
        with self._lock:
            self.check_start(campaign_id, who)
            self._set(campaign_id, "approved", state="starting")
        return self.get(campaign_id)

    def release_start(self, campaign_id: int) -> None:
        """``starting`` -> ``approved`` again: the agent refused or did not answer."""
        with self._lock:
            self._set(campaign_id, "starting", state="approved")

    def mark_started(self, campaign_id: int, who: Actor, jobs: int) -> Campaign:
        """Record the start of a claimed campaign (the agent queued ``jobs`` dials).

        Raises:
            GovernanceError: ``conflict`` (not being started).
        """
        with self._lock:
            campaign = self.get(campaign_id)
            record = {
                "by": who.actor,
                "by_name": who.username,
                "at": time.time(),
                "dialler_campaign": campaign.dialler_campaign,
                "jobs": jobs,
            }
            self._set(campaign_id, "starting", state="started", started=json.dumps(record))
        self._audit.record("AdminCampaignStarted", who.actor, campaign_id=campaign_id, jobs=jobs)
        return self.get(campaign_id)


def _counts(preview: dict[str, Any]) -> str:
    """The preview as stored: counts (or an error text) only, whatever the agent answered."""
    if "error" in preview:
        return json.dumps({"error": str(preview["error"])[:200]})
    refused = preview.get("refused")
    return json.dumps(
        {
            "appointments": int(preview.get("appointments") or 0),
            "refused": {
                str(k)[:64]: int(v)
                for k, v in (refused.items() if isinstance(refused, dict) else [])
                if isinstance(v, int)
            },
        }
    )


def outcome_counts(outcomes: dict[str, Any]) -> dict[str, Any]:
    """The dialler's ``outbound.campaign`` answer as the page shows it: counts only.

    Args:
        outcomes: ``{outcome: count}`` (``""``: still running; ``refused:<reason>``).

    Returns:
        ``{"jobs", "running", "placed", "answered", "voicemail", "opted_out", "no_answer",
        "busy", "failed", "conversation": {outcome: n}, "refused": {reason: n}}``. ``placed``:
        jobs that sent an INVITE and are done; ``answered``: a live answer (any conversation
        outcome).
    """
    counts = {str(k): int(v) for k, v in outcomes.items() if isinstance(v, int)}
    refused = {k.split(":", 1)[1]: n for k, n in counts.items() if k.startswith("refused:")}
    conversation = {
        k: counts[k]
        for k in ("confirmed", "cancelled", "rescheduled", "opted-out", "no-decision")
        if k in counts
    }
    done = sum(n for k, n in counts.items() if k and not k.startswith("refused:"))
    return {
        "jobs": sum(counts.values()),
        "running": counts.get("", 0),
        "placed": done,
        "answered": sum(conversation.values()),
        "voicemail": counts.get("voicemail", 0),
        "opted_out": counts.get("opted-out", 0),
        "no_answer": counts.get("no-answer", 0),
        "busy": counts.get("busy", 0),
        "failed": counts.get("failed", 0),
        "conversation": conversation,
        "refused": refused,
    }
