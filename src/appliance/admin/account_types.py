"""Shared types of the admin accounts store: the refusal error, a user, a session."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from appliance.admin.rbac import Role
from appliance.errors import ApplianceError


class AccountError(ApplianceError):
    """A request about accounts was refused; the message is safe to show."""

    def __init__(self, message: str) -> None:
        super().__init__("account_refused", message)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class User:
    """An account as the pages see it (no secrets)."""

    id: int
    username: str
    display_name: str
    roles: frozenset[Role]
    disabled: bool
    mfa_enrolled: bool
    locked_until: float
    created_at: float

    @property
    def actor(self) -> str:
        """How the audit log names this user: ``"user:<id>"``."""
        return f"user:{self.id}"


@dataclass(frozen=True)
class Session:
    """A server-side session; ``stage`` is ``"mfa"`` (password checked) or ``"full"``."""

    token_hash: str
    user: User
    stage: str
    csrf: str
    created_at: float
    last_seen: float


def digest(token: str) -> str:
    """The SHA-256 (hex) under which a session or invite token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()
