"""Settings schema and TOML loading.

Settings are data: every field has a default and help text (``Field(description=...)``).
The development defaults bind SIP to 127.0.0.1 and allow only 127.0.0.1 as a trunk peer.

A settings file ``F`` may have drop-ins: every ``*.toml`` in ``F.d/``, merged over ``F`` in
file-name order, key by key within a section (like systemd's drop-ins). On the box the Ansible
``config`` role owns ``/etc/appliance/appliance.toml`` and ``appliance firstboot`` owns
``/etc/appliance/appliance.toml.d/10-firstboot.toml`` (the PBX trunk settings).

A corrupt or invalid file raises :class:`appliance.errors.ConfigError` whose message names
the file (base file or drop-in) and the offending key, so ``appliance serve`` can exit
non-zero at start and a running process can refuse a bad reload while it keeps serving.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from appliance.config.edge import EdgeSettings
from appliance.config.outbound import OutboundSettings, check_room_for_inbound
from appliance.errors import ConfigError

#: Calls one pjsua2 process can hold: the PyPI wheel compiles ``PJSUA_MAX_CALLS=4``. With
#: ``max_calls`` at 3 or less a slot stays free to answer ``503`` + ``Retry-After`` ourselves;
#: at 4, pjsua itself answers further INVITEs with ``486 Busy Here``
#: (docs/decisions/0001-scaling-past-four-calls.md).
MAX_CALLS_PER_PROCESS = 4


RiskTier = Literal["low", "medium", "high"]


def _all_tiers() -> list[RiskTier]:
    return ["low", "medium", "high"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SipSettings(_Section):
    """SIP user agent and trunk settings."""

    bind: str = Field("127.0.0.1:5060", description="HOST:PORT the SIP UDP transport binds to.")
    rtp_port: int = Field(40000, ge=1024, le=65000, description="First RTP port to allocate.")
    rtp_port_max: int | None = Field(
        None,
        ge=1025,
        le=65535,
        description="Last RTP port to allocate (RTP and RTCP pairs, ascending, wrapping back "
        "to rtp_port); unset: rtp_port + 999, at most 65535.",
    )
    rtp_address: str = Field(
        "",
        description="IP address the RTP and RTCP sockets bind to. Empty: the host of bind "
        "when it is a specific address, else the local address the OS routes to the first "
        "allowed_peers entry. '0.0.0.0' or '::' binds every address: possible, discouraged "
        "(media then reaches the worker on interfaces no trunk uses).",
    )
    rtp_public_address: str = Field(
        "",
        description="IP address written into the SDP c= and o= lines (where the far end sends "
        "RTP), e.g. a NAT's outside address; empty: the address RTP binds to.",
    )
    allowed_peers: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32"],
        description="Trunk peers (IP or CIDR) allowed to send INVITEs; others get 403.",
    )
    min_peer_prefix_len: int = Field(
        24, ge=1, le=32, description="Broadest IPv4 allowed_peers entry accepted (prefix bits)."
    )
    min_peer_prefix_len_v6: int = Field(
        64, ge=1, le=128, description="Broadest IPv6 allowed_peers entry accepted (prefix bits)."
    )
    allow_broad_peers: bool = Field(
        False, description="Accept allowed_peers entries broader than the minimum (never /0)."
    )
    ack_timeout_s: float = Field(
        32.0,
        gt=0,
        le=64,
        description="A call answered but never ACKed is ended after this long (RFC 3261 "
        "Timer H, 64*T1 = 32 s).",
    )
    rtp_timeout_s: float = Field(
        60.0,
        ge=0,
        description="A call whose inbound RTP stops for this long is ended (0: never).",
    )
    max_calls: int = Field(
        2,
        ge=1,
        le=MAX_CALLS_PER_PROCESS,
        description="Concurrent calls (<=3 keeps 503 answers); more get 503.",
    )
    retry_after_s: int = Field(30, ge=1, description="Retry-After seconds sent with 503.")
    codecs: list[str] = Field(
        default_factory=lambda: ["PCMU/8000", "PCMA/8000"],
        description="Codecs offered/accepted, in priority order. Only G.711 is supported.",
    )
    drain_timeout_s: float = Field(
        120.0, gt=0, description="On SIGTERM, how long to wait for active calls to end."
    )
    max_call_duration_s: float = Field(
        900.0, gt=0, description="Calls are ended politely after this long."
    )
    user_agent: str = Field("clinic-voice-appliance/0.1", description="User-Agent header.")
    liveness_timeout_s: float = Field(
        10.0,
        ge=2.0,
        le=120.0,
        description=(
            "The worker exits (and systemd or supervisor restarts it) when its event loop or "
            "its SIP thread has not answered a liveness probe for this long."
        ),
    )

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @field_validator("rtp_address")
    @classmethod
    def _check_rtp_address(cls, value: str) -> str:
        return str(_ip_literal(value, "rtp_address")) if value else value

    @field_validator("rtp_public_address")
    @classmethod
    def _check_rtp_public_address(cls, value: str) -> str:
        if not value:
            return value
        ip = _ip_literal(value, "rtp_public_address")
        if ip.is_unspecified or ip.is_multicast:
            raise ValueError(
                f"rtp_public_address {value!r} is not an address a far end can send RTP to; "
                "give the unicast address the trunk reaches this box on"
            )
        return str(ip)

    @model_validator(mode="after")
    def _check_rtp(self) -> SipSettings:
        """The RTP port range holds every call pjsua can have; the addresses share a family."""
        if self.rtp_port_max is not None:
            ports = self.rtp_port_max - self.rtp_port + 1
            if ports < RTP_PORTS_MIN:
                raise ValueError(
                    f"rtp_port_max {self.rtp_port_max} leaves {max(ports, 0)} RTP ports from "
                    f"rtp_port {self.rtp_port}; at least {RTP_PORTS_MIN} are needed (an RTP and "
                    f"an RTCP port for each of the {MAX_CALLS_PER_PROCESS} calls pjsua holds)"
                )
        if self.rtp_public_address:
            # The bound address: rtp_address, else bind's host; an address the route
            # lookup picks at start (wildcard bind) is not known here, and not checked.
            name, text = (
                ("rtp_address", self.rtp_address) if self.rtp_address else ("bind", self.host)
            )
            try:
                bound = ipaddress.ip_address(text)
            except ValueError:
                return self  # a host name in bind: pjlib resolves it
            public = ipaddress.ip_address(self.rtp_public_address)
            if bound.version != public.version and not bound.is_unspecified:
                raise ValueError(
                    f"rtp_public_address {self.rtp_public_address!r} is IPv{public.version} but "
                    f"{name} {text!r} is IPv{bound.version}"
                )
        return self

    @field_validator("allowed_peers")
    @classmethod
    def _check_peers(cls, value: list[str]) -> list[str]:
        for peer in value:
            if ipaddress.ip_network(peer, strict=False).prefixlen == 0:
                raise ValueError(f"{peer!r} allows every address; list the trunk's addresses")
        return value

    @model_validator(mode="after")
    def _check_peer_breadth(self) -> SipSettings:
        """Refuse allowlist entries broader than the minimum prefix unless forced."""
        if self.allow_broad_peers:
            return self
        for peer in self.allowed_peers:
            net = ipaddress.ip_network(peer, strict=False)
            least = self.min_peer_prefix_len if net.version == 4 else self.min_peer_prefix_len_v6
            if net.prefixlen < least:
                raise ValueError(
                    f"allowed_peers entry {peer!r} is broader than /{least} (min_peer_prefix_len"
                    f"{'' if net.version == 4 else '_v6'}); list the trunk's addresses, or set "
                    "allow_broad_peers = true"
                )
        return self

    @field_validator("codecs")
    @classmethod
    def _check_codecs(cls, value: list[str]) -> list[str]:
        unsupported = [c for c in value if c.upper() not in ("PCMU/8000", "PCMA/8000")]
        if unsupported or not value:
            raise ValueError(f"only PCMU/8000 and PCMA/8000 are supported, got {value}")
        return [c.upper() for c in value]

    @property
    def host(self) -> str:
        """Bind host part of :attr:`bind`."""
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """Bind port part of :attr:`bind`."""
        return int(self.bind.rpartition(":")[2])

    @property
    def rtp_port_count(self) -> int:
        """Ports in the RTP range: ``rtp_port .. rtp_port_max`` (default 1,000, up to 65535)."""
        last = self.rtp_port_max if self.rtp_port_max is not None else self.rtp_port + 999
        return min(last, 65535) - self.rtp_port + 1

    def rtp_bind_address(self, sip_host: str | None = None) -> str:
        """The address the RTP sockets bind to (see :attr:`rtp_address`).

        Args:
            sip_host: The SIP host to start from instead of :attr:`host` (the edge passes its
                trunk host for workers whose own SIP host is loopback).

        Returns:
            ``rtp_address`` when set; else the SIP host when it is a specific address (or a
            name, which pjlib resolves); else the local address the kernel would send from
            towards the first reachable ``allowed_peers`` entry (:func:`route_source_address`);
            loopback when there is no peer at all (no trunk yet: every INVITE is refused).

        Raises:
            ConfigError: ``config_invalid``: the SIP host is a wildcard and no allowed peer is
                routable from this host.
        """
        if self.rtp_address:
            return self.rtp_address
        host = sip_host if sip_host is not None else self.host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host
        if not ip.is_unspecified:
            return host
        if not self.allowed_peers:
            # No trunk configured yet (a fresh image before its trunk file): every INVITE gets
            # 403, so no call has media; loopback keeps the agent up without a LAN socket.
            return "::1" if ip.version == 6 else "127.0.0.1"
        return route_source_address(self.allowed_peers)

    def peer_allowed(self, address: str) -> bool:
        """Return whether a source IP address belongs to a configured trunk peer."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(p, strict=False) for p in self.allowed_peers)


