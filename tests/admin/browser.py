"""``appliance admin`` as a real HTTPS server process, and Debian's Chromium driven by Playwright.

The server runs from the installed command with a settings file in ``tmp_path``; accounts for a
test are written into its database with the same code the server uses (SQLite WAL allows both
processes). Chromium is ``/usr/bin/chromium`` (the Debian package that build.sh installs),
launched headless with the flags that keep it off the network.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest

from appliance.admin.accounts import Accounts
from appliance.admin.db import connect
from appliance.admin.rbac import Role
from appliance.app.firstboot import FirstbootReport, ensure_enrolment, ensure_tls
from appliance.config import load_settings
from tests.admin.conftest import PASSWORD, write_settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

needs_browser = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (./build.sh setup)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AdminServer:
    """A running ``appliance admin``."""

    url: str
    root: Path
    settings_path: Path
    enrolment_code: str
    proc: subprocess.Popen[bytes]
    log: Path
    _steps: dict[str, int] = field(default_factory=dict)

    def accounts(self) -> Accounts:
        settings = load_settings(self.settings_path)
        conn = connect(settings.admin.db)
        return Accounts(conn, settings.admin.db.with_suffix(".key"))

    def make_user(self, *roles: Role, username: str = "") -> tuple[str, str]:
        """Create an account with a password and TOTP; returns ``(username, totp_secret)``."""
        acc = self.accounts()
        name = username or "u-" + "-".join(r.value.replace("_", "") for r in roles)
        user = acc.create(name, frozenset(roles), created_by="test")
        acc.set_password(user.id, PASSWORD)
        secret = acc.new_totp_secret()
        assert acc.enrol_totp(user.id, secret, pyotp.TOTP(secret).now())
        # The set-up code used the current step; sign-ins use later ones (see ``totp``).
        self._steps[secret] = int(time.time() // 30)
        return name, secret

    def totp(self, secret: str) -> str:
        """A code for a step not used yet (one step of drift is accepted by the server)."""
        step = int(time.time() // 30)
        last = self._steps.get(secret, step - 1)
        use = max(step, last + 1)
        if use > step + 1:
            time.sleep((use - 1) * 30 - time.time() + 0.5)
            step = int(time.time() // 30)
            use = max(step, last + 1)
        self._steps[secret] = use
        return pyotp.TOTP(secret).at(use * 30)

    def logged(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_admin(root: Path, extra: str = "", admin_extra: str = "") -> AdminServer:
    """Start ``appliance admin`` on a free loopback port with its files under ``root``."""
    port = free_port()
    path = write_settings(root, extra, f"port = {port}\n{admin_extra}")
    return launch_admin(path, root)


def launch_admin(path: Path, root: Path) -> AdminServer:
    """Provision what first boot makes (TLS, enrolment code) and start ``appliance admin``.

    Args:
        path: The settings file (its ``[admin] port`` must be free).
        root: Where the enrolment notice and the log go.
    """
    settings = load_settings(path)
    port = settings.admin.port
    report = FirstbootReport()
    ensure_tls(settings.admin.tls_dir, report)
    notice = root / "firstboot" / "enrolment-code.txt"
    ensure_enrolment(settings.admin.enrolment_hash, notice, None, report)
    code = re.search(r"\b([0-9A-Z]{4}(?:-[0-9A-Z]{4}){3})\b", notice.read_text())
    assert code
    log = root / "admin.log"
    exe = Path(sys.executable).with_name("appliance")
    proc = subprocess.Popen(
        [str(exe), "admin", "--config", str(path)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    server = AdminServer(f"https://127.0.0.1:{port}", root, path, code.group(1), proc, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"appliance admin exited {proc.returncode}:\n{server.logged()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"appliance admin did not listen:\n{server.logged()}")


def stop_admin(server: AdminServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[AdminServer]:
    root = tmp_path / "box"
    root.mkdir()
    server = start_admin(root)
    yield server
    stop_admin(server)


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (./build.sh setup)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(chromium: object) -> Iterator[Callable[..., object]]:
    contexts = []

    def make(**options: object) -> object:
        context = chromium.new_context(ignore_https_errors=True, **options)  # type: ignore[attr-defined]
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def browser_sign_in(page: object, server: AdminServer, username: str, secret: str) -> None:
    """Password, then TOTP, through the real pages."""
    page.goto(server.url + "/login")  # type: ignore[attr-defined]
    page.fill("input[name=username]", username)  # type: ignore[attr-defined]
    page.fill("input[name=password]", PASSWORD)  # type: ignore[attr-defined]
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url("**/login/totp")  # type: ignore[attr-defined]
    page.fill("input[name=code]", server.totp(secret))  # type: ignore[attr-defined]
    page.click("main button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]
