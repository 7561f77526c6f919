"""The admin page in headless Chromium over real HTTPS: enrolment, TOTP, lockout, CSRF, expiry.

Each test starts ``appliance admin`` as its own process (``tests/admin/browser.py``).
"""

from __future__ import annotations

import re
import time

import pyotp
import pytest

from appliance.admin.rbac import Role
from tests.admin.browser import (
    AdminServer,
    browser_sign_in,
    needs_browser,
    start_admin,
    stop_admin,
)
from tests.admin.conftest import PASSWORD

pytestmark = [pytest.mark.browser, needs_browser]


def test_enrolment_then_totp_setup_then_the_code_is_refused_again(
    admin_server: AdminServer, new_page
) -> None:
    page = new_page()
    page.goto(admin_server.url + "/")
    page.wait_for_url("**/enrol")  # no account yet: the first visit goes to enrolment
    page.fill("input[name=code]", admin_server.enrolment_code)
    page.fill("input[name=username]", "clinic-admin")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url("**/mfa/setup")
    assert page.locator(".qr svg").count() == 1
    secret = page.inner_text("#totp-secret").replace(" ", "")
    page.fill("input[name=code]", pyotp.TOTP(secret).now())
    page.click("main button[type=submit]")
    page.wait_for_url(admin_server.url + "/")
    assert "clinic-admin" in page.inner_text("header")
    # Sign out and back in: password, then a TOTP code of a later step.
    page.click("header button[type=submit]")
    page.wait_for_url("**/login")
    admin_server._steps[secret] = int(time.time() // 30)
    browser_sign_in(page, admin_server, "clinic-admin", secret)
    assert page.url == admin_server.url + "/"
    # The enrolment code works once, for anyone.
    other = new_page()
    other.goto(admin_server.url + "/enrol")
    assert "Enrolment is closed" in other.inner_text("main")
    response = other.request.post(
        admin_server.url + "/enrol",
        form={
            "code": admin_server.enrolment_code,
            "username": "intruder",
            "password": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status == 410


def test_lockout_after_repeated_failures(admin_server: AdminServer, new_page) -> None:
    name, secret = admin_server.make_user(Role.VIEWER)
    page = new_page()
    for _ in range(5):
        page.goto(admin_server.url + "/login")
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", "not the password at all")
        page.click("main button[type=submit]")
        assert "Sign-in failed" in page.inner_text(".error") or "locked" in page.inner_text(
            ".error"
        )
    page.goto(admin_server.url + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    assert "locked" in page.inner_text(".error")
    assert "/login/totp" not in page.url


def test_a_form_with_a_forged_csrf_token_is_refused(admin_server: AdminServer, new_page) -> None:
    name, secret = admin_server.make_user(Role.OWNER, Role.PLATFORM_ENGINEER)
    page = new_page()
    browser_sign_in(page, admin_server, name, secret)
    page.goto(admin_server.url + "/users")
    page.fill("#invite input[name=username]", "forged")
    page.check("#invite input[value=viewer]")
    page.locator("#invite input[name=csrf_token]").evaluate("e => e.value = 'forged-token'")
    page.click("#invite button[type=submit]")
    assert "CSRF" in page.inner_text("main")
    assert "forged" not in [u.username for u in admin_server.accounts().users()]
    # The genuine form works.
    page.goto(admin_server.url + "/users")
    page.fill("#invite input[name=username]", "genuine")
    page.check("#invite input[value=viewer]")
    page.click("#invite button[type=submit]")
    assert re.search(r"/invite/[\w-]{20,}", page.inner_text("#invite-link"))


def test_an_idle_session_expires(tmp_path, new_page) -> None:
    root = tmp_path / "box"
    root.mkdir()
    server = start_admin(root, admin_extra="session_idle_minutes = 0.05")  # 3 s
    try:
        name, secret = server.make_user(Role.VIEWER)
        page = new_page()
        browser_sign_in(page, server, name, secret)
        assert "/login" not in page.url
        time.sleep(4)
        page.goto(server.url + "/")
        page.wait_for_url("**/login?expired=1")
        assert "session has ended" in page.inner_text("main")
    finally:
        stop_admin(server)


def test_tls_and_security_headers_on_the_running_server(admin_server: AdminServer) -> None:
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(admin_server.root / "tls" / "ca.crt"))
    ctx.check_hostname = False
    with urllib.request.urlopen(admin_server.url + "/login", context=ctx, timeout=10) as r:
        headers = {k.lower(): v for k, v in r.headers.items()}
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    assert "server" not in headers
    # TLS 1.1 and older are refused; TLS 1.2 with an AEAD suite is accepted.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    host, port = admin_server.url.removeprefix("https://").split(":")
    import socket

    with pytest.raises(ssl.SSLError), socket.create_connection((host, int(port)), 5) as sock:
        old.wrap_socket(sock)
    tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls12.check_hostname = False
    tls12.verify_mode = ssl.CERT_NONE
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, int(port)), 5) as sock, tls12.wrap_socket(sock) as tls:
        assert tls.version() == "TLSv1.2"
        assert "GCM" in tls.cipher()[0] or "CHACHA20" in tls.cipher()[0]
    # Plain HTTP on the same port gets no page.
    with socket.create_connection((host, int(port)), 5) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        try:
            data = sock.recv(200)
        except (TimeoutError, ConnectionResetError):
            data = b""
        assert b"Sign in" not in data
