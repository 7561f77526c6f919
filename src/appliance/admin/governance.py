"""Change requests for workflows and risk tiers: checklist, two-person sign-off, apply, rollback.

A change request is one proposed change: enabling or disabling a risk tier, or a new version
of a workflow file. Its life (issue 12, "Workflows and phased rollout"):

``draft`` -> ``in_review`` -> ``approved`` -> ``applied`` -> ``rolled_back``, or ``rejected``
from review or sign-off.

Rules, all enforced here (the routes only translate :class:`GovernanceError` codes to HTTP):

* Anyone with ``request_change`` opens a request (the **requester**) and works its
  pre-deployment checklist (:data:`CHECKLIST`) while it is a draft. Each item records who, when
  and a note (the evidence, e.g. the rollback plan itself); the warm-transfer item is ticked
  only by a successful test transfer through the agent (control op ``transfer.test``). A draft
  goes to review only with every item done.
* The **compliance review** needs ``compliance_review``; the **owner's sign-off** needs
  ``sign_off`` and comes after an approving review. Neither may be given by the requester, and
  the two must be **different people**: a person holding both roles still cannot give both
  (two people, not two roles, is what the issue asks for). Each records the user, time,
  decision and a note; a rejection by either ends the request (``rejected``).
* **Applying** an approved request needs ``sign_off`` or ``manage_settings``; enabling a tier
  also needs the gate of the tier below met at that moment (:mod:`appliance.admin.gates`).
* **Rollback** of an applied request (same permissions, a stated reason) restores the
  previous value (:mod:`appliance.admin.rollout`).

Every step is written to the admin audit log (``AdminChangeRequested``,
``AdminChecklistItemDone``, ``AdminSubmittedForReview``, ``AdminComplianceReviewed``,
``AdminSignedOff``, ``AdminChangeApplied``, ``AdminRolledBack``) with the change id and fixed
identifiers only; notes stay in ``admin.sqlite``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any, Generic, TypeVar

from appliance.admin.governance_model import (
    CHECKLIST,
    MAX_NOTES,
    STATES,
    TRANSFER_ITEM,
    Actor,
    ChangeRequest,
    ChecklistEntry,
    Decision,
    GovernanceError,
)
from appliance.migrations import apply_migrations

RowT = TypeVar("RowT")

__all__ = [
    "CHECKLIST",
    "STATES",
    "TRANSFER_ITEM",
    "Actor",
    "ChangeRequest",
    "Decision",
    "GovernanceError",
    "GovernanceStore",
    "TwoPersonStore",
    "check_not_requester",
    "check_sign_off",
    "clean_text",
    "decision_word",
    "parse_decision",
]


def _m001(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE workflow_changes (
            id INTEGER PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL,
            action TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL,
            reason TEXT NOT NULL, requested_by TEXT NOT NULL, requested_by_name TEXT NOT NULL,
            created_at REAL NOT NULL, state TEXT NOT NULL, payload TEXT NOT NULL,
            review TEXT, signoff TEXT, applied TEXT, rolled_back TEXT)"""
    )
    conn.execute(
        """CREATE TABLE workflow_checklist (
            change_id INTEGER NOT NULL REFERENCES workflow_changes(id), item TEXT NOT NULL,
            by_actor TEXT NOT NULL, by_name TEXT NOT NULL, at REAL NOT NULL, notes TEXT NOT NULL,
            PRIMARY KEY (change_id, item))"""
    )


MIGRATIONS = [("workflows_001_changes", _m001)]


def clean_text(text: object, what: str, *, required: bool = True) -> str:
    """``text`` stripped; at most :data:`MAX_NOTES` characters.

    Raises:
        GovernanceError: ``invalid`` (not text, empty when ``required``, or too long).
    """
    if not isinstance(text, str):
        raise GovernanceError("invalid", f"{what} must be text")
    value = text.strip()
    if required and not value:
        raise GovernanceError("invalid", f"{what} is required")
    if len(value) > MAX_NOTES:
        raise GovernanceError("invalid", f"{what} is longer than {MAX_NOTES} characters")
    return value


def check_not_requester(
    requested_by: str, who: Actor, what: str, asked: str = "asked for the change"
) -> None:
    """The two-person rule's first half: whoever asked may not give the ``what``.

    Raises:
        GovernanceError: ``forbidden`` when ``who`` is ``requested_by``.
    """
    if who.actor == requested_by:
        raise GovernanceError("forbidden", f"the person who {asked} cannot give the {what}")


def check_sign_off(review: Decision | None, who: Actor) -> None:
    """The sign-off comes after an approving review, from someone other than the reviewer.

    Raises:
        GovernanceError: ``conflict`` (no approving review yet), ``forbidden`` (the reviewer).
    """
    if review is None or review.decision != "approved":
        raise GovernanceError("conflict", "the compliance review must approve first")
    if review.by == who.actor:
        raise GovernanceError(
            "forbidden", "the sign-off must come from someone other than the reviewer"
        )