#: Fewest RTP ports a range may have: an RTP and an RTCP port (RFC 3550 section 11) for each
#: call one pjsua2 process can hold.
RTP_PORTS_MIN = 2 * MAX_CALLS_PER_PROCESS


def _ip_literal(value: str, name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        raise ValueError(f"{name} must be an IPv4 or IPv6 address, got {value!r}") from None


def route_source_address(peers: Iterable[str]) -> str:
    """The local address the kernel picks to send to the first routable peer.

    A UDP socket is ``connect()``-ed towards a host of each ``peers`` entry in turn (the
    address itself for a ``/32`` or ``/128``, else the network's first host) and
    ``getsockname()`` read back: the kernel chose the source by its routing table. No packet
    is sent (UDP ``connect`` only sets the default destination).

    Args:
        peers: IP addresses or CIDR networks (``[sip] allowed_peers``).

    Returns:
        The source address, e.g. ``"192.168.1.20"``.

    Raises:
        ConfigError: ``config_invalid``: no entry is routable from this host.
    """
    tried: list[str] = []
    for peer in peers:
        net = ipaddress.ip_network(peer, strict=False)
        target = net.network_address if net.num_addresses <= 2 else net.network_address + 1
        family = socket.AF_INET if net.version == 4 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((str(target), 9))
            except OSError as exc:
                tried.append(f"{target}: {exc.strerror or exc}")
                continue
            return str(sock.getsockname()[0])
    raise ConfigError(
        "config_invalid",
        "sip.rtp_address: no route to any allowed_peers entry to pick the RTP address from "
        f"({'; '.join(tried) or 'no peers'}); set [sip] rtp_address",
    )


class ClinicSettings(_Section):
    """Facts about the clinic used by the disclosure and templated answers."""

    name: str = Field("Maple Street Family Clinic", description="Clinic name, spoken.")
    hours: str = Field(
        "Monday to Friday, 8 AM to 5 PM, and Saturday 9 AM to noon",
        description="Opening hours, spoken.",
    )
    address: str = Field("120 Maple Street, Springfield", description="Street address, spoken.")
    parking: str = Field(
        "Free parking is available behind the building.", description="Parking, spoken."
    )


#: What an AI disclosure must say (a compliance control, checked on every load): the caller is
#: talking to an automated system. California's B.O.T. Act (SB 1001) and the EU AI Act art. 50
#: require that a person be told they are interacting with an AI system.
AI_STATEMENT = re.compile(
    r"\b(?i:automated|artificial intelligence|virtual (?:assistant|receptionist))\b|\bAI\b"
)
#: Longest disclosure accepted (characters); it is played whole before the caller can speak.
DISCLOSURE_MAX_CHARS = 400


class AgentSettings(_Section):
    """Conversation behaviour."""

    disclosure: str = Field(
        "Hello, you've reached {clinic}. I'm an automated assistant, not a person.",
        description="AI disclosure, played first and uninterruptibly. {clinic} is replaced.",
    )
    greeting: str = Field("How can I help you today?", description="Said after the disclosure.")
    system_prompt: str = Field(
        "You are the phone receptionist of {clinic}. Answer in one short sentence. "
        "Only use these facts. Hours: {hours}. Address: {address}. {parking} "
        "If you do not know, say you will pass the question to the staff. "
        "Never give medical advice.",
        description="System prompt for the LLM; {clinic}, {hours}, {address}, {parking}.",
    )
    max_reply_tokens: int = Field(40, ge=8, le=512, description="LLM reply budget in tokens.")
    idle_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Caller silence (seconds) after the agent spoke before it asks 'Are you "
        "still there?'; as long again and it says goodbye and hangs up.",
    )
    workflows_dir: Path | None = Field(
        None, description="Directory of workflow YAML files; unset: the shipped defaults."
    )
    knowledge_file: Path | None = Field(
        None, description="Knowledge-base YAML file; unset: the shipped default entries."
    )
    enabled_tiers: list[RiskTier] = Field(
        default_factory=_all_tiers,
        description="Risk tiers whose workflows run; others are refused with a transfer.",
    )
    llm_off_script: bool = Field(
        False,
        description="Send turns no workflow understood to the LLM (for a capable model); "
        "false: reprompt, then escalate.",
    )
    llm_intents: bool = Field(
        False,
        description="Ask the LLM (JSON-schema constrained to the intent enum) about turns the "
        "embeddings are unsure of; for a capable model.",
    )
    anything_else: str = Field(
        "Is there anything else I can help you with?", description="Said after a resolved task."
    )

    @field_validator("disclosure")
    @classmethod
    def _check_disclosure(cls, value: str) -> str:
        if len(value) > DISCLOSURE_MAX_CHARS:
            raise ValueError(f"at most {DISCLOSURE_MAX_CHARS} characters, got {len(value)}")
        if not AI_STATEMENT.search(value):
            raise ValueError(
                "must tell the caller they are talking to an automated system (say "
                "'automated', 'AI', 'artificial intelligence' or 'virtual assistant')"
            )
        return value


