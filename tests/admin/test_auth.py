"""Sign-in, enrolment, MFA, lockout, CSRF, sessions and roles on the real app (TestClient)."""

from __future__ import annotations

import re

import pyotp
from fastapi.testclient import TestClient

from appliance.admin.rbac import Role
from tests.admin.conftest import PASSWORD, AdminEnv, Clock, new_client, sign_in


def _csrf(c: TestClient, path: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]*)"', c.get(path).text)
    return m.group(1) if m else ""


def test_enrolment_code_works_once_then_totp_is_mandatory(
    client: TestClient, admin_env: AdminEnv, clock: Clock, admin_app
) -> None:
    assert client.get("/login").headers["location"] == "/enrol"
    r = client.post(
        "/enrol",
        data={
            "code": "WRONG-CODE-0000-0000",
            "username": "alice",
            "password": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert r.status_code == 400 and "wrong" in r.text
    r = client.post(
        "/enrol",
        data={
            "code": admin_env.enrolment_code.lower(),
            "username": "Alice",
            "password": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/mfa/setup"
    # Not signed in yet: the password alone reaches no page.
    assert client.get("/users").status_code == 303
    page = client.get("/mfa/setup").text
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page).group(1).replace(" ", "")
    r = client.post(
        "/mfa/setup", data={"code": "000000", "csrf_token": _csrf(client, "/mfa/setup")}
    )
    assert r.status_code == 400
    r = client.post(
        "/mfa/setup",
        data={"code": pyotp.TOTP(secret).at(clock()), "csrf_token": _csrf(client, "/mfa/setup")},
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert client.get("/users").status_code == 200
    # The code is spent: a second enrolment is refused, whoever tries.
    with new_client(admin_app) as other:
        assert other.get("/enrol").status_code == 410
        r = other.post(
            "/enrol",
            data={
                "code": admin_env.enrolment_code,
                "username": "mallory",
                "password": PASSWORD,
                "password2": PASSWORD,
            },
        )
        assert r.status_code == 410
    kinds = [p["kind"] for p in admin_app.state.ctx.audit.pending()]
    assert "AdminEnrolled" in kinds and "AdminMfaEnrolled" in kinds and "AdminLogin" in kinds
    assert kinds.count("AdminEnrolmentRefused") == 2


def test_lockout_after_repeated_failures(
    client: TestClient, make_user, clock: Clock, admin_app
) -> None:
    made = make_user(Role.VIEWER)
    for _ in range(5):
        r = client.post(
            "/login", data={"username": made.user.username, "password": "nope nope nope"}
        )
        assert r.status_code == 401
    # Locked: even the right password is refused until the lock runs out.
    r = client.post("/login", data={"username": made.user.username, "password": PASSWORD})
    assert r.status_code == 401 and "locked" in r.text
    clock.advance(16 * 60)
    sign_in(client, made, clock)
    assert client.get("/").status_code in (200, 404)
    kinds = [p["kind"] for p in admin_app.state.ctx.audit.pending()]
    assert kinds.count("AdminLoginFailed") == 6 and "AdminLockout" in kinds


def test_wrong_totp_counts_and_a_code_is_not_reused(
    client: TestClient, make_user, clock: Clock
) -> None:
    made = make_user(Role.VIEWER)
    sign_in(client, made, clock)
    clock.advance(-31)  # back into the step just used
    with new_client(client.app) as again:
        again.post("/login", data={"username": made.user.username, "password": PASSWORD})
        code = pyotp.TOTP(made.secret).at(clock())
        r = again.post(
            "/login/totp", data={"code": code, "csrf_token": _csrf(again, "/login/totp")}
        )
        assert r.status_code == 401  # replay of a spent step


def test_csrf_is_refused_and_cross_origin_posts_too(signed_in) -> None:
    c = signed_in(Role.OWNER)
    r = c.post("/users", data={"username": "bob", "roles": ["viewer"]})
    assert r.status_code == 403
    r = c.post("/users", data={"username": "bob", "roles": ["viewer"], "csrf_token": "x" * 43})
    assert r.status_code == 403
    r = c.post(
        "/users",
        data={"username": "bob", "roles": ["viewer"], "csrf_token": c.csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    r = c.post("/users", data={"username": "bob", "roles": ["viewer"], "csrf_token": c.csrf})
    assert r.status_code == 201 and "/invite/" in r.text


def test_sessions_expire_when_idle_and_at_the_absolute_limit(signed_in, clock: Clock) -> None:
    c = signed_in(Role.OWNER)
    assert c.get("/users").status_code == 200
    clock.advance(16 * 60)
    r = c.get("/users")
    assert r.status_code == 303 and r.headers["location"] == "/login?expired=1"
    d = signed_in(Role.OWNER)
    for _ in range(13 * 6):  # busy all day: 13 h of requests 10 minutes apart
        clock.advance(600)
        if d.get("/users").status_code != 200:
            break
    assert d.get("/users").status_code == 303
    assert clock.offset > 12 * 3600


def test_viewer_gets_403_on_admin_pages_and_api(signed_in) -> None:
    c = signed_in(Role.VIEWER)
    assert c.get("/users").status_code == 403
    assert c.get("/api/users").status_code == 403
    anonymous = new_client(c.app)
    assert anonymous.get("/api/users").status_code == 401
    assert anonymous.get("/users").status_code == 303


def test_security_headers_on_every_response(client: TestClient) -> None:
    for path in ("/login", "/enrol", "/static/admin.css", "/nope"):
        r = client.get(path)
        h = r.headers
        assert "script-src 'self'" in h["content-security-policy"]
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["strict-transport-security"].startswith("max-age=")
        assert h["x-content-type-options"] == "nosniff"
        assert h["x-frame-options"] == "DENY"


def test_session_cookie_flags(client: TestClient, make_user) -> None:
    made = make_user(Role.VIEWER)
    r = client.post("/login", data={"username": made.user.username, "password": PASSWORD})
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-appliance=")
    for flag in ("Secure", "HttpOnly", "SameSite=strict", "Path=/"):
        assert flag.lower() in cookie.lower()


def test_oversized_bodies_are_refused_before_parsing(signed_in) -> None:
    c = signed_in(Role.PLATFORM_ENGINEER)
    r = c.post(
        "/api/schedule/import",
        files={"file": ("roster.csv", b"a" * (7 * 1024 * 1024), "text/csv")},
        headers={"X-CSRF-Token": c.csrf},
    )
    assert r.status_code == 413


def test_failed_attempts_from_one_address_are_throttled_but_good_sign_ins_are_not(
    client: TestClient, make_user, clock: Clock
) -> None:
    # Eleven colleagues behind one address sign in correctly: nobody is throttled.
    for _ in range(11):
        sign_in(client, make_user(Role.VIEWER), clock)
    # Ten failures (across accounts, so no account locks) throttle the address.
    for i in range(10):
        r = client.post("/login", data={"username": f"nobody{i}", "password": "not it at all"})
        assert r.status_code == 401
    made = make_user(Role.VIEWER)
    r = client.post("/login", data={"username": made.user.username, "password": PASSWORD})
    assert r.status_code == 429
