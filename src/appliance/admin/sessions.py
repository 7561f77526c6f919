"""Server-side sessions and one-time invitations of the admin accounts store.

Only the SHA-256 of a session or invite token is stored (OWASP ASVS 3.2.2 / 3.3); a session has
an idle and an absolute limit, and a sign-in that passes MFA gets a new token (ASVS 3.2.1).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from typing import TYPE_CHECKING

from appliance.admin.account_types import AccountError, Session, User
from appliance.admin.account_types import digest as _digest

INVITE_HOURS = 72.0


class SessionsMixin:
    """Sessions and invitations, mixed into :class:`appliance.admin.accounts.Accounts`."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    idle_s: float
    absolute_s: float

    if TYPE_CHECKING:  # provided by Accounts

        def now(self) -> float:  # noqa: D102
            ...

        def get(self, user_id: int) -> User:  # noqa: D102
            ...

        def set_password(self, user_id: int, password: str) -> None:  # noqa: D102
            ...

    # --------------------------------------------------------------- invites
    def invite(self, user_id: int) -> str:
        """A one-time link token (valid :data:`INVITE_HOURS`) to set a password and MFA."""
        token = secrets.token_urlsafe(32)
        self._conn.execute(
            "INSERT INTO invites (token_hash, user_id, expires_at) VALUES (?, ?, ?)",
            [_digest(token), user_id, self.now() + INVITE_HOURS * 3600],
        )
        return token

    def invite_user(self, token: str) -> User | None:
        """The user an unused, unexpired invite is for."""
        row = self._conn.execute(
            "SELECT user_id FROM invites WHERE token_hash = ? AND used_at IS NULL "
            "AND expires_at > ?",
            [_digest(token), self.now()],
        ).fetchone()
        return None if row is None else self.get(int(row["user_id"]))

    def accept_invite(self, token: str, password: str) -> User:
        """Set the invited user's password; the invite is then used up.

        Raises:
            AccountError: The invite is unknown, used or expired, or the password is refused.
        """
        with self._lock:
            user = self.invite_user(token)
            if user is None:
                raise AccountError("This invitation is not valid any more.")
            self.set_password(user.id, password)
            self._conn.execute(
                "UPDATE invites SET used_at = ? WHERE token_hash = ?", [self.now(), _digest(token)]
            )
        return user

    # --------------------------------------------------------------- sessions
    def start_session(self, user_id: int, stage: str, address: str, user_agent: str) -> str:
        """Start a session and return its token (only its SHA-256 is stored)."""
        token = secrets.token_urlsafe(32)
        now = self.now()
        self._conn.execute(
            "INSERT INTO sessions (token_hash, user_id, stage, csrf, created_at, last_seen,"
            " address, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                _digest(token),
                user_id,
                stage,
                secrets.token_urlsafe(32),
                now,
                now,
                address[:64],
                user_agent[:200],
            ],
        )
        return token

    def session(self, token: str, *, touch: bool = True) -> Session | None:
        """The live session for ``token``, or ``None`` (see :meth:`lookup`)."""
        return self.lookup(token, touch=touch)[0]

    def lookup(self, token: str, *, touch: bool = True) -> tuple[Session | None, bool]:
        """The live session for ``token``, and whether it has just run out.

        Returns:
            ``(session, False)`` for a live one; ``(None, True)`` for a session that was idle
            too long, is past its absolute limit or whose user is disabled (it is deleted);
            ``(None, False)`` for an unknown token.
        """
        if not token or len(token) > 200:
            return None, False
        digest = _digest(token)
        row = self._conn.execute("SELECT * FROM sessions WHERE token_hash = ?", [digest]).fetchone()
        if row is None:
            return None, False
        now = self.now()
        idle = now - float(row["last_seen"]) > self.idle_s
        old = now - float(row["created_at"]) > self.absolute_s
        user = self.get(int(row["user_id"]))
        if idle or old or user.disabled:
            self._conn.execute("DELETE FROM sessions WHERE token_hash = ?", [digest])
            return None, True
        if touch:
            self._conn.execute(
                "UPDATE sessions SET last_seen = ? WHERE token_hash = ?", [now, digest]
            )
        session = Session(
            token_hash=digest,
            user=user,
            stage=row["stage"],
            csrf=row["csrf"],
            created_at=float(row["created_at"]),
            last_seen=now if touch else float(row["last_seen"]),
        )
        return session, False

    def end_session(self, token_hash: str) -> None:
        """End one session (sign-out or revocation)."""
        self._conn.execute("DELETE FROM sessions WHERE token_hash = ?", [token_hash])

    def end_sessions(self, user_id: int) -> int:
        """End every session of a user; returns how many."""
        cur = self._conn.execute("DELETE FROM sessions WHERE user_id = ?", [user_id])
        return cur.rowcount

    def sessions(self) -> list[dict[str, object]]:
        """Live sessions of every user (for the users page), newest first."""
        now = self.now()
        rows = self._conn.execute(
            "SELECT s.token_hash, s.user_id, u.username, s.stage, s.created_at, s.last_seen,"
            " s.address, s.user_agent FROM sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.last_seen > ? AND s.created_at > ? ORDER BY s.last_seen DESC",
            [now - self.idle_s, now - self.absolute_s],
        ).fetchall()
        return [dict(r) | {"id": str(r["token_hash"])[:16]} for r in rows]

    def end_session_by_prefix(self, prefix: str) -> int:
        """End the session whose digest starts with ``prefix`` (16 hex characters)."""
        if len(prefix) != 16 or not all(c in "0123456789abcdef" for c in prefix):
            return 0
        cur = self._conn.execute(
            "DELETE FROM sessions WHERE substr(token_hash, 1, 16) = ?", [prefix]
        )
        return cur.rowcount

    def promote(self, token_hash: str) -> str:
        """Move an ``mfa`` session to ``full`` with a new CSRF token; returns a NEW session token.

        The old token is dropped (session fixation, ASVS 3.2.1).
        """
        row = self._conn.execute(
            "SELECT * FROM sessions WHERE token_hash = ?", [token_hash]
        ).fetchone()
        if row is None:
            raise AccountError("The sign-in has expired; start again.")
        self._conn.execute("DELETE FROM sessions WHERE token_hash = ?", [token_hash])
        return self.start_session(
            int(row["user_id"]), "full", str(row["address"]), str(row["user_agent"])
        )