class TransferSettings(_Section):
    """Warm transfer to staff: SIP REFER plus a CTI webhook with the call's context."""

    target: str = Field(
        "",
        description="SIP URI of the staff queue or extension, e.g. sip:frontdesk@10.0.0.5; "
        "empty: no transfer, the caller leaves a message.",
    )
    mode: Literal["blind", "attended"] = Field(
        "blind",
        description="blind: REFER to the target; attended: call the target first, then REFER "
        "with Replaces so the staff member who answered takes over the caller.",
    )
    timeout_s: float = Field(20.0, gt=0, le=120, description="Wait for the transfer's result.")
    handoff_header: str = Field(
        "X-Handoff-ID", pattern=r"^X-[A-Za-z0-9-]+$", description="SIP header for the handoff id."
    )
    webhook_url: str = Field(
        "", description="Local CTI URL that receives the handoff context as JSON (POST)."
    )
    webhook_timeout_s: float = Field(2.0, gt=0, le=30, description="CTI webhook timeout.")


class SchedulingSettings(_Section):
    """The built-in calendar (providers, slots, appointments)."""

    db: Path = Field(Path("var/calendar.sqlite"), description="Calendar SQLite file.")
    demo_seed: bool = Field(
        False, description="Seed demo providers, slots and patients (development and tests)."
    )


