"""The settings the admin page edits: who may change each one and how its input is checked.

The agent's settings loader (:mod:`appliance.config.settings`) is the final judge of every
value (:func:`appliance.admin.config_writer.apply_change` validates the merged result with
it). The checks here come first and are stricter where the admin page is the only way in:

* trunk peers must be networks no wider than a ``/8`` (IPv4) or ``/32`` (IPv6): an
  allow-everyone peer such as ``0.0.0.0/0`` would let anyone on the network place calls;
  host bits must be clear (``10.0.0.5/24`` is refused with both readings offered);
* the SIP bind host must be an IP literal (pjsua binds a transport to an address);
* the transfer target must be a ``sip:``/``sips:`` URI (RFC 3261 section 19.1);
* the CTI webhook must be an ``http``/``https`` URL without credentials whose host, when an IP
  literal, is loopback, private or link-local (the box sends call context there, never to
  the internet);
* the AI disclosure must tell the caller they are speaking with an automated system
  (:data:`appliance.config.settings.AI_STATEMENT`, also enforced on every settings load).

Who edits what (issue 12): the platform engineer (``manage_settings``) edits the trunk, the
clinic's name and the disclosure; the contact-centre lead (``manage_transfer``) edits the
transfer target and the CTI webhook. The platform engineer's role holds ``manage_transfer`` as
well (:data:`appliance.admin.rbac.ROLE_PERMISSIONS`), so the engineer may change both.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from appliance.admin.rbac import Permission
from appliance.config.settings import AI_STATEMENT, DISCLOSURE_MAX_CHARS, ApplianceSettings

#: Most trunk peers accepted.
MAX_PEERS = 64
#: Narrowest allowed prefix length of a trunk peer network, per IP version.
MIN_PREFIX = {4: 8, 6: 32}
#: Longest clinic name, transfer target or webhook URL (characters).
MAX_NAME = 120
MAX_URI = 256

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SIP_URI = re.compile(r"^sips?:[^\s<>\"@]+(@[^\s<>\"@]+)?$", re.IGNORECASE)


class FieldError(ValueError):
    """A value the admin page refuses; ``key`` is ``section.key``, the message says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _text(key: str, value: object, *, max_chars: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise FieldError(key, "expected text")
    value = value.strip()
    if not value and not allow_empty:
        raise FieldError(key, "must not be empty")
    if len(value) > max_chars:
        raise FieldError(key, f"at most {max_chars} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise FieldError(key, "must not contain control characters or line breaks")
    return value


def parse_peers(value: object) -> list[str]:
    """Trunk peers from text (one per line, or comma-separated) or a list of strings.

    Returns:
        The networks in canonical form (``10.0.0.5`` -> ``10.0.0.5/32``), duplicates dropped.

    Raises:
        FieldError: Nothing given, too many, not an IP address or network, host bits set, or
            wider than :data:`MIN_PREFIX` (e.g. ``0.0.0.0/0``).
    """
    key = "sip.allowed_peers"
    if isinstance(value, str):
        items = [p.strip() for p in re.split(r"[\s,]+", value) if p.strip()]
    elif isinstance(value, list) and all(isinstance(p, str) for p in value):
        items = [p.strip() for p in value if p.strip()]
    else:
        raise FieldError(key, "expected one IP address or network per line")
    if not items:
        raise FieldError(key, "at least one trunk peer is needed (no one else can call)")
    if len(items) > MAX_PEERS:
        raise FieldError(key, f"at most {MAX_PEERS} peers, got {len(items)}")
    out: list[str] = []
    for item in items:
        if len(item) > 64:
            raise FieldError(key, "an entry is too long to be an IP address or network")
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise FieldError(key, f"{item!r} is not an IP address or network (CIDR)") from None
        if "/" in item and network.network_address != ipaddress.ip_interface(item).ip:
            host = str(ipaddress.ip_interface(item).ip)
            max_len = network.max_prefixlen
            raise FieldError(
                key,
                f"{item!r} has host bits set: write {network} for the whole network "
                f"or {host}/{max_len} for one host",
            )
        if network.prefixlen < MIN_PREFIX[network.version]:
            raise FieldError(
                key,
                f"{item!r} is too wide (more than a /{MIN_PREFIX[network.version]}): "
                "list the trunk provider's addresses, not everyone",
            )
        if str(network) not in out:
            out.append(str(network))
    return out


def parse_bind(value: object) -> str:
    """The SIP bind address ``HOST:PORT`` (IPv6 as ``[addr]:port``).

    Raises:
        FieldError: Not ``HOST:PORT``, the host is not an IP address, or the port is not
            1-65535.
    """
    key = "sip.bind"
    text = _text(key, value, max_chars=64)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise FieldError(key, f"expected HOST:PORT with a port of 1-65535, got {text!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise FieldError(key, f"{host!r} is not an IP address of this box") from None
    if address.version == 6 and bare == host:
        raise FieldError(key, f"write an IPv6 address in brackets: [{bare}]:{port}")
    return f"{host}:{int(port)}"


def parse_target(value: object) -> str:
    """The transfer target: a ``sip:``/``sips:`` URI, or empty (no transfer).

    Raises:
        FieldError: Not a SIP URI (RFC 3261 section 19.1) or too long.
    """
    key = "transfer.target"
    text = _text(key, value, max_chars=MAX_URI, allow_empty=True)
    if text and not _SIP_URI.fullmatch(text):
        raise FieldError(key, f"expected a SIP URI such as sip:frontdesk@10.0.0.5, got {text!r}")
    return text


def parse_webhook(value: object) -> str:
    """The CTI webhook: an ``http(s)`` URL on this box or the clinic's network, or empty.

    Raises:
        FieldError: Not an http(s) URL with a host, holds credentials, or an IP-literal host
            that is neither loopback, private nor link-local.
    """
    key = "transfer.webhook_url"
    text = _text(key, value, max_chars=MAX_URI, allow_empty=True)
    if not text:
        return text
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise FieldError(key, f"{text!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise FieldError(key, "expected an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise FieldError(key, "must not hold a user name or password")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return text  # a LAN host name; the box resolves it with the clinic's DNS
    if not (address.is_loopback or address.is_private or address.is_link_local):
        raise FieldError(key, f"{host} is a public address: the CTI must be on the clinic's LAN")
    return text


def parse_clinic_name(value: object) -> str:
    """The clinic's spoken name (1-120 characters, one line).

    Raises:
        FieldError: Empty, too long or holds control characters.
    """
    return _text("clinic.name", value, max_chars=MAX_NAME)


def parse_disclosure(value: object) -> str:
    """The AI disclosure template (``{clinic}`` is replaced), played first on every call.

    Raises:
        FieldError: Empty, too long, holds control characters, or does not say the caller is
            speaking with an automated system (a compliance control).
    """
    key = "agent.disclosure"
    text = _text(key, value, max_chars=DISCLOSURE_MAX_CHARS)
    if not AI_STATEMENT.search(text):
        raise FieldError(
            key,
            "must tell the caller they are speaking with an automated system: say "
            "'automated assistant', 'AI', 'artificial intelligence' or 'virtual assistant'",
        )
    return text


@dataclass(frozen=True)
class EditableField:
    """One setting the admin page edits.

    Attributes:
        key: ``section.key``.
        label: Shown on the form.
        group: The form it is on (``trunk``, ``clinic``, ``disclosure``, ``transfer``).
        permission: Needed to change it.
        parse: Checks and normalises a submitted value (raises :class:`FieldError`).
    """

    key: str
    label: str
    group: str
    permission: Permission
    parse: Callable[[object], object]

    @property
    def section(self) -> str:
        """The TOML section."""
        return self.key.partition(".")[0]

    @property
    def name(self) -> str:
        """The key within its section."""
        return self.key.partition(".")[2]

    def current(self, settings: ApplianceSettings) -> object:
        """The effective value in ``settings``."""
        return getattr(getattr(settings, self.section), self.name)


FIELDS: tuple[EditableField, ...] = (
    EditableField(
        "sip.allowed_peers", "Trunk peers", "trunk", Permission.MANAGE_SETTINGS, parse_peers
    ),
    EditableField("sip.bind", "SIP bind address", "trunk", Permission.MANAGE_SETTINGS, parse_bind),
    EditableField(
        "clinic.name", "Clinic name", "clinic", Permission.MANAGE_SETTINGS, parse_clinic_name
    ),
    EditableField(
        "agent.disclosure",
        "AI disclosure",
        "disclosure",
        Permission.MANAGE_SETTINGS,
        parse_disclosure,
    ),
    EditableField(
        "transfer.target", "Transfer target", "transfer", Permission.MANAGE_TRANSFER, parse_target
    ),
    EditableField(
        "transfer.webhook_url",
        "CTI webhook URL",
        "transfer",
        Permission.MANAGE_TRANSFER,
        parse_webhook,
    ),
)
BY_KEY = {f.key: f for f in FIELDS}
#: The forms, in page order, and the permission each needs.
GROUPS: dict[str, Permission] = {f.group: f.permission for f in FIELDS}


class NotAllowed(PermissionError):
    """The user may not change ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"your role does not allow changing {key}")
        self.key = key


def check_updates(
    updates: Mapping[str, Mapping[str, object]], can: Callable[[Permission], bool]
) -> dict[str, dict[str, object]]:
    """Check and normalise submitted ``section -> key -> value`` updates.

    Args:
        updates: What was submitted.
        can: Whether the user holds a permission (``principal.can``).

    Returns:
        The normalised updates for :func:`appliance.admin.config_writer.apply_change`.

    Raises:
        FieldError: An unknown or non-editable key, or a refused value.
        NotAllowed: The user may not change one of the keys.
    """
    out: dict[str, dict[str, object]] = {}
    for section, values in updates.items():
        for name, value in values.items():
            key = f"{section}.{name}"
            field = BY_KEY.get(key)
            if field is None:
                raise FieldError(key[:80], "not a setting the admin page changes")
            if not can(field.permission):
                raise NotAllowed(key)
            out.setdefault(section, {})[name] = field.parse(value)
    return out


def editable_values(
    settings: ApplianceSettings, can: Callable[[Permission], bool]
) -> dict[str, dict[str, object]]:
    """The effective values of the settings the user may change, ``section -> key -> value``."""
    out: dict[str, dict[str, object]] = {}
    for field in FIELDS:
        if can(field.permission):
            out.setdefault(field.section, {})[field.name] = field.current(settings)
    return out
