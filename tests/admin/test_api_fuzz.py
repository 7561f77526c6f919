"""schemathesis against the admin page's JSON API (its own OpenAPI schema): no 5xx.

Every operation is called with generated inputs by a user holding every role, with a valid
session and CSRF token, on a real app over real files. No agent listens on the control
socket here, so operations that need it answer 503 "agent unavailable": that answer is the
only 5xx allowed, and only with that message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from appliance.admin.accounts import Accounts
from appliance.admin.auth import COOKIE
from appliance.admin.rbac import Role
from appliance.admin.web import create_app
from appliance.app.firstboot import FirstbootReport, ensure_enrolment, ensure_tls
from appliance.config import load_settings
from appliance.control import ControlClient
from tests.admin.conftest import PASSWORD, write_settings

pytestmark = pytest.mark.browser  # a slow layer: hundreds of requests


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[str, str]]:
    root = tmp_path_factory.mktemp("fuzz") / "box"
    root.mkdir()
    path = write_settings(root)
    s = load_settings(path)
    report = FirstbootReport()
    ensure_tls(s.admin.tls_dir, report)
    ensure_enrolment(s.admin.enrolment_hash, root / "notice.txt", None, report)
    app = create_app(s, settings_path=path, control=ControlClient(Path(root / "none.sock"), 1.0))
    accounts: Accounts = app.state.ctx.accounts
    user = accounts.create("fuzzer", frozenset(Role), created_by="test")
    accounts.set_password(user.id, PASSWORD)
    token = accounts.start_session(user.id, "full", "127.0.0.1", "schemathesis")
    session = accounts.session(token)
    assert session is not None
    headers = {"Cookie": f"{COOKIE}={token}", "X-CSRF-Token": session.csrf}
    return app, headers


def test_api_never_answers_5xx(fuzz_env) -> None:  # noqa: ANN001
    from hypothesis import given

    app, headers = fuzz_env
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    failures: list[str] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case) -> None:  # noqa: ANN001
            try:
                response = case.call(headers=headers)
            except Exception as exc:  # noqa: BLE001 - the app raised: a 500 in production
                failures.append(f"{case.method} {case.formatted_path} raised {exc!r}"[:300])
                return
            if response.status_code == 503 and "agent" in response.text.lower():
                return
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

        call()
    assert not failures, "\n".join(dict.fromkeys(failures))