class PaymentSettings(_Section):
    """Where the PCI DTMF pause hands card digits (never to the LLM, transcript or disk)."""

    handoff_url: str = Field(
        "",
        description="Local payment-terminal URL (loopback or LAN) that receives the card "
        "number as JSON; empty: no processor, the caller is transferred to staff.",
    )


class ModelSettings(_Section):
    """Where the models live and how they run (see models/manifest.toml)."""

    store: Path = Field(Path("models/store"), description="Model store directory.")
    stt: str = Field("stt/whisper-tiny.en", description="faster-whisper model dir in the store.")
    llm: str = Field("llm/SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file in the store.")
    tts: str = Field("tts/kokoro-v1.0.int8.onnx", description="Kokoro ONNX file in the store.")
    tts_voices: str = Field("tts/voices_ja.npz", description="Kokoro voices file in the store.")
    tts_voice: str = Field("jm_kumo", description="Kokoro voice id.")
    tts_speed: float = Field(1.1, gt=0.5, lt=2.0, description="Kokoro speaking rate.")
    vad: str = Field("vad/silero_vad.onnx", description="Silero VAD ONNX file in the store.")
    turn: str = Field("turn/smart-turn-v3.2-cpu.onnx", description="Smart-turn v3 ONNX file.")
    embedding: str = Field(
        "embedding/all-MiniLM-L6-v2",
        description="sentence-transformers model dir (intent matching, knowledge base).",
    )
    threads: int = Field(2, ge=1, le=64, description="CPU threads per model runtime.")
    phrase_cache: Path | None = Field(
        Path("var/phrases"),
        description="Disk cache of pre-rendered fixed phrases (per voice); unset: memory only.",
    )
    llm_context: int = Field(2048, ge=512, description="llama.cpp context length in tokens.")

    def path(self, relative: str) -> Path:
        """Return the absolute path of a file in the store."""
        return (self.store / relative).resolve()


