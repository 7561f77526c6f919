"""First boot of the box: device keys, local TLS CA, enrolment code, PBX trunk settings.

``appliance firstboot`` runs as root from ``appliance-firstboot.service`` before the agent, on
every boot. It creates what is missing and never replaces what exists, so a second run changes
nothing (the keys themselves are checked, not only a marker):

* the PBX trunk settings of a ``trunk.toml`` (``/etc/appliance/trunk.toml``, else
  ``appliance/trunk.toml`` on the EFI system partition, where an installer can drop it from any
  PC), ``[sip]``/``[clinic]`` only, in first boot's own drop-in
  ``/etc/appliance/appliance.toml.d/10-firstboot.toml``. A trunk file on the (unauthenticated)
  EFI partition changes the settings on the first boot only, or later with a valid release
  signature; each application or refusal goes on the audit log at the agent's next start
  (:mod:`.records`). The base file
  ``/etc/appliance/appliance.toml`` is the Ansible ``config`` role's: first boot creates it from
  the image's template only where it does not exist, and never rewrites it;
* the audit log's Ed25519 checkpoint signing key (owned by the service user, mode 0600);
* the audit KEK as a systemd credential (``systemd-creds encrypt``, bound to the TPM2 when the
  box has one, else to the host key on the data partition) at
  ``/etc/appliance/credentials/audit-kek.cred``, or, where systemd-creds is missing, as an
  owner-only key file of the service user;
* a local TLS CA and a server certificate for the admin page (ECDSA P-256);
* a one-time enrolment code for the first admin: only its Argon2id hash is kept; the code itself
  goes to the console and to a root-only notice file, never to the journal.

It also refuses default credentials: accounts with a usable password are locked and an SSH
server, if one is installed, gets password logins switched off.

Modules: :mod:`.settings` (the settings file and the trunk drop-in), :mod:`.keys` (signing
key and KEK), :mod:`.tls`, :mod:`.enrolment`, :mod:`.accounts` (service user, default
credentials), :mod:`.records` (first boot's records for the audit log), :mod:`.provision`
(:func:`run_firstboot`, the whole run) and :mod:`.common` (the error, the report and the safe
writes they share).
"""

from __future__ import annotations

from appliance.app.firstboot.accounts import (
    SSHD_DROPIN,
    SSHD_SETTINGS,
    lock_default_credentials,
)
from appliance.app.firstboot.common import FirstbootError, FirstbootReport
from appliance.app.firstboot.enrolment import ARGON2_PARAMS, ensure_enrolment, new_enrolment_code
from appliance.app.firstboot.keys import (
    CREDENTIAL_NAME,
    ensure_kek,
    ensure_signing_key,
    fingerprint,
)
from appliance.app.firstboot.provision import run_firstboot
from appliance.app.firstboot.records import (
    PENDING_NAME,
    PendingRecord,
    append_pending,
    clear_pending,
    read_pending,
)
from appliance.app.firstboot.settings import (
    CONFIG,
    DROPIN_NAME,
    RELEASE_KEY,
    TEMPLATE,
    TRUNK_FILES,
    TRUNK_SECTIONS,
    TrunkDecision,
    dump_settings_toml,
    ensure_config,
    judge_trunk,
)
from appliance.app.firstboot.tls import ensure_tls

__all__ = [
    "ARGON2_PARAMS",
    "CONFIG",
    "CREDENTIAL_NAME",
    "DROPIN_NAME",
    "PENDING_NAME",
    "RELEASE_KEY",
    "SSHD_DROPIN",
    "SSHD_SETTINGS",
    "TEMPLATE",
    "TRUNK_FILES",
    "TRUNK_SECTIONS",
    "FirstbootError",
    "FirstbootReport",
    "PendingRecord",
    "TrunkDecision",
    "append_pending",
    "clear_pending",
    "dump_settings_toml",
    "ensure_config",
    "ensure_enrolment",
    "ensure_kek",
    "ensure_signing_key",
    "ensure_tls",
    "fingerprint",
    "judge_trunk",
    "lock_default_credentials",
    "new_enrolment_code",
    "read_pending",
    "run_firstboot",
]
