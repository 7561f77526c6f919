"""Roles and permissions of the admin page.

The five governance roles of the production framework plus a viewer (issue 12). One person may
hold several roles; a permission is granted if any of their roles grants it. Every route states
the permission it needs (:func:`appliance.admin.auth.require`); a missing one is a 403, never data.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """A governance role."""

    OWNER = "owner"  #: Voice AI owner: deployment decisions and the final sign-off.
    PLATFORM_ENGINEER = "platform_engineer"  #: Settings, models, monitoring, incidents.
    COMPLIANCE_OFFICER = "compliance_officer"  #: Audit verification and export, PHI, reviews.
    QUALITY_REVIEWER = "quality_reviewer"  #: Post-call scores, transcript review, the KB.
    CONTACT_CENTRE_LEAD = "contact_centre_lead"  #: Escalation and transfer settings and tests.
    VIEWER = "viewer"  #: Dashboards only, never PHI.


class Permission(StrEnum):
    """Something a route allows."""

    VIEW_DASHBOARD = "view_dashboard"
    VIEW_CALLS = "view_calls"
    VIEW_PHI = "view_phi"
    REVIEW_QUALITY = "review_quality"
    EDIT_KB = "edit_kb"
    MANAGE_SETTINGS = "manage_settings"
    MANAGE_TRANSFER = "manage_transfer"
    VIEW_SYSTEM = "view_system"
    VERIFY_AUDIT = "verify_audit"
    MANAGE_USERS = "manage_users"
    REQUEST_CHANGE = "request_change"
    COMPLIANCE_REVIEW = "compliance_review"
    SIGN_OFF = "sign_off"
    IMPORT_SCHEDULE = "import_schedule"
    TEST_CALL = "test_call"
    VIEW_WORKFLOWS = "view_workflows"
    VIEW_CAMPAIGNS = "view_campaigns"  #: Reminder campaigns: counts only, never a number.
    #: Propose a reminder campaign (and start it once signed off).
    PROPOSE_CAMPAIGN = "propose_campaign"


P = Permission
_STAFF = {P.VIEW_DASHBOARD, P.VIEW_CALLS, P.VIEW_WORKFLOWS, P.TEST_CALL, P.VIEW_CAMPAIGNS}

#: What each role allows. PHI (decrypted transcripts, with a stated reason) only for the
#: compliance officer and the quality reviewer; the viewer sees dashboards only.
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(
        _STAFF | {P.SIGN_OFF, P.REQUEST_CHANGE, P.MANAGE_USERS, P.VIEW_SYSTEM, P.PROPOSE_CAMPAIGN}
    ),
    Role.PLATFORM_ENGINEER: frozenset(
        _STAFF
        | {P.MANAGE_SETTINGS, P.MANAGE_TRANSFER, P.VIEW_SYSTEM, P.MANAGE_USERS, P.REQUEST_CHANGE}
        | {P.IMPORT_SCHEDULE}
    ),
    Role.COMPLIANCE_OFFICER: frozenset(
        _STAFF | {P.VIEW_PHI, P.VERIFY_AUDIT, P.COMPLIANCE_REVIEW, P.VIEW_SYSTEM}
    ),
    Role.QUALITY_REVIEWER: frozenset(
        _STAFF | {P.VIEW_PHI, P.REVIEW_QUALITY, P.EDIT_KB, P.REQUEST_CHANGE}
    ),
    Role.CONTACT_CENTRE_LEAD: frozenset(
        _STAFF | {P.MANAGE_TRANSFER, P.IMPORT_SCHEDULE, P.REQUEST_CHANGE, P.PROPOSE_CAMPAIGN}
    ),
    Role.VIEWER: frozenset({P.VIEW_DASHBOARD, P.VIEW_CAMPAIGNS}),
}

#: Roles the first administrator gets at enrolment: they can then invite everyone else.
FIRST_ADMIN_ROLES = (Role.OWNER, Role.PLATFORM_ENGINEER)


def permissions(roles: frozenset[Role] | set[Role]) -> frozenset[Permission]:
    """The union of what ``roles`` allow."""
    out: set[Permission] = set()
    for role in roles:
        out |= ROLE_PERMISSIONS[role]
    return frozenset(out)


def parse_roles(names: list[str] | tuple[str, ...]) -> frozenset[Role]:
    """Roles from their names.

    Raises:
        ValueError: A name is not a role.
    """
    out = set()
    for name in names:
        try:
            out.add(Role(name))
        except ValueError:
            raise ValueError(f"unknown role {name!r}") from None
    return frozenset(out)
