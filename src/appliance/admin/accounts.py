"""Admin accounts: Argon2id passwords, mandatory TOTP, lockout, server-side sessions, invites.

References: OWASP ASVS 4.0 level 2 (V2 authentication, V3 session management); RFC 6238 (TOTP,
30 s steps, 6 digits, one step of clock drift accepted, each step usable once); OWASP's
password-storage minimum for Argon2id (m=19 MiB, t=2, p=1, as first boot uses for the
enrolment code).

Secrets are never stored in clear: passwords and the enrolment code as Argon2id hashes, session
and invite tokens as SHA-256 digests, TOTP seeds sealed with Fernet under a key file of the
admin process (``<admin db>.key``, mode 0600).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import pyotp
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import Fernet, InvalidToken

from appliance.admin.account_types import AccountError, Session, User
from appliance.admin.rbac import Role, parse_roles
from appliance.admin.sessions import INVITE_HOURS, SessionsMixin
from appliance.migrations import apply_migrations

__all__ = [
    "INVITE_HOURS",
    "AccountError",
    "Accounts",
    "Session",
    "User",
    "check_password_policy",
    "check_username",
]

#: Password length bounds (ASVS 2.1.1 / 2.1.2: at least 12, at least 64 allowed).
PASSWORD_MIN = 12
PASSWORD_MAX = 128
USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")
TOTP_ISSUER = "Clinic voice appliance"

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, type=Type.ID)
#: Verified against for unknown user names, so both paths cost one Argon2id verification.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


def _m001(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            display_name TEXT NOT NULL DEFAULT '',
            password_hash TEXT,
            totp_sealed BLOB,
            totp_last_step INTEGER NOT NULL DEFAULT 0,
            roles TEXT NOT NULL DEFAULT '',
            disabled INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            locked_until REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            created_by TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            stage TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_seen REAL NOT NULL,
            address TEXT NOT NULL DEFAULT '',
            user_agent TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX sessions_user ON sessions(user_id);
        CREATE TABLE invites (
            token_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            expires_at REAL NOT NULL,
            used_at REAL
        );
        CREATE TABLE enrolment (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            used_at REAL NOT NULL,
            user_id INTEGER NOT NULL
        );
        """
    )


MIGRATIONS = [("accounts_001_users_sessions", _m001)]


def check_password_policy(password: str, username: str) -> None:
    """ASVS 2.1: 12..128 characters, not the user name, not a trivially repeated character.

    Raises:
        AccountError: The password is refused; the message says why.
    """
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise AccountError(f"Passwords have {PASSWORD_MIN} to {PASSWORD_MAX} characters.")
    if username and username.lower() in password.lower():
        raise AccountError("The password must not contain the user name.")
    if len(set(password)) < 4:
        raise AccountError("The password is too easy to guess.")


def check_username(username: str) -> str:
    """Normalise and check a user name (3..40 of a-z, 0-9, ``.``, ``_``, ``-``).

    Raises:
        AccountError: Not a valid user name.
    """
    name = username.strip().lower()
    if not 3 <= len(name) <= 40 or not set(name) <= USERNAME_CHARS:
        raise AccountError("User names have 3 to 40 letters, digits, dots, dashes or underscores.")
    return name


