"""`appliance firstboot` on a temporary root: keys made once, never replaced, no plaintext code."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from argon2 import PasswordHasher, extract_parameters
from argon2 import Type as Argon2Type
from cryptography import x509

from appliance.app.firstboot import FirstbootError, fingerprint, run_firstboot
from appliance.cli import main
from appliance.config import load_settings

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "image/mkosi.extra/usr/share/appliance/appliance.toml"
DROPIN = "etc/appliance/appliance.toml.d/10-firstboot.toml"
ROOT_HASH = (
    "$6$salt$IxDD3jeSOb5eB1CX5LBsqZFVkJdido3OUILO5Ifz5iwMuTS4XMS130MTSuDDl3aCI6WouIL9AjRbLCelDCy.g."
)

KEYS = (
    "var/lib/appliance/keys/audit-signing.key",
    "var/lib/appliance/keys/audit-kek",
    "etc/appliance/tls/ca.key",
    "etc/appliance/tls/server.key",
    "etc/appliance/enrolment.argon2",
    "etc/appliance/firstboot/enrolment-code.txt",
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/share/appliance").mkdir(parents=True)
    (root / "usr/share/appliance/appliance.toml").write_bytes(TEMPLATE.read_bytes())
    (root / "etc/appliance").mkdir(parents=True)
    (root / "etc/appliance/trunk.toml").write_text(
        '[sip]\nallowed_peers = ["192.0.2.10/32"]\n\n[clinic]\nname = "Oak Clinic"\n'
    )
    shadow = root / "etc/shadow"
    shadow.write_text(
        f"root:{ROOT_HASH}:19000:0:99999:7:::\nguest::19000::::::\nnobody:*:19000::::::\n"
    )
    shadow.chmod(0o640)
    return root


def firstboot(root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    console = root.parent / "console.txt"
    rc = main(
        [
            "firstboot",
            "--root",
            str(root),
            "--user",
            "",
            "--console",
            str(console),
            "--no-systemd-creds",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_firstboot_twice_keeps_keys_and_stores_only_a_hash(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first_out = firstboot(root, capsys)
    assert "enrolment code" in first_out and "audit signing key" in first_out
    before = {k: fingerprint(root / k) for k in KEYS}
    config_before = (root / "etc/appliance/appliance.toml").read_bytes()

    second_out = firstboot(root, capsys)
    assert "created nothing" in second_out
    assert {k: fingerprint(root / k) for k in KEYS} == before
    assert (root / "etc/appliance/appliance.toml").read_bytes() == config_before

    # The code is shown once (console and root-only notice) and stored only as an Argon2id hash.
    notice = (root / "etc/appliance/firstboot/enrolment-code.txt").read_text()
    code = notice.splitlines()[1].strip()
    assert len(code) == 19 and code.count("-") == 3
    assert code in (root.parent / "console.txt").read_text()
    stored = (root / "etc/appliance/enrolment.argon2").read_text().strip()
    assert extract_parameters(stored).type is Argon2Type.ID
    assert PasswordHasher().verify(stored, code)
    assert code not in first_out + second_out
    holders = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and code.encode() in p.read_bytes()
    ]
    assert holders == ["etc/appliance/firstboot/enrolment-code.txt"]

    # File modes: private keys and the hash are owner-only, their directories too.
    for key in KEYS:
        assert stat.S_IMODE((root / key).stat().st_mode) == 0o600, key
    for directory in ("var/lib/appliance/keys", "etc/appliance/firstboot"):
        assert stat.S_IMODE((root / directory).stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((root / "etc/appliance/tls/server.crt").stat().st_mode) == 0o644


def test_firstboot_applies_trunk_and_locks_default_passwords(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    firstboot(root, capsys)
    settings = load_settings(root / "etc/appliance/appliance.toml")
    assert settings.sip.allowed_peers == ["192.0.2.10/32"]
    # The base file is the image's template, verbatim; the trunk keys are in the drop-in only.
    assert (root / "etc/appliance/appliance.toml").read_bytes() == TEMPLATE.read_bytes()
    dropin = root / DROPIN
    assert tomllib.loads(dropin.read_text()) == {
        "sip": {"allowed_peers": ["192.0.2.10/32"]},
        "clinic": {"name": "Oak Clinic"},
    }
    assert stat.S_IMODE(dropin.stat().st_mode) == 0o644
    assert stat.S_IMODE(dropin.parent.stat().st_mode) == 0o755  # the agent lists it
    assert settings.sip.bind == "0.0.0.0:5060"
    assert settings.clinic.name == "Oak Clinic"
    assert settings.audit.create_keys is False
    shadow = {
        line.split(":")[0]: line.split(":")[1]
        for line in (root / "etc/shadow").read_text().splitlines()
    }
    assert shadow == {"root": "!" + ROOT_HASH, "guest": "!*", "nobody": "*"}
    assert stat.S_IMODE((root / "etc/shadow").stat().st_mode) == 0o640


def test_tls_server_certificate_is_issued_by_the_local_ca(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    firstboot(root, capsys)
    tls = root / "etc/appliance/tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_existing_keys_are_checked_not_replaced(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    firstboot(root, capsys)
    kek = root / "var/lib/appliance/keys/audit-kek"
    kek.chmod(0o644)  # a loosened mode is repaired, the key kept
    before = fingerprint(kek)
    firstboot(root, capsys)
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600 and fingerprint(kek) == before

    (root / "etc/appliance/enrolment.argon2").write_text("not-a-hash\n")
    with pytest.raises(FirstbootError, match="enrolment.argon2"):
        run_firstboot(root, user=None, creds_tool=None, console=None)
    signing = root / "var/lib/appliance/keys/audit-signing.key"
    os.chmod(signing, 0o600)
    signing.write_bytes(b"garbage")
    with pytest.raises(FirstbootError, match="audit-signing.key"):
        run_firstboot(root, user=None, creds_tool=None, console=None)


def test_trunk_file_may_not_set_other_sections(root: Path) -> None:
    (root / "etc/appliance/trunk.toml").write_text("[audit]\ncreate_keys = true\n")
    with pytest.raises(FirstbootError, match=r"only \[sip\] and \[clinic\]"):
        run_firstboot(root, user=None, creds_tool=None, console=None)
    (root / "etc/appliance/trunk.toml").write_text('[sip]\nallowed_peers = ["not-an-ip"]\n')
    with pytest.raises(FirstbootError, match="invalid") as err:
        run_firstboot(root, user=None, creds_tool=None, console=None)
    # Validated before anything is written; the error names the drop-in (as on the box) and key.
    assert f"{root / DROPIN}: sip.allowed_peers" in str(err.value)
    assert not (root / "etc/appliance/appliance.toml").exists()
    assert not (root / DROPIN).exists()


ANSIBLE_BASE = """# Managed by Ansible (roles/config)
[sip]
bind = "0.0.0.0:5060"
allowed_peers = ["203.0.113.9/32"]
max_calls = 3

