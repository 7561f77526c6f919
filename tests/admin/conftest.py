"""Fixtures for the admin page: a real app on real files, signed-in clients, a real browser.

- ``admin_env``: settings whose ``[admin]`` files live in ``tmp_path``, a TLS certificate and an
  enrolment code made by first boot's own code (the code is read from its notice file).
- ``admin_app`` / ``client``: the FastAPI app and an HTTPS ``TestClient`` (no agent behind the
  control socket unless a test starts one: admin records then wait in the outbox).
- ``make_user(*roles)``: an account with a password and a TOTP seed, ready to sign in.
- ``signed_in(*roles)``: a ``TestClient`` signed in with password and TOTP as a new user with
  those roles; ``.csrf`` holds its CSRF token, ``.user`` the account.
- ``admin_server`` / ``browser_page`` (in ``browser.py``): ``appliance admin`` as a subprocess
  over real HTTPS and Debian's Chromium driven by Playwright.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from fastapi.testclient import TestClient

from appliance.admin.accounts import User
from appliance.admin.rbac import Role
from appliance.admin.web import create_app
from appliance.app.firstboot import FirstbootReport, ensure_enrolment, ensure_tls
from appliance.config import load_settings
from appliance.config.settings import ApplianceSettings
from appliance.control import ControlClient

PASSWORD = "correct horse battery staple"


class Clock:
    """Real time plus an offset the test can move (session expiry, lockout, TOTP steps)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class AdminEnv:
    settings: ApplianceSettings
    settings_path: Path
    enrolment_code: str
    root: Path


def write_settings(root: Path, extra: str = "", admin_extra: str = "") -> Path:
    """A settings file whose every admin, store and audit path is under ``root``.

    ``admin_extra``: more ``key = value`` lines for ``[admin]``; ``extra``: more sections.
    """
    path = root / "appliance.toml"
    path.write_text(
        f"""
[admin]
{admin_extra}
db = "{root}/admin.sqlite"
control_socket = "{root}/run/control.sock"
tls_dir = "{root}/tls"
enrolment_hash = "{root}/enrolment.argon2"
metrics_token_file = "{root}/keys/metrics-token"

[store]
metadata_db = "{root}/calls.sqlite"

[scheduling]
db = "{root}/calendar.sqlite"

[audit]
db = "{root}/audit/audit.sqlite"
kek_file = "{root}/keys/audit-kek"
signing_key_file = "{root}/keys/audit-signing.key"
checkpoint_file = "{root}/audit/checkpoints.log"
{extra}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def admin_env(tmp_path: Path) -> AdminEnv:
    root = tmp_path / "box"
    root.mkdir()
    path = write_settings(root)
    settings = load_settings(path)
    report = FirstbootReport()
    ensure_tls(settings.admin.tls_dir, report)
    notice = root / "firstboot" / "enrolment-code.txt"
    ensure_enrolment(settings.admin.enrolment_hash, notice, None, report)
    match = re.search(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){3})\b", notice.read_text())
    assert match, "first boot wrote no enrolment code"
    return AdminEnv(settings, path, match.group(1), root)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def admin_app(admin_env: AdminEnv, clock: Clock):  # noqa: ANN201 - FastAPI app
    return create_app(
        admin_env.settings,
        settings_path=admin_env.settings_path,
        control=ControlClient(admin_env.settings.admin.control_socket, timeout=2.0),
        clock=clock,
    )


def new_client(app) -> TestClient:  # noqa: ANN001
    return TestClient(app, base_url="https://testserver", follow_redirects=False)


@pytest.fixture
def client(admin_app) -> Iterator[TestClient]:  # noqa: ANN001
    with new_client(admin_app) as c:
        yield c


@dataclass
class MadeUser:
    user: User
    password: str
    secret: str


@pytest.fixture
def make_user(admin_app, clock: Clock) -> Callable[..., MadeUser]:  # noqa: ANN001
    accounts = admin_app.state.ctx.accounts
    counter = iter(range(1, 1000))

    def make(*roles: Role, username: str = "") -> MadeUser:
        name = username or f"user{next(counter)}-{'-'.join(r.value[:4] for r in roles)}"
        user = accounts.create(name, frozenset(roles), created_by="test")
        accounts.set_password(user.id, PASSWORD)
        secret = accounts.new_totp_secret()
        assert accounts.enrol_totp(user.id, secret, pyotp.TOTP(secret).at(clock()))
        clock.advance(31)  # the set-up code's step is used up
        return MadeUser(accounts.get(user.id), PASSWORD, secret)

    return make


def sign_in(c: TestClient, made: MadeUser, clock: Clock) -> None:
    """Password then TOTP through the real forms; leaves ``c.csrf`` set."""
    r = c.post("/login", data={"username": made.user.username, "password": made.password})
    assert r.status_code == 303, r.text
    code = pyotp.TOTP(made.secret).at(clock())
    r = c.post("/login/totp", data={"code": code, "csrf_token": _csrf(c, "/login/totp")})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    clock.advance(31)
    c.csrf = _csrf(c, "/login")  # type: ignore[attr-defined]
    assert c.csrf  # type: ignore[attr-defined]


def _csrf(c: TestClient, path: str) -> str:
    """The session's CSRF token from a page's ``<meta name="csrf-token">``."""
    m = re.search(r'name="csrf-token" content="([^"]*)"', c.get(path).text)
    return m.group(1) if m else ""


@pytest.fixture
def signed_in(admin_app, make_user, clock: Clock) -> Iterator[Callable[..., TestClient]]:  # noqa: ANN001
    clients: list[TestClient] = []

    def make(*roles: Role) -> TestClient:
        made = make_user(*roles)
        c = new_client(admin_app)
        c.__enter__()
        clients.append(c)
        sign_in(c, made, clock)
        c.user = made  # type: ignore[attr-defined]
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


# The real-browser fixtures (imported last: browser.py uses the helpers above).
from tests.admin.browser import admin_server, chromium, new_page  # noqa: E402, F401