class Accounts(SessionsMixin):
    """The account store over ``admin.sqlite``.

    Args:
        conn: The admin database (see :func:`appliance.admin.db.connect`).
        key_file: Fernet key sealing TOTP seeds; created (0600) if missing.
        lockout_failures: Failures in a row that lock an account.
        lockout_s: How long a lock lasts, seconds.
        idle_s: A session ends after this long without a request, seconds.
        absolute_s: A session ends this long after sign-in, seconds.
        clock: Time source (epoch seconds); tests move it.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        key_file: Path,
        *,
        lockout_failures: int = 5,
        lockout_s: float = 900.0,
        idle_s: float = 900.0,
        absolute_s: float = 43200.0,
        clock: object = time.time,
    ) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.lockout_failures = lockout_failures
        self.lockout_s = lockout_s
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._clock = clock
        apply_migrations(conn, MIGRATIONS, conn)
        self._fernet = Fernet(self._load_key(Path(key_file)))

    def now(self) -> float:
        """The store's clock, epoch seconds."""
        return float(self._clock())  # type: ignore[operator]

    @staticmethod
    def _load_key(path: Path) -> bytes:
        if path.exists():
            return path.read_bytes().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key + b"\n")
        return key

    # ------------------------------------------------------------------ users
    def _user(self, row: sqlite3.Row) -> User:
        return User(
            id=int(row["id"]),
            username=row["username"],
            display_name=row["display_name"],
            roles=parse_roles([r for r in row["roles"].split(",") if r]),
            disabled=bool(row["disabled"]),
            mfa_enrolled=row["totp_sealed"] is not None,
            locked_until=float(row["locked_until"]),
            created_at=float(row["created_at"]),
        )

    def count(self) -> int:
        """How many accounts exist."""
        return int(self._conn.execute("SELECT count(*) FROM users").fetchone()[0])

    def users(self) -> list[User]:
        """Every account, by user name."""
        rows = self._conn.execute("SELECT * FROM users ORDER BY username").fetchall()
        return [self._user(r) for r in rows]

    def get(self, user_id: int) -> User:
        """One account.

        Raises:
            AccountError: No such account.
        """
        row = self._conn.execute("SELECT * FROM users WHERE id = ?", [user_id]).fetchone()
        if row is None:
            raise AccountError("No such user.")
        return self._user(row)

    def create(
        self,
        username: str,
        roles: frozenset[Role],
        *,
        display_name: str = "",
        password: str | None = None,
        created_by: str = "",
    ) -> User:
        """Create an account (without MFA: it is set up at first sign-in).

        Raises:
            AccountError: A bad or taken user name, no role, or a refused password.
        """
        name = check_username(username)
        if not roles:
            raise AccountError("Give the user at least one role.")
        hashed = None
        if password is not None:
            check_password_policy(password, name)
            hashed = _HASHER.hash(password)
        with self._lock:
            try:
                cur = self._conn.execute(
                    "INSERT INTO users (username, display_name, password_hash, roles, created_at,"
                    " created_by) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        name,
                        display_name.strip()[:80],
                        hashed,
                        ",".join(sorted(roles)),
                        self.now(),
                        created_by,
                    ],
                )
            except sqlite3.IntegrityError:
                raise AccountError("That user name is taken.") from None
        return self.get(int(cur.lastrowid or 0))

    def enrol_first_admin(
        self, code: str, hash_file: Path, username: str, password: str, roles: frozenset[Role]
    ) -> User:
        """Create the first administrator with first boot's one-time enrolment code.

        The code works once: the enrolment row and the account are written in one
        transaction, and enrolment is closed for good once any account exists.

        Raises:
            AccountError: Enrolment is closed, the code is wrong, or the account is refused.
        """
        try:
            stored = hash_file.read_text(encoding="ascii").strip()
        except OSError:
            raise AccountError("No enrolment code exists on this box.") from None
        with self._lock:
            used = self._conn.execute("SELECT 1 FROM enrolment").fetchone()
            if used is not None or self.count() > 0:
                raise AccountError("Enrolment is closed: the code has been used.")
            try:
                _HASHER.verify(stored, code.strip().upper())
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                raise AccountError("The enrolment code is wrong.") from None
            name = check_username(username)
            check_password_policy(password, name)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if self._conn.execute("SELECT count(*) FROM users").fetchone()[0]:
                    raise AccountError("Enrolment is closed: the code has been used.")
                cur = self._conn.execute(
                    "INSERT INTO users (username, password_hash, roles, created_at, created_by)"
                    " VALUES (?, ?, ?, ?, 'enrolment')",
                    [name, _HASHER.hash(password), ",".join(sorted(roles)), self.now()],
                )
                user_id = int(cur.lastrowid or 0)
                self._conn.execute(
                    "INSERT INTO enrolment (id, used_at, user_id) VALUES (1, ?, ?)",
                    [self.now(), user_id],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return self.get(user_id)

    def enrolment_open(self) -> bool:
        """Whether the enrolment page still accepts the code."""
        return self._conn.execute("SELECT 1 FROM enrolment").fetchone() is None and not self.count()

    def set_roles(self, user_id: int, roles: frozenset[Role]) -> User:
        """Replace a user's roles.

        Raises:
            AccountError: No role given, or no such user.
        """
        if not roles:
            raise AccountError("Give the user at least one role.")
        self.get(user_id)
        self._conn.execute(
            "UPDATE users SET roles = ? WHERE id = ?", [",".join(sorted(roles)), user_id]
        )
        return self.get(user_id)

    def set_disabled(self, user_id: int, disabled: bool) -> User:
        """Disable (ending every session) or re-enable an account."""
        self.get(user_id)
        self._conn.execute("UPDATE users SET disabled = ? WHERE id = ?", [int(disabled), user_id])
        if disabled:
            self.end_sessions(user_id)
        return self.get(user_id)

    def set_password(self, user_id: int, password: str) -> None:
        """Set a new password (policy-checked); every session of the user ends.

        Raises:
            AccountError: The password is refused.
        """
        user = self.get(user_id)
        check_password_policy(password, user.username)
        self._conn.execute(
            "UPDATE users SET password_hash = ?, failures = 0, locked_until = 0 WHERE id = ?",
            [_HASHER.hash(password), user_id],
        )
        self.end_sessions(user_id)

    # --------------------------------------------------------------- sign-in
    def check_password(self, username: str, password: str) -> tuple[User | None, str]:
        """Check a user name and password; count failures and lock the account.

        Returns:
            ``(user, "ok")`` on success; ``(None, reason)`` otherwise, where reason is
            ``"unknown"``, ``"wrong"``, ``"locked"`` or ``"disabled"`` (for the audit record;
            the page shows one generic message).
        """
        name = username.strip().lower()
        row = self._conn.execute("SELECT * FROM users WHERE username = ?", [name]).fetchone()
        if row is None or row["password_hash"] is None:
            try:
                _HASHER.verify(_DUMMY_HASH, password)
            except VerificationError:
                pass
            return None, "unknown"
        user = self._user(row)
        if user.disabled:
            return None, "disabled"
        if user.locked_until > self.now():
            return None, "locked"
        try:
            _HASHER.verify(row["password_hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None, self.record_failure(user.id)
        if _HASHER.check_needs_rehash(row["password_hash"]):
            self._conn.execute(
                "UPDATE users SET password_hash = ? WHERE id = ?", [_HASHER.hash(password), user.id]
            )
        return user, "ok"

    def record_failure(self, user_id: int) -> str:
        """Count a failed password or TOTP; lock the account at the threshold.

        Returns:
            ``"locked"`` if this failure locked the account, else ``"wrong"``.
        """
        with self._lock:
            row = self._conn.execute(
                "SELECT failures FROM users WHERE id = ?", [user_id]
            ).fetchone()
            failures = int(row["failures"]) + 1 if row else 1
            if failures >= self.lockout_failures:
                self._conn.execute(
                    "UPDATE users SET failures = 0, locked_until = ? WHERE id = ?",
                    [self.now() + self.lockout_s, user_id],
                )
                return "locked"
            self._conn.execute("UPDATE users SET failures = ? WHERE id = ?", [failures, user_id])
            return "wrong"

    def clear_failures(self, user_id: int) -> None:
        """Reset the failure count after a complete sign-in."""
        self._conn.execute("UPDATE users SET failures = 0 WHERE id = ?", [user_id])

    # ------------------------------------------------------------------- TOTP
    def new_totp_secret(self) -> str:
        """A fresh base32 TOTP seed (160 bits) for the set-up page."""
        return pyotp.random_base32(32)

    @staticmethod
    def provisioning_uri(secret: str, username: str) -> str:
        """The ``otpauth://`` URI an authenticator app scans (RFC 6238 defaults)."""
        return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)

    def _match_step(self, secret: str, code: str, last_step: int) -> int | None:
        code = code.strip().replace(" ", "")
        if not (len(code) == 6 and code.isdigit()):
            return None
        totp = pyotp.TOTP(secret)
        now = self.now()
        step = int(now // totp.interval)
        for candidate in (step, step - 1, step + 1):
            if candidate > last_step and secrets.compare_digest(totp.generate_otp(candidate), code):
                return candidate
        return None

    def enrol_totp(self, user_id: int, secret: str, code: str) -> bool:
        """Store ``secret`` for the user if ``code`` proves their app has it."""
        step = self._match_step(secret, code, 0)
        if step is None:
            return False
        self._conn.execute(
            "UPDATE users SET totp_sealed = ?, totp_last_step = ? WHERE id = ?",
            [self._fernet.encrypt(secret.encode()), step, user_id],
        )
        return True

    def verify_totp(self, user_id: int, code: str) -> bool:
        """Check a TOTP code; a step already used is refused (replay, ASVS 2.8.4)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT totp_sealed, totp_last_step FROM users WHERE id = ?", [user_id]
            ).fetchone()
            if row is None or row["totp_sealed"] is None:
                return False
            try:
                secret = self._fernet.decrypt(row["totp_sealed"]).decode()
            except InvalidToken:
                return False
            step = self._match_step(secret, code, int(row["totp_last_step"]))
            if step is None:
                return False
            self._conn.execute("UPDATE users SET totp_last_step = ? WHERE id = ?", [step, user_id])
            return True

    def reset_totp(self, user_id: int) -> None:
        """Forget the user's TOTP seed; they set up a new one at their next sign-in."""
        self.get(user_id)
        self._conn.execute(
            "UPDATE users SET totp_sealed = NULL, totp_last_step = 0 WHERE id = ?", [user_id]
        )
        self.end_sessions(user_id)