[clinic]
name = "Fleet Clinic"
hours = "Always"

[models]
store = "/opt/appliance/current/models/store"

[audit]
db = "/var/lib/appliance/audit/audit.sqlite"
checkpoint_file = "/var/lib/appliance/audit/checkpoints.log"
signing_key_file = "/var/lib/appliance/keys/audit-signing.key"
kek_file = "/var/lib/appliance/keys/audit-kek"
"""


def test_firstboot_never_rewrites_the_base_file(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Ansible config role owns appliance.toml; first boot only writes its own drop-in."""
    base = root / "etc/appliance/appliance.toml"
    base.write_text(ANSIBLE_BASE)
    base.chmod(0o640)
    os.utime(base, (1_000_000_000, 1_000_000_000))
    before = (base.read_bytes(), base.stat().st_mtime_ns, base.stat().st_ino)

    out = firstboot(root, capsys)
    assert "trunk settings" in out and "created settings" not in out
    settings = load_settings(base)
    # Trunk keys override the base key by key; everything else is Ansible's.
    assert settings.sip.allowed_peers == ["192.0.2.10/32"]
    assert settings.clinic.name == "Oak Clinic"
    assert (settings.sip.max_calls, settings.clinic.hours) == (3, "Always")

    # A changed trunk file changes the drop-in, never the base file.
    (root / "etc/appliance/trunk.toml").write_text("[sip]\nmax_calls = 1\n")
    out = firstboot(root, capsys)
    assert "trunk settings" in out
    assert tomllib.loads((root / DROPIN).read_text()) == {"sip": {"max_calls": 1}}
    settings = load_settings(base)
    assert (settings.sip.max_calls, settings.sip.allowed_peers) == (1, ["203.0.113.9/32"])
    assert "created nothing" in firstboot(root, capsys)
    assert (base.read_bytes(), base.stat().st_mtime_ns, base.stat().st_ino) == before
    assert stat.S_IMODE(base.stat().st_mode) == 0o640

    # Without a trunk file the drop-in stays as it is (the settings it carried still hold).
    (root / "etc/appliance/trunk.toml").unlink()
    assert "created nothing" in firstboot(root, capsys)
    assert load_settings(base).sip.max_calls == 1
    assert (base.read_bytes(), base.stat().st_mtime_ns) == before[:2]


def test_firstboot_refuses_a_broken_dropin_by_name(root: Path) -> None:
    site = root / "etc/appliance/appliance.toml.d/50-site.toml"
    site.parent.mkdir(parents=True)
    site.write_text("[sip\n")
    with pytest.raises(FirstbootError, match="50-site.toml"):
        run_firstboot(root, user=None, creds_tool=None, console=None)
    assert not (root / DROPIN).exists()