def parse_decision(raw: str | None) -> Decision | None:
    """A stored (JSON) review or sign-off; ``None`` for ``None``."""
    return None if raw is None else Decision(**json.loads(raw))


class TwoPersonStore(Generic[RowT]):
    """What change requests and campaigns share: rules, guarded updates, the two-person steps.

    A subclass names its table (``TABLE``, with ``id``, ``state``, ``review``, ``signoff``
    columns) and its migrations (``MIGRATIONS``, applied at construction), what a row is
    called in messages (``NOUN``, ``LONG_NOUN``), how its requester is described (``ASKED``),
    the audit meta key of its id (``ID_KEY``) and the audit kinds of the review and the
    sign-off (``REVIEWED``, ``SIGNED_OFF``). It implements ``_build``: a table row to a row
    object with ``id``, ``state``, ``requested_by`` and ``review``.

    Args:
        conn: The admin database (:func:`appliance.admin.db.connect`; autocommit mode).
        audit: Has ``record(kind, actor, **meta)`` (the admin audit outbox).
        perms: Step name -> a tuple of permissions any one of which allows the step (the
            steps here are ``"review"`` and ``"sign_off"``).
    """

    TABLE = ""
    NOUN = ""
    LONG_NOUN = ""
    ASKED = "asked for the change"
    ID_KEY = ""
    REVIEWED = ""
    SIGNED_OFF = ""
    MIGRATIONS: list[tuple[str, Any]] = []

    def __init__(self, conn: sqlite3.Connection, audit: Any, perms: dict[str, tuple[Any, ...]]):
        self._conn = conn
        self._audit = audit
        self._perms = perms
        self._lock = threading.Lock()
        apply_migrations(conn, self.MIGRATIONS, conn)

    def get(self, row_id: int) -> RowT:
        """One row.

        Raises:
            GovernanceError: ``not_found``.
        """
        row = self._conn.execute(
            f"SELECT * FROM {self.TABLE} WHERE id = ?",  # noqa: S608
            [row_id],
        ).fetchone()
        if row is None:
            raise GovernanceError("not_found", f"no {self.LONG_NOUN} {row_id}")
        return self._build(row)

    def list(self, limit: int = 100) -> list[RowT]:
        """The latest rows, newest first."""
        rows = self._conn.execute(
            f"SELECT * FROM {self.TABLE} ORDER BY id DESC LIMIT ?",  # noqa: S608
            [limit],
        ).fetchall()
        return [self._build(r) for r in rows]

    def _build(self, row: sqlite3.Row) -> RowT:
        raise NotImplementedError

    def _allow(self, who: Actor, step: str) -> None:
        if not any(who.can(p) for p in self._perms[step]):
            raise GovernanceError("forbidden", f"you may not {step.replace('_', ' ')} {self.NOUN}s")

    def _state(self, row: Any, *states: str) -> None:
        if row.state not in states:
            raise GovernanceError(
                "conflict", f"{self.NOUN} {row.id} is {row.state}, not {' or '.join(states)}"
            )

    def _set(self, row_id: int, expected: str, **cols: object) -> None:
        sets = ", ".join(f"{k} = ?" for k in cols)
        cur = self._conn.execute(
            f"UPDATE {self.TABLE} SET {sets} WHERE id = ? AND state = ?",  # noqa: S608
            [*cols.values(), row_id, expected],
        )
        if cur.rowcount != 1:
            raise GovernanceError("conflict", f"{self.NOUN} {row_id} changed meanwhile; reload")

    def review(self, row_id: int, who: Actor, approve: bool, notes: str) -> RowT:
        """The compliance officer's review (``in_review`` only; a rejection ends the row).

        Raises:
            GovernanceError: ``forbidden`` (no ``review`` permission, or the requester),
                ``not_found``, ``conflict`` (not in review, or already reviewed),
                ``invalid`` (no note).
        """
        return self._decide(row_id, who, approve, notes, review=True)

    def sign_off(self, row_id: int, who: Actor, approve: bool, notes: str) -> RowT:
        """The owner's sign-off, after an approving review: ``approved`` or ``rejected``.

        Raises:
            GovernanceError: ``forbidden`` (no ``sign_off``, the requester, or the compliance
                reviewer), ``not_found``, ``conflict`` (not in review or not yet reviewed).
        """
        return self._decide(row_id, who, approve, notes, review=False)

    def _decide(self, row_id: int, who: Actor, approve: bool, notes: str, *, review: bool) -> RowT:
        self._allow(who, "review" if review else "sign_off")
        what = "review" if review else "sign-off"
        text = clean_text(notes, f"the {what} note", required=review)
        with self._lock:
            row: Any = self.get(row_id)
            self._state(row, "in_review")
            check_not_requester(
                row.requested_by, who, "compliance review" if review else "sign-off", self.ASKED
            )
            if not review:
                check_sign_off(row.review, who)
            elif row.review is not None:
                raise GovernanceError("conflict", f"{self.NOUN} {row_id} is already reviewed")
            decision = Decision(who.actor, who.username, time.time(), decision_word(approve), text)
            if review:
                after = {} if approve else {"state": "rejected"}
            else:
                after = {"state": "approved" if approve else "rejected"}
            column = "review" if review else "signoff"
            self._set(row_id, "in_review", **{column: json.dumps(decision.__dict__)}, **after)
        self._audit.record(
            self.REVIEWED if review else self.SIGNED_OFF,
            who.actor,
            **{self.ID_KEY: row_id},
            decision=decision_word(approve),
        )
        return self.get(row_id)


