"""The scheduling page in headless Chromium over real HTTPS: a CSV roster import with bad rows.

``appliance admin`` runs as its own process (``tests/admin/browser.py``); the roster is the
unit tests' file (tests/unit/data/imports/roster.csv: BOM, ``;``, CRLF, eight bad rows).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from appliance.admin.rbac import Role
from appliance.agent.calendar import SqliteCalendar
from appliance.config import load_settings
from tests.admin.browser import AdminServer, browser_sign_in, needs_browser

pytestmark = [pytest.mark.browser, needs_browser]

ROSTER = Path(__file__).parent.parent / "unit" / "data" / "imports" / "roster.csv"


def test_csv_roster_import_reports_bad_rows_then_imports_the_good_ones(
    admin_server: AdminServer, new_page
) -> None:
    name, secret = admin_server.make_user(Role.CONTACT_CENTRE_LEAD)
    page = new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    browser_sign_in(page, admin_server, name, secret)
    page.goto(admin_server.url + "/schedule")
    assert page.locator("#calendar-summary").inner_text().startswith("0 patients")

    page.set_input_files("#import-form input[name=file]", str(ROSTER))
    page.click("#import-form button[value=preview]")
    page.wait_for_selector("#import-report")
    assert "nothing has been written yet" in page.inner_text("#import-report h2")
    rejected = page.locator("#import-rows tr[data-status=rejected]")
    assert rejected.count() == 8
    formula = page.locator("#import-rows tr[data-row='8']").inner_text()
    assert "rejected" in formula and "spreadsheet formula" in formula
    assert "birth_date is in the future" in page.inner_text("#import-rows tr[data-row='6']")
    assert "4 to import" in page.inner_text("#import-totals")

    page.click("#confirm-form button")
    page.wait_for_selector("#import-report[data-dry-run=false]")
    assert "4 imported" in page.inner_text("#import-totals")
    assert page.locator("#import-rows tr[data-status=imported]").count() == 4
    assert page.locator("#calendar-summary").inner_text().startswith("4 patients")
    # The style sheet loaded under the CSP, and nothing was refused.
    color = page.eval_on_selector("#import-rows .sched-rejected", "e => getComputedStyle(e).color")
    assert color == "rgb(198, 40, 40)"
    assert not [p for p in problems if "Content Security Policy" in p], problems

    settings = load_settings(admin_server.settings_path)
    with SqliteCalendar(settings.scheduling.db) as cal:
        assert cal.find_patient("James", "Carter", date(1975, 11, 20)) is not None
    assert "Lopez" not in admin_server.logged()  # names never reach the log
