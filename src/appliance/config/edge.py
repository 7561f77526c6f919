"""The ``[edge]`` settings: Kamailio as the SIP front door, N agent workers behind it.

With ``enabled = false`` (the default) nothing changes: one ``appliance serve`` process binds
``[sip] bind`` and holds at most ``[sip] max_calls`` calls. With ``enabled = true``,
``appliance edge render`` writes a Kamailio configuration that listens on the trunk address
and spreads calls over ``workers`` agent processes (``appliance serve --worker N``), each
bound to ``worker_host:worker_base_port + N`` (docs/decisions/0020-sip-edge-kamailio.md).

The trunk allowlist stays ``[sip] allowed_peers``: Kamailio's ``permissions`` address list
is rendered from it, so one setting governs the edge and the single-process agent alike.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Highest number of workers one box runs (each one loads its own copy of the models).
MAX_WORKERS = 32
#: Default INVITEs per second per worker the edge passes on (``max_invites_per_s`` = 0). A
#: worker's pjlib ioqueue (64 sockets) runs out under an INVITE flood it refuses with 503:
#: it aborted at 75 a second and survived 25 and 50 (ADR 0018); through the edge, two workers
#: aborted under 300 a second from one allowlisted source with pike off (benchmarks/load.py).
INVITES_PER_S_PER_WORKER = 10


def default_workers(cpu_count: int | None = None) -> int:
    """Number of agent workers for a box with ``cpu_count`` cores.

    One worker per two cores (each worker runs its STT, LLM and TTS on ``[models] threads``
    threads, 2 by default), at least 1 and at most :data:`MAX_WORKERS`.

    Args:
        cpu_count: Cores; ``None`` asks the OS (``os.cpu_count()``, 1 when unknown).

    Returns:
        The worker count, in ``[1, MAX_WORKERS]``.
    """
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, cores // 2))


class EdgeSettings(BaseModel):
    """Kamailio front door and agent workers (``appliance edge render``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False,
        description="Run Kamailio on the trunk address and N agent workers on loopback; "
        "false: one agent process binds [sip] bind itself.",
    )
    bind: str = Field(
        "",
        description="HOST:PORT Kamailio listens on for the trunk (UDP and TCP); empty: [sip] bind.",
    )
    workers: int = Field(
        0,
        ge=0,
        le=MAX_WORKERS,
        description="Agent workers (each holds up to [sip] max_calls <= 3 calls); 0: one per "
        "two CPU cores.",
    )
    worker_host: str = Field(
        "127.0.0.1", description="Loopback address the workers' SIP transports bind to."
    )
    worker_base_port: int = Field(
        5070,
        ge=1024,
        le=65000,
        description="SIP UDP port of worker 0; worker N binds worker_base_port + N.",
    )
    internal_port: int = Field(
        5069,
        ge=1024,
        le=65535,
        description="Loopback UDP port (on worker_host) Kamailio talks to the workers from.",
    )
    rtp_port_stride: int = Field(
        100,
        ge=16,
        le=1000,
        description="RTP ports per worker: worker N allocates from [sip] rtp_port + N * stride.",
    )
    retry_after_s: int = Field(
        30, ge=1, le=3600, description="Retry-After seconds in the edge's 503 (no worker free)."
    )
    ping_interval_s: int = Field(
        5,
        ge=1,
        le=300,
        description="Kamailio probes every worker with OPTIONS this often (ds_ping_interval).",
    )
    ping_threshold: int = Field(
        2,
        ge=1,
        le=10,
        description="Failed probes before a worker is marked down (ds_probing_threshold).",
    )
    invite_timeout_s: int = Field(
        4,
        ge=1,
        le=30,
        description="A worker that sends no provisional reply to an INVITE in this many "
        "seconds is skipped and the next one tried (fr_timer).",
    )
    pike_sampling_s: int = Field(
        2, ge=1, le=60, description="pike sampling window in seconds (sampling_time_unit)."
    )
    pike_density: int = Field(
        30,
        ge=1,
        le=10000,
        description="Requests one source may send per window before pike blocks it "
        "(reqs_density_per_unit).",
    )
    pike_block_s: int = Field(
        120, ge=1, le=3600, description="How long a flooding source stays blocked (remove_latency)."
    )
    max_invites_per_s: int = Field(
        0,
        ge=0,
        le=10000,
        description="New calls (INVITEs) the edge passes to the workers per second, all "
        "sources together (pipelimit, tail drop); more get 503 + Retry-After. 0: "
        f"{INVITES_PER_S_PER_WORKER} per worker.",
    )
    tls_port: int = Field(5061, ge=1, le=65535, description="TLS listener port (with tls_cert).")
    tls_cert: Path | None = Field(
        None, description="PEM certificate for a TLS trunk listener (absolute); unset: no TLS."
    )
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert (absolute).")
    run_dir: Path = Field(
        Path("/run/appliance-edge"),
        description="Kamailio's runtime directory: its control socket and the drain flag.",
    )

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, value: str) -> str:
        if value:
            _split_hostport(value)
        return value

    @field_validator("worker_host")
    @classmethod
    def _check_worker_host(cls, value: str) -> str:
        if not ipaddress.ip_address(value).is_loopback:
            raise ValueError(f"workers must bind a loopback address, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> EdgeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_absolute():
                raise ValueError(f"TLS paths must be absolute, got {path}")
        if self.worker_base_port + self.worker_count() > 65535:
            raise ValueError("worker_base_port + workers exceeds 65535")
        if (
            self.worker_base_port
            <= self.internal_port
            < self.worker_base_port + self.worker_count()
        ):
            raise ValueError("internal_port falls among the worker ports")
        return self

    def worker_count(self) -> int:
        """``workers``, or :func:`default_workers` for this machine when it is 0."""
        return self.workers or default_workers()

    def invite_rate(self) -> int:
        """``max_invites_per_s``, or ``INVITES_PER_S_PER_WORKER`` per worker when it is 0."""
        return self.max_invites_per_s or INVITES_PER_S_PER_WORKER * self.worker_count()

    def worker_port(self, index: int) -> int:
        """SIP UDP port of worker ``index`` (0-based).

        Raises:
            ValueError: ``index`` outside ``[0, worker_count())``.
        """
        if not 0 <= index < self.worker_count():
            raise ValueError(f"worker {index} outside 0..{self.worker_count() - 1}")
        return self.worker_base_port + index


def _split_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    ipaddress.ip_address(host.strip("[]"))
    return host.strip("[]"), int(port)