# --- trunk.toml on the EFI partition: first boot only, or signed; always on the record (issue 14)

ESP_TRUNK = Path("/efi/appliance/trunk.toml")
RELEASE_PUB = Path("/usr/share/appliance/release-signing.pub")
PENDING = "var/lib/appliance/audit/firstboot-records.jsonl"


@pytest.fixture
def esp_root(root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``root`` with its trunk file on the ESP instead, and a release key pair (secret, root)."""
    from appliance.release import generate_key

    (root / "etc/appliance/trunk.toml").unlink()
    (root / "efi/appliance").mkdir(parents=True)
    (root / "efi/appliance/trunk.toml").write_text('[sip]\nallowed_peers = ["192.0.2.10/32"]\n')
    pub = root / RELEASE_PUB.relative_to("/")
    secret = tmp_path / "release.key"
    generate_key(secret, pub)
    return secret, root


def _boot(root: Path) -> str:
    report = run_firstboot(
        root,
        user=None,
        creds_tool=None,
        console=None,
        trunk_files=(ESP_TRUNK,),
        release_key=RELEASE_PUB,
    )
    return report.summary()


def _peers(root: Path) -> list[str]:
    settings = load_settings(root / "etc/appliance/appliance.toml")
    return [str(p) for p in settings.sip.allowed_peers]


def _pending(root: Path) -> list[dict[str, object]]:
    from appliance.app.firstboot import read_pending

    return [vars(r) for r in read_pending(root / PENDING)]


def test_esp_trunk_applies_on_first_boot_and_is_recorded(esp_root: tuple[Path, Path]) -> None:
    _, root = esp_root
    summary = _boot(root)
    assert _peers(root) == ["192.0.2.10/32"]
    assert "applied: first boot (unsigned)" in summary
    (record,) = _pending(root)
    assert record["accepted"] is True
    assert "/efi/appliance/trunk.toml" in str(record["detail"])
    digest = hashlib.sha256((root / "efi/appliance/trunk.toml").read_bytes()).hexdigest()
    assert digest in str(record["detail"])
    assert "192.0.2.10" not in str(record["detail"])  # names and digests, never content
    assert stat.S_IMODE((root / PENDING).stat().st_mode) == 0o600
    # The next boot finds the same file: nothing to apply, nothing to record.
    (root / PENDING).unlink()
    assert "trunk file" not in _boot(root)
    assert not (root / PENDING).exists()


def test_unsigned_esp_trunk_after_first_boot_is_refused(esp_root: tuple[Path, Path]) -> None:
    _, root = esp_root
    _boot(root)
    dropin = (root / DROPIN).read_bytes()
    # Someone with the disk opens the allowlist to the world.
    (root / "efi/appliance/trunk.toml").write_text('[sip]\nallowed_peers = ["0.0.0.0/0"]\n')
    summary = _boot(root)  # the box still boots
    assert "REFUSED, settings unchanged" in summary and "needs a release signature" in summary
    assert "0.0.0.0" not in summary
    assert (root / DROPIN).read_bytes() == dropin
    assert _peers(root) == ["192.0.2.10/32"]
    first, refused = _pending(root)
    assert first["accepted"] is True and refused["accepted"] is False
    assert "0.0.0.0" not in str(refused["detail"])
    # A broken file after the first boot is refused the same way, not a failed boot.
    (root / "efi/appliance/trunk.toml").write_text("[sip\n")
    assert "REFUSED" in _boot(root)
    assert _peers(root) == ["192.0.2.10/32"]


def test_signed_esp_trunk_applies_after_first_boot(esp_root: tuple[Path, Path]) -> None:
    from appliance.release import load_secret_key, sign_file

    secret, root = esp_root
    _boot(root)
    trunk = root / "efi/appliance/trunk.toml"
    trunk.write_text('[sip]\nallowed_peers = ["198.51.100.7/32"]\n')
    sign_file(trunk, load_secret_key(secret))
    summary = _boot(root)
    assert "applied: signed by the release key" in summary
    assert _peers(root) == ["198.51.100.7/32"]
    assert [r["accepted"] for r in _pending(root)] == [True, True]
    # Changed after signing: the signature no longer matches, the settings stay.
    trunk.write_text('[sip]\nallowed_peers = ["0.0.0.0/0"]\n')
    summary = _boot(root)
    assert "REFUSED" in summary and "does not match its content" in summary
    assert _peers(root) == ["198.51.100.7/32"]


def test_esp_trunk_signed_by_another_key_is_refused_even_on_first_boot(
    esp_root: tuple[Path, Path], tmp_path: Path
) -> None:
    from appliance.release import generate_key, load_secret_key, sign_file

    _, root = esp_root
    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    sign_file(root / "efi/appliance/trunk.toml", load_secret_key(tmp_path / "other.key"))
    summary = _boot(root)
    assert "REFUSED" in summary and "not the pinned release key" in summary
    assert not (root / DROPIN).exists()
    assert _peers(root) == []  # the image's template: no peer allowed
    (record,) = _pending(root)
    assert record["accepted"] is False


def test_pending_records_reach_the_audit_bus_once(tmp_path: Path) -> None:
    """The agent's start puts first boot's records on the bus (to the audit log), once."""
    from types import SimpleNamespace

    from appliance.app.firstboot import append_pending
    from appliance.app.server import ApplianceServer
    from appliance.audit.observer import AUDITED, to_entry
    from appliance.events import ConfigChanged, Event, EventBus

    db = tmp_path / "audit" / "audit.sqlite"
    db.parent.mkdir()
    pending = db.with_name("firstboot-records.jsonl")
    append_pending(pending, True, "trunk file /efi/appliance/trunk.toml applied", None)
    append_pending(pending, False, "trunk file /efi/appliance/trunk.toml REFUSED", None)
    with pending.open("a") as f:
        f.write("{torn\n")
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    server = SimpleNamespace(audit=object(), bus=bus, settings=SimpleNamespace())
    server.settings.audit = SimpleNamespace(db=str(db))
    ApplianceServer._record_firstboot(server)  # type: ignore[arg-type]
    assert [type(e) for e in seen] == [ConfigChanged] * 3
    changes = [e for e in seen if isinstance(e, ConfigChanged)]
    assert [c.accepted for c in changes] == [True, False, False]
    assert "applied" in changes[0].detail and "line 3: not a first-boot record" in changes[2].detail
    assert "ConfigChanged" in AUDITED
    assert to_entry(changes[1]).kind == "ConfigChanged"
    assert not pending.exists()
    ApplianceServer._record_firstboot(server)  # type: ignore[arg-type]
    assert len(seen) == 3


# --- the data partition's recovery key: shown once if it opens the partition, never kept


@pytest.fixture
def luks(tmp_path: Path) -> tuple[Path, Path]:
    """A real LUKS2 header in a file, with one passphrase slot holding ``key`` (fast PBKDF2)."""
    if shutil.which("cryptsetup") is None or os.geteuid() != 0:
        pytest.skip("needs cryptsetup and root")
    device = tmp_path / "data.img"
    with device.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    key = tmp_path / "run/appliance-recovery/key"
    key.parent.mkdir(parents=True)
    key.write_text("099e22ca-df669031-93f9800b-a1817d95-18eee845-1d9a981c-988e9e3f-585c8476")
    subprocess.run(
        [
            "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            "--key-file", str(key), str(device),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return device, key


def test_recovery_key_that_opens_the_partition_is_shown_once_and_deleted(
    luks: tuple[Path, Path], tmp_path: Path
) -> None:
    from appliance.app.firstboot import FirstbootReport
    from appliance.app.firstboot.recovery import show_recovery_key

    device, key = luks
    text = key.read_text()
    console = tmp_path / "console.txt"
    report = FirstbootReport()
    show_recovery_key(key, device, console, report)
    assert text in console.read_text() and "RECOVERY KEY" in console.read_text()
    assert not key.exists()  # the box keeps no copy
    assert report.created == ["recovery key (shown on the console)"]
    assert text not in report.summary()


def test_recovery_key_nothing_enrolled_is_never_shown(
    luks: tuple[Path, Path], tmp_path: Path
) -> None:
    from appliance.app.firstboot import FirstbootReport
    from appliance.app.firstboot.recovery import show_recovery_key

    device, key = luks
    key.write_text("00000000-11111111-22222222-33333333-44444444-55555555-66666666-77777777")
    console = tmp_path / "console.txt"
    report = FirstbootReport()
    show_recovery_key(key, device, console, report)
    assert not console.exists()
    assert not key.exists()
    assert report.created == []


def test_image_makes_a_71_character_recovery_key(tmp_path: Path) -> None:
    """The image's key maker (run against a temporary /run) gives what the prompt takes."""
    script = REPO / "image/mkosi.extra/usr/lib/appliance/make-recovery-key"
    local = tmp_path / "make-recovery-key"
    local.write_text(script.read_text().replace("/run/appliance-recovery", str(tmp_path / "rk")))
    subprocess.run(["sh", str(local)], check=True, timeout=30)
    key = (tmp_path / "rk/key").read_text()
    assert len(key) == 71 and not key.endswith("\n")
    groups = key.split("-")
    assert len(groups) == 8 and all(len(g) == 8 and int(g, 16) >= 0 for g in groups)
    assert stat.S_IMODE((tmp_path / "rk/key").stat().st_mode) == 0o600
    subprocess.run(["sh", str(local)], check=True, timeout=30)
    assert (tmp_path / "rk/key").read_text() != key