class GovernanceStore(TwoPersonStore[ChangeRequest]):
    """Change requests in ``admin.sqlite`` (tables ``workflow_changes``, ``workflow_checklist``).

    Args:
        conn: The admin database (:func:`appliance.admin.db.connect`; autocommit mode).
        audit: Has ``record(kind, actor, **meta)`` (the admin audit outbox).
        perms: The permission names used by the rules; a mapping from ``"request"``,
            ``"review"``, ``"sign_off"``, ``"apply"`` to a tuple of permissions any of which
            allows the step.

    Raises:
        sqlite3.Error: The tables cannot be created.
    """

    TABLE = "workflow_changes"
    NOUN = "change"
    LONG_NOUN = "change request"
    ID_KEY = "change_id"
    REVIEWED = "AdminComplianceReviewed"
    SIGNED_OFF = "AdminSignedOff"

    MIGRATIONS = MIGRATIONS

    # -- reading ---------------------------------------------------------------------------

    def _build(self, row: sqlite3.Row) -> ChangeRequest:
        items = self._conn.execute(
            "SELECT item, by_actor, by_name, at, notes FROM workflow_checklist WHERE change_id = ?",
            [row["id"]],
        ).fetchall()
        return ChangeRequest(
            id=row["id"],
            kind=row["kind"],
            target=row["target"],
            action=row["action"],
            from_version=row["from_version"],
            to_version=row["to_version"],
            reason=row["reason"],
            requested_by=row["requested_by"],
            requested_by_name=row["requested_by_name"],
            created_at=row["created_at"],
            state=row["state"],
            payload=json.loads(row["payload"]),
            checklist={i[0]: ChecklistEntry(*i) for i in items},
            review=parse_decision(row["review"]),
            signoff=parse_decision(row["signoff"]),
            applied=None if row["applied"] is None else json.loads(row["applied"]),
            rolled_back=None if row["rolled_back"] is None else json.loads(row["rolled_back"]),
        )

    # -- steps -----------------------------------------------------------------------------

    def create(
        self,
        who: Actor,
        *,
        kind: str,
        target: str,
        action: str,
        from_version: str,
        to_version: str,
        reason: str,
        payload: dict[str, Any],
        now: float | None = None,
    ) -> ChangeRequest:
        """Open a draft change request (the caller has validated target and payload).

        Raises:
            GovernanceError: ``forbidden`` without ``request_change``; ``invalid``.
        """
        self._allow(who, "request")
        if kind not in ("tier", "workflow"):
            raise GovernanceError("invalid", f"unknown change kind {kind!r}")
        why = clean_text(reason, "the reason for the change")
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO workflow_changes (kind, target, action, from_version, to_version,"
                " reason, requested_by, requested_by_name, created_at, state, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'draft', ?)",
                [
                    kind,
                    target,
                    action,
                    from_version,
                    to_version,
                    why,
                    who.actor,
                    who.username,
                    time.time() if now is None else now,
                    json.dumps(payload),
                ],
            )
        change_id = int(cur.lastrowid or 0)
        self._audit.record(
            "AdminChangeRequested",
            who.actor,
            change_id=change_id,
            change_kind=kind,
            target=target,
            action=action,
            from_version=from_version,
            to_version=to_version,
        )
        return self.get(change_id)

    def _tick(self, change_id: int, who: Actor, item: str, notes: str) -> None:
        with self._lock:
            change = self.get(change_id)
            self._state(change, "draft")
            self._conn.execute(
                "INSERT OR REPLACE INTO workflow_checklist VALUES (?, ?, ?, ?, ?, ?)",
                [change_id, item, who.actor, who.username, time.time(), notes],
            )
        self._audit.record("AdminChecklistItemDone", who.actor, change_id=change_id, item=item)

    def complete_item(self, change_id: int, who: Actor, item: str, notes: str) -> ChangeRequest:
        """Mark a checklist item done with its evidence note (draft only).

        Raises:
            GovernanceError: ``forbidden``, ``not_found``, ``conflict`` (not a draft),
                ``invalid`` (unknown item, empty note, or the warm-transfer item, which only a
                test transfer ticks).
        """
        self._allow(who, "request")
        if item not in dict(CHECKLIST):
            raise GovernanceError("invalid", f"unknown checklist item {item!r}")
        if item == TRANSFER_ITEM:
            raise GovernanceError("invalid", "the warm-transfer item is ticked by a test transfer")
        self._tick(change_id, who, item, clean_text(notes, "a note (the evidence)"))
        return self.get(change_id)

    def record_transfer_test(
        self, change_id: int, who: Actor, result: dict[str, Any]
    ) -> ChangeRequest:
        """Store a test transfer's result; a successful one ticks the warm-transfer item.

        Args:
            change_id: The change request.
            who: Who ran the test.
            result: The agent's ``transfer.test`` answer: ``{"ok", "webhook_status",
                "detail"}``.

        Raises:
            GovernanceError: ``forbidden``, ``not_found``, ``conflict`` (not a draft).
        """
        self._allow(who, "request")
        ok = bool(result.get("ok"))
        status = result.get("webhook_status")
        detail = str(result.get("detail", ""))[:500]
        note = f"test transfer {'succeeded' if ok else 'failed'}; CTI webhook status {status}"
        if detail:
            note += f"; {detail}"
        if ok:
            self._tick(change_id, who, TRANSFER_ITEM, note)
        else:
            self._state(self.get(change_id), "draft")
        self._audit.record(
            "AdminTransferTested",
            who.actor,
            change_id=change_id,
            ok=ok,
            webhook_status=status if isinstance(status, int) else None,
        )
        return self.get(change_id)

    def submit(self, change_id: int, who: Actor) -> ChangeRequest:
        """Send a draft with a complete checklist to review.

        Raises:
            GovernanceError: ``forbidden``, ``not_found``, ``conflict`` (not a draft or the
                checklist is incomplete).
        """
        self._allow(who, "request")
        with self._lock:
            change = self.get(change_id)
            self._state(change, "draft")
            if not change.checklist_complete:
                missing = [label for key, label in CHECKLIST if key not in change.checklist]
                raise GovernanceError("conflict", "checklist incomplete: " + "; ".join(missing))
            self._set(change_id, "draft", state="in_review")
        self._audit.record("AdminSubmittedForReview", who.actor, change_id=change_id)
        return self.get(change_id)

    def check_apply(self, change_id: int, who: Actor) -> ChangeRequest:
        """Whether ``who`` may apply the change now (gate checks are the caller's).

        Raises:
            GovernanceError: ``forbidden``, ``not_found``, ``conflict`` (not approved).
        """
        self._allow(who, "apply")
        change = self.get(change_id)
        self._state(change, "approved")
        if not (change.checklist_complete and change.review and change.signoff):
            raise GovernanceError("conflict", "checklist, review and sign-off are all needed")
        return change

    def mark_applied(self, change_id: int, who: Actor, record: dict[str, Any]) -> ChangeRequest:
        """Record that the change was applied (``record``: what was written and replaced)."""
        with self._lock:
            record = {**record, "by": who.actor, "by_name": who.username, "at": time.time()}
            self._set(change_id, "approved", state="applied", applied=json.dumps(record))
        change = self.get(change_id)
        self._audit.record(
            "AdminChangeApplied",
            who.actor,
            change_id=change_id,
            change_kind=change.kind,
            target=change.target,
            to_version=change.to_version,
        )
        return change

    def check_rollback(self, change_id: int, who: Actor, reason: str) -> tuple[ChangeRequest, str]:
        """Whether ``who`` may roll the change back; returns it and the cleaned reason.

        Raises:
            GovernanceError: ``forbidden``, ``not_found``, ``conflict`` (not applied),
                ``invalid`` (no reason).
        """
        self._allow(who, "apply")
        why = clean_text(reason, "the reason for the rollback")
        change = self.get(change_id)
        self._state(change, "applied")
        return change, why

    def mark_rolled_back(self, change_id: int, who: Actor, reason: str) -> ChangeRequest:
        """Record the rollback (the previous version is back)."""
        with self._lock:
            record = {"by": who.actor, "by_name": who.username, "at": time.time(), "reason": reason}
            self._set(change_id, "applied", state="rolled_back", rolled_back=json.dumps(record))
        change = self.get(change_id)
        self._audit.record(
            "AdminRolledBack",
            who.actor,
            change_id=change_id,
            change_kind=change.kind,
            target=change.target,
            restored_version=change.from_version,
        )
        return change


def decision_word(approve: bool) -> str:
    """``"approved"`` or ``"rejected"``."""
    return "approved" if approve else "rejected"
