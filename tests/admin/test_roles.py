"""Every role against every page: allowed pages open, the rest are 403 and show no data.

The expectations are written from the issue's role descriptions, not read from the code's
permission table, so a route that checks the wrong permission fails here.
"""

from __future__ import annotations

import re

import pytest

from appliance.admin.rbac import Role

R = Role
ALL = set(Role)
STAFF = ALL - {R.VIEWER}

#: Page -> roles that may open it (issue 12, "Roles").
PAGES: dict[str, set[Role]] = {
    "/": ALL,
    "/api/dashboard/summary": ALL,
    "/calls": STAFF,
    "/api/calls": STAFF,
    "/workflows": STAFF,
    "/api/workflows": STAFF,
    "/campaigns": ALL,  # issue 15: a viewer sees the counts only
    "/api/campaigns": ALL,
    "/quality": {R.QUALITY_REVIEWER},
    "/kb": {R.QUALITY_REVIEWER},
    "/api/kb": {R.QUALITY_REVIEWER},
    "/schedule": {R.PLATFORM_ENGINEER, R.CONTACT_CENTRE_LEAD},
    "/settings": {R.PLATFORM_ENGINEER, R.CONTACT_CENTRE_LEAD},
    "/api/settings": {R.PLATFORM_ENGINEER, R.CONTACT_CENTRE_LEAD},
    "/system": {R.PLATFORM_ENGINEER, R.COMPLIANCE_OFFICER, R.OWNER},
    "/api/system": {R.PLATFORM_ENGINEER, R.COMPLIANCE_OFFICER, R.OWNER},
    "/users": {R.OWNER, R.PLATFORM_ENGINEER},
    "/api/users": {R.OWNER, R.PLATFORM_ENGINEER},
}


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_each_role_opens_its_pages_and_gets_403_elsewhere(signed_in, role: Role) -> None:
    c = signed_in(role)
    wrong = []
    for path, allowed in PAGES.items():
        r = c.get(path)
        expected = 200 if role in allowed else 403
        if r.status_code != expected:
            wrong.append(f"{path}: {r.status_code}, expected {expected}")
        if r.status_code == 403 and path.startswith("/api/"):
            assert set(r.json()) == {"detail"}, f"{path} leaked data with its 403"
    assert not wrong, f"{role.value}: " + "; ".join(wrong)


def test_navigation_shows_only_what_the_role_may_open(signed_in) -> None:
    c = signed_in(Role.VIEWER)
    html = c.get("/").text
    links = set(re.findall(r"<nav>(.*?)</nav>", html, re.S)[0].split('href="')[1:])
    hrefs = {link.split('"')[0] for link in links}
    assert hrefs == {"/", "/campaigns"}, hrefs


@pytest.mark.parametrize("role", [R.VIEWER, R.PLATFORM_ENGINEER, R.OWNER, R.CONTACT_CENTRE_LEAD])
def test_no_transcript_without_a_phi_role_even_by_url(signed_in, role: Role) -> None:
    c = signed_in(role)
    r = c.post(
        "/calls/some-call-id/transcript",
        data={"reason": "checking a complaint about this call", "csrf_token": c.csrf},
    )
    assert r.status_code == 403
    if role is R.VIEWER:
        assert c.get("/calls/some-call-id").status_code == 403


def test_anonymous_requests_get_no_data(client) -> None:
    for path in PAGES:
        r = client.get(path)
        if path.startswith("/api/"):
            assert r.status_code == 401, path
        else:
            assert r.status_code == 303 and r.headers["location"].startswith("/"), path