class StoreSettings(_Section):
    """Call metadata (no content) storage."""

    metadata_db: Path = Field(
        Path("var/calls.sqlite"), description="SQLite file for call metadata without content."
    )


class AuditSettings(_Section):
    """Encrypted, tamper-evident audit log (appliance.audit)."""

    enabled: bool = Field(True, description="Write every call to the audit log.")
    db: Path = Field(Path("var/audit/audit.sqlite"), description="Audit SQLite file.")
    kek_file: Path = Field(
        Path("var/keys/audit-kek"),
        description="KEK file (mode 0600) used when no systemd credential 'audit-kek' exists.",
    )
    signing_key_file: Path = Field(
        Path("var/keys/audit-signing.key"), description="Ed25519 checkpoint signing key (0600)."
    )
    checkpoint_file: Path = Field(
        Path("var/audit/checkpoints.log"), description="Signed checkpoints, collected off-box."
    )
    origin: str = Field("clinic-voice-appliance/audit", description="Checkpoint origin line.")
    transcript_retention_days: float = Field(
        30.0, gt=0, description="Content (transcripts, digits) is crypto-shredded after this."
    )
    consent_retention_days: float = Field(
        2557.0,
        gt=0,
        description=(
            "Consent evidence and records outside calls (admin, system) are crypto-shredded "
            "after this: 7 years, past HIPAA's six-year documentation retention (45 CFR "
            "164.316(b)(2)(i)) and the four-year limit for TCPA claims (28 U.S.C. 1658(a))."
        ),
    )
    retention_sweep_s: float = Field(3600.0, gt=0, description="How often retention runs.")
    create_keys: bool = Field(
        False,
        description=(
            "Keys are created only for a brand-new log (first start); true also replaces a "
            "missing key beside an existing log (its sealed content is then lost)."
        ),
    )
    checkpoint_interval_s: float = Field(
        300.0,
        gt=0,
        description="How often the agent signs a checkpoint when the log grew (and pushes it).",
    )
    checkpoint_max_age_s: float = Field(
        3600.0,
        gt=0,
        description="verify fails when a record older than this is not under a signed checkpoint.",
    )
    witness_url: str = Field(
        "",
        description="HTTP(S) URL each new signed checkpoint note is POSTed to; empty: none.",
    )

    @field_validator("witness_url")
    @classmethod
    def _witness_url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("witness_url must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _coverage_after_interval(self) -> AuditSettings:
        # verify fails on records older than the limit without a checkpoint; the agent signs one
        # every interval, so the limit must leave room for at least two of them.
        if self.checkpoint_max_age_s < 2 * self.checkpoint_interval_s:
            raise ValueError(
                "checkpoint_max_age_s must be at least twice checkpoint_interval_s "
                f"({self.checkpoint_max_age_s} < 2 x {self.checkpoint_interval_s})"
            )
        return self


class AdminSettings(_Section):
    """The admin page (``appliance admin``) and the agent's control socket."""

    bind: str = Field(
        "127.0.0.1",
        description="Address the HTTPS admin page listens on (the LAN address on the box).",
    )
    port: int = Field(8443, ge=1, le=65535, description="HTTPS port of the admin page.")
    db: Path = Field(Path("var/admin.sqlite"), description="Accounts, sessions and sign-offs.")
    control_socket: Path = Field(
        Path("var/run/control.sock"),
        description="Unix socket where the agent answers the admin page (mode 0660).",
    )
    tls_dir: Path = Field(
        Path("var/tls"),
        description="Directory with first boot's server.crt, server.key and ca.crt.",
    )
    enrolment_hash: Path = Field(
        Path("var/enrolment.argon2"),
        description="Argon2id hash of first boot's one-time enrolment code.",
    )
    session_idle_minutes: float = Field(
        15.0, gt=0, le=240, description="A session ends after this long without a request."
    )
    session_absolute_hours: float = Field(
        12.0, gt=0, le=72, description="A session ends this long after sign-in, whatever happens."
    )
    lockout_failures: int = Field(
        5, ge=3, le=20, description="Failed sign-ins in a row that lock an account."
    )
    lockout_minutes: float = Field(
        15.0, gt=0, description="How long a locked account stays locked."
    )
    metrics_token_file: Path = Field(
        Path("var/keys/metrics-token"),
        description="Bearer token for the Prometheus endpoint (/metrics); created if missing.",
    )


class TelemetrySettings(_Section):
    """OpenTelemetry traces of each turn; nothing leaves the box by default."""

    traces_file: Path | None = Field(
        None, description="Write OTLP-JSON spans of every turn here (JSON lines); unset: off."
    )
    otlp_endpoint: str = Field(
        "", description="A local OTLP/HTTP collector URL (loopback or LAN); empty: none."
    )


class ApplianceSettings(_Section):
    """All settings of ``appliance serve``."""

    sip: SipSettings = Field(default_factory=SipSettings)
    clinic: ClinicSettings = Field(default_factory=ClinicSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    scheduling: SchedulingSettings = Field(default_factory=SchedulingSettings)
    payments: PaymentSettings = Field(default_factory=PaymentSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)

    @model_validator(mode="after")
    def _check_outbound(self) -> ApplianceSettings:
        check_room_for_inbound(self.outbound, self.sip.max_calls)
        return self

    @model_validator(mode="after")
    def _check_edge_rtp(self) -> ApplianceSettings:
        """Behind the edge, every worker's RTP range lies inside ``[sip] rtp_port_max``.

        Worker N allocates ``rtp_port_stride`` ports from ``rtp_port + N * rtp_port_stride``;
        the last one must not pass ``rtp_port_max`` (65535 when unset).
        """
        if not self.edge.enabled:
            return self
        last = self.sip.rtp_port + self.edge.worker_count() * self.edge.rtp_port_stride - 1
        limit = self.sip.rtp_port_max if self.sip.rtp_port_max is not None else 65535
        if last > limit:
            raise ValueError(
                f"{self.edge.worker_count()} edge workers x rtp_port_stride "
                f"{self.edge.rtp_port_stride} from sip.rtp_port {self.sip.rtp_port} need RTP "
                f"ports up to {last}, past {limit} (sip.rtp_port_max)"
            )
        return self


#: Directory of drop-ins next to a settings file ``F``: ``F.d/`` (``appliance.toml.d/``).
DROPIN_SUFFIX = ".d"


def dropin_dir(path: Path) -> Path:
    """The drop-in directory of a settings file: ``/etc/appliance/appliance.toml.d``."""
    return path.with_name(path.name + DROPIN_SUFFIX)


def settings_files(path: Path | str, pending: Iterable[Path] = ()) -> list[Path]:
    """The settings file and its drop-ins, in the order they are merged.

    Drop-ins are the regular files named ``*.toml`` in :func:`dropin_dir` (names starting with
    ``.`` are skipped, so editors' and writers' temporary files never count), sorted by file
    name like systemd's drop-ins: ``10-firstboot.toml`` before ``50-site.toml``.

    Args:
        path: The base settings file (``--config``).
        pending: Drop-in paths to include even if they do not exist yet (see
            :func:`load_settings`).

    Returns:
        ``[path, *drop-ins]``.

    Raises:
        ConfigError: ``config_unreadable``: the drop-in directory exists but cannot be listed.
    """
    base = Path(path)
    directory = dropin_dir(base)
    names: set[Path] = {p for p in pending if p.parent == directory}
    try:
        for entry in directory.iterdir():
            if entry.suffix == ".toml" and not entry.name.startswith(".") and entry.is_file():
                names.add(entry)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError("config_unreadable", f"{directory}: {exc.strerror or exc}") from exc
    return [base, *sorted(names, key=lambda p: p.name)]


def _read_layer(file: Path, pending: Mapping[Path, str]) -> dict[str, Any]:
    if file in pending:
        text = pending[file]
    else:
        try:
            text = file.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError("config_unreadable", f"{file}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("config_corrupt", f"{file}: not valid TOML ({exc})") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config_corrupt", f"{file}: not valid TOML ({exc})") from exc


def _merge(
    data: dict[str, Any], origin: dict[tuple[str, ...], str], layer: Mapping[str, Any], name: str
) -> None:
    """Merge one layer into ``data`` key by key within each section; record who set what."""
    for section, values in layer.items():
        current = data.get(section)
        if not (isinstance(values, dict) and isinstance(current, dict)):
            # A new section, or a value that is not a [section] (validation then names this
            # file): it replaces whatever was there.
            for key in [k for k in origin if k[0] == section]:
                del origin[key]
            current = data[section] = {} if isinstance(values, dict) else values
        if isinstance(values, dict):
            current.update(values)
            origin.update({(section, str(key)): name for key in values})
        origin[(section,)] = name


def load_settings(
    path: Path | str | None,
    *,
    pending: Mapping[Path, str] | None = None,
    **overrides: object,
) -> ApplianceSettings:
    """Load settings from a TOML file and its drop-ins, and apply dotted overrides.

    The base file is read first, then every drop-in of ``<path>.d/`` (see
    :func:`settings_files`) in file-name order. A later file overrides an earlier one key by
    key within a section, the way systemd drop-ins do: a drop-in holding ``[sip] max_calls = 3``
    changes that key only and keeps the rest of ``[sip]``. Overrides are applied last.

    Relative paths in ``[models] store`` and ``[store] metadata_db`` (and the other path
    settings) are resolved against the base file's directory's parent when the file lives in a
    ``config/`` folder, else against the base file's directory, whichever file set them.

    Args:
        path: TOML file, or ``None`` for the built-in defaults (no drop-ins either).
        pending: TOML text to use instead of what is on disk, by path: the base file or a
            drop-in of ``<path>.d/`` (which need not exist yet). A writer validates a file
            with this before it replaces the real one; errors name the real path.
        **overrides: ``section__field=value`` pairs, e.g. ``sip__bind="127.0.0.1:5070"``.

    Returns:
        The validated settings.

    Raises:
        ConfigError: ``config_unreadable`` (a file is missing or unreadable),
            ``config_corrupt`` (a file is not UTF-8 TOML) or ``config_invalid`` (the merged
            settings fail validation). The message names the file that set the offending key
            (the base file or the drop-in) and the key, e.g.
            ``/etc/appliance/appliance.toml.d/10-firstboot.toml: sip.allowed_peers: ...``.
    """
    data: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    base = Path.cwd()
    default_name = "<defaults>"
    if path is not None:
        file = Path(path)
        pending = {Path(p): text for p, text in (pending or {}).items()}
        for layer in settings_files(file, pending):
            _merge(data, origin, _read_layer(layer, pending), str(layer))
        default_name = str(file)
        base = file.resolve().parent
        if base.name == "config":
            base = base.parent
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        _merge(data, origin, {section: {field: value}}, f"override {key}")
    try:
        settings = ApplianceSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        name = next(
            (origin[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in origin), default_name
        )
        raise ConfigError("config_invalid", f"{name}: {'.'.join(loc)}: {first['msg']}") from exc
    models = settings.models.model_copy(
        update={
            "store": _rebase(base, settings.models.store),
            "phrase_cache": (
                _rebase(base, settings.models.phrase_cache)
                if settings.models.phrase_cache is not None
                else None
            ),
        }
    )
    store = settings.store.model_copy(
        update={"metadata_db": _rebase(base, settings.store.metadata_db)}
    )
    audit = settings.audit.model_copy(
        update={
            name: _rebase(base, getattr(settings.audit, name))
            for name in ("db", "kek_file", "signing_key_file", "checkpoint_file")
        }
    )
    scheduling = settings.scheduling.model_copy(
        update={"db": _rebase(base, settings.scheduling.db)}
    )
    agent = settings.agent.model_copy(
        update={
            name: _rebase(base, getattr(settings.agent, name))
            for name in ("workflows_dir", "knowledge_file")
            if getattr(settings.agent, name) is not None
        }
    )
    admin = settings.admin.model_copy(
        update={
            name: _rebase(base, getattr(settings.admin, name))
            for name in ("db", "control_socket", "tls_dir", "enrolment_hash", "metrics_token_file")
        }
    )
    telemetry = settings.telemetry
    if telemetry.traces_file is not None:
        telemetry = telemetry.model_copy(
            update={"traces_file": _rebase(base, telemetry.traces_file)}
        )
    return settings.model_copy(
        update={
            "models": models,
            "store": store,
            "audit": audit,
            "scheduling": scheduling,
            "agent": agent,
            "admin": admin,
            "telemetry": telemetry,
        }
    )


def _rebase(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()
