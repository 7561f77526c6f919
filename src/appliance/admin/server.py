"""Running the admin page: HTTPS with first boot's certificate (uvicorn).

TLS: the server certificate and key from ``[admin] tls_dir`` (``server.crt``, ``server.key``,
made at first boot by :mod:`appliance.app.firstboot.tls`), TLS 1.2 or newer with forward-secret
AEAD cipher suites only (Mozilla's "intermediate" profile). Plain HTTP is never served.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from appliance.config.settings import ApplianceSettings
from appliance.errors import ConfigError

_LOGGER = logging.getLogger(__name__)

#: TLS 1.2 suites of Mozilla's intermediate profile (TLS 1.3 suites are always on).
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def credential(name: str) -> Path | None:
    """A file systemd handed this service (``LoadCredential=``), if it exists."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(directory) / name if directory else None
    return path if path is not None and path.exists() else None


def with_credentials(settings: ApplianceSettings) -> ApplianceSettings:
    """Use the enrolment-code hash from the service's credentials where systemd gave it.

    On the box first boot's files are root-only; ``appliance-admin.service`` loads them as
    credentials (``enrolment.argon2``, ``admin-tls.key``).
    """
    enrolment = credential("enrolment.argon2")
    if enrolment is None:
        return settings
    admin = settings.admin.model_copy(update={"enrolment_hash": enrolment})
    return settings.model_copy(update={"admin": admin})


def tls_files(settings: ApplianceSettings) -> tuple[Path, Path]:
    """The certificate and key paths (the key from the service's credentials where given).

    Raises:
        ConfigError: Either file is missing (run ``appliance firstboot`` or ``build.sh run``).
    """
    cert = settings.admin.tls_dir / "server.crt"
    key = credential("admin-tls.key") or settings.admin.tls_dir / "server.key"
    for path in (cert, key):
        if not path.exists():
            raise ConfigError(
                "admin_tls_missing",
                f"{path}: missing; first boot makes it (appliance firstboot, or ./build.sh run)",
            )
    return cert, key


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def serve(settings: ApplianceSettings, settings_path: Path | None) -> int:
    """Serve the admin page until SIGTERM/SIGINT. Returns the exit code.

    Raises:
        ConfigError: The TLS files are missing.
    """
    import uvicorn

    from appliance.admin.web import create_app

    settings = with_credentials(settings)
    cert, key = tls_files(settings)
    app = create_app(settings, settings_path=settings_path)
    config = uvicorn.Config(
        app,
        host=settings.admin.bind,
        port=settings.admin.port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
        ssl_ciphers=CIPHERS,
        ssl_context_factory=lambda _config, default: _harden(default()),
        proxy_headers=False,
        server_header=False,
        date_header=True,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    _LOGGER.info("admin page on https://%s:%d/", settings.admin.bind, settings.admin.port)
    server.run()
    return 0
