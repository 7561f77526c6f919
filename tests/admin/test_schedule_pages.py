"""The scheduling page and import API on the real app (TestClient), real files, a real calendar."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

from fastapi.testclient import TestClient

from appliance.admin.rbac import Role
from appliance.agent.calendar import SqliteCalendar
from tests.admin.conftest import AdminEnv

DATA = Path(__file__).parent.parent / "unit" / "data" / "imports"
Client = Callable[..., TestClient]


def roster() -> tuple[str, bytes, str]:
    return ("roster.csv", (DATA / "roster.csv").read_bytes(), "text/csv")


def patients(env: AdminEnv) -> int:
    with SqliteCalendar(env.settings.scheduling.db) as cal, cal.transaction() as conn:
        return int(conn.execute("SELECT count(*) FROM patients").fetchone()[0])


def outbox(admin_app) -> list[tuple[str, dict[str, object]]]:  # noqa: ANN001
    rows = admin_app.state.ctx.db.execute(
        "SELECT kind, meta FROM audit_outbox WHERE kind = 'AdminScheduleImported'"
    ).fetchall()
    return [(kind, json.loads(meta)) for kind, meta in rows]


def test_viewer_is_refused_and_signed_out_goes_to_login(
    signed_in: Client, client: TestClient
) -> None:
    viewer = signed_in(Role.VIEWER)
    assert viewer.get("/schedule").status_code == 403
    r = viewer.post(
        "/api/schedule/import", files={"file": roster()}, headers={"X-CSRF-Token": viewer.csrf}
    )
    assert r.status_code == 403
    assert client.get("/schedule").status_code == 303
    assert client.post("/api/schedule/import", files={"file": roster()}).status_code == 401


def test_post_without_csrf_token_is_refused(signed_in: Client, admin_env: AdminEnv) -> None:
    lead = signed_in(Role.CONTACT_CENTRE_LEAD)
    r = lead.post("/schedule", files={"file": roster()}, data={"action": "import"})
    assert r.status_code == 403
    r = lead.post("/api/schedule/import", files={"file": roster()})
    assert r.status_code == 403
    assert patients(admin_env) == 0


def test_csv_roster_preview_reports_bad_rows_then_confirm_imports(
    signed_in: Client, admin_env: AdminEnv, admin_app
) -> None:  # noqa: ANN001
    lead = signed_in(Role.CONTACT_CENTRE_LEAD)
    page = lead.get("/schedule")
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
    assert 'href="/static/schedule.css"' in page.text and "style=" not in page.text

    r = lead.post(
        "/schedule",
        files={"file": roster()},
        data={"csrf_token": lead.csrf, "format": "auto", "action": "preview"},
    )
    assert r.status_code == 200, r.text
    assert "Preview: nothing has been written yet" in r.text
    assert 'data-row="8" data-status="rejected"' in r.text
    assert "looks like a spreadsheet formula" in r.text
    assert "birth_date is in the future" in r.text
    assert "4 to import" in r.text and "8 rejected" in r.text
    assert patients(admin_env) == 0 and outbox(admin_app) == []

    token = re.search(r'name="token" value="([^"]+)"', r.text)
    assert token
    done = lead.post("/schedule/confirm", data={"csrf_token": lead.csrf, "token": token.group(1)})
    assert done.status_code == 200 and "4 imported" in done.text
    assert patients(admin_env) == 4
    with SqliteCalendar(admin_env.settings.scheduling.db) as cal:
        assert cal.find_patient("Maria", "Lopez", date(1982, 3, 4)) is not None
    # The audit record holds counts, never a name.
    [(_, meta)] = outbox(admin_app)
    assert (meta["imported"], meta["rejected"], meta["format"]) == (4, 8, "roster_csv")
    assert "Lopez" not in json.dumps(meta)

    again = lead.post("/schedule/confirm", data={"csrf_token": lead.csrf, "token": token.group(1)})
    assert again.status_code == 409  # one-time token


def test_api_import_json_report_and_file_errors(signed_in: Client, admin_env: AdminEnv) -> None:
    engineer = signed_in(Role.PLATFORM_ENGINEER)
    headers = {"X-CSRF-Token": engineer.csrf}
    r = engineer.post(
        "/api/schedule/import",
        files={"file": ("bundle.json", (DATA / "bundle.json").read_bytes(), "application/json")},
        data={"dry_run": "true"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["format"] == "fhir_json" and body["dry_run"] is True
    assert body["totals"]["rejected"] == 3
    assert {"row": 12, "kind": "other", "status": "skipped"}.items() <= body["rows"][-3].items()

    bad = engineer.post(
        "/api/schedule/import",
        files={"file": ("x.csv", b"name,age\nx,1\n", "text/csv")},
        headers=headers,
    )
    assert bad.status_code == 400 and bad.json()["code"] == "unknown_format"
    wrong = engineer.post(
        "/api/schedule/import",
        files={"file": roster()},
        data={"format": "xlsx"},
        headers=headers,
    )
    assert wrong.status_code == 422
    page = engineer.post(
        "/schedule",
        files={"file": ("x.json", b"{not json", "application/json")},
        data={"csrf_token": engineer.csrf},
    )
    assert page.status_code == 400 and "not valid JSON" in page.text
    assert patients(admin_env) == 0
