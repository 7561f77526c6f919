"""Every role against every page in headless Chromium: allowed pages render, the rest are 403.

The same expectations as ``test_roles.py`` (written from the issue's role descriptions), driven
through a real browser against ``appliance admin`` over HTTPS: the navigation a role sees, the
page it gets by typing a URL, and the absence of any transcript text for a viewer.
"""

from __future__ import annotations

import pytest

from appliance.admin.rbac import Role
from tests.admin.browser import AdminServer, browser_sign_in, needs_browser
from tests.admin.test_roles import PAGES

pytestmark = [pytest.mark.browser, needs_browser]

HTML_PAGES = {path: roles for path, roles in PAGES.items() if not path.startswith("/api/")}


def test_every_role_against_every_page_in_the_browser(admin_server: AdminServer, new_page) -> None:  # noqa: ANN001
    wrong: list[str] = []
    for role in Role:
        name, secret = admin_server.make_user(role, username=f"b-{role.value.replace('_', '-')}")
        page = new_page()
        browser_sign_in(page, admin_server, name, secret)
        nav = {a.get_attribute("href") for a in page.locator("header nav a").all()}
        for path, allowed in HTML_PAGES.items():
            response = page.goto(admin_server.url + path)
            assert response is not None
            status = response.status
            expected = 200 if role in allowed else 403
            if status != expected:
                wrong.append(f"{role.value} {path}: {status}, expected {expected}")
            if status == 403:
                assert "Not allowed" in page.inner_text("h1")
            if path in {"/calls", "/quality", "/system", "/users"} and path in nav:
                assert role in allowed, f"{role.value} sees a link to {path}"
        # Typed URLs of a call and its transcript: a viewer gets nothing.
        if role is Role.VIEWER:
            for path in ("/calls/any-call", "/quality/1"):
                response = page.goto(admin_server.url + path)
                assert response is not None and response.status == 403, path
    assert not wrong, "\n".join(wrong)
