"""First boot's local TLS CA and the admin page's server certificate (ECDSA P-256)."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import socket
from pathlib import Path

from appliance.app.firstboot.common import (
    FirstbootError,
    FirstbootReport,
    ensure_mode,
    private_dir,
    write_private,
)


def _san_names() -> list[str]:
    names = {socket.gethostname(), "localhost"}
    names |= {f"{name}.local" for name in list(names) if "." not in name}
    return sorted(n for n in names if n)


def ensure_tls(
    tls_dir: Path, report: FirstbootReport, now: datetime.datetime | None = None
) -> None:
    """Create the local CA and the admin page's server certificate if absent.

    ECDSA P-256 keys (mode 0600, root), a CA valid for 20 years and a server certificate valid
    for 825 days naming the host name, ``<host>.local``, ``localhost`` and 127.0.0.1.

    Raises:
        FirstbootError: An existing certificate or key cannot be read.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private_dir(tls_dir, None, 0o755)
    paths = {n: tls_dir / n for n in ("ca.key", "ca.crt", "server.key", "server.crt")}
    if all(p.exists() for p in paths.values()):
        try:
            ca = x509.load_pem_x509_certificate(paths["ca.crt"].read_bytes())
            server = x509.load_pem_x509_certificate(paths["server.crt"].read_bytes())
            server.verify_directly_issued_by(ca)
        except (ValueError, TypeError) as exc:
            raise FirstbootError(f"{tls_dir}: existing TLS files are broken ({exc})") from exc
        for name in ("ca.key", "server.key"):
            ensure_mode(paths[name], 0o600, None)
        return
    if any(p.exists() for p in paths.values()):
        raise FirstbootError(f"{tls_dir}: incomplete TLS files; move them away to regenerate")
    now = now or datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Clinic voice appliance"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Appliance local CA {secrets.token_hex(4)}"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=20 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = _san_names()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    none = serialization.NoEncryption()
    write_private(paths["ca.key"], ca_key.private_bytes(pem, pkcs8, none))
    write_private(paths["server.key"], server_key.private_bytes(pem, pkcs8, none))
    write_private(paths["server.crt"], server_cert.public_bytes(pem), 0o644)
    write_private(paths["ca.crt"], ca_cert.public_bytes(pem), 0o644)
    report.created.append("TLS CA and server certificate")
