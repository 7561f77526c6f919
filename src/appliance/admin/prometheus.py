"""Prometheus text exposition of the call metadata (counts and latencies; no content, no PHI).

A custom ``prometheus_client`` collector reads the agent's call metadata database
(``settings.store.metadata_db``, opened read-only on every scrape) and the agent's live state
(control op ``status``; an unreachable agent reads as ``appliance_agent_up 0``). Labels are
fixed identifiers only (disposition, outcome, stage, SIP status, transfer mode and result):
never a call id, a caller number, a transfer target or any text. Served at ``GET /metrics``
behind its own bearer token (:func:`metrics_token`), for a scrape from the box or the clinic
LAN.

Metrics (Prometheus naming: ``_total`` counters, ``_seconds`` histograms):

- ``appliance_calls_total{disposition}``: ended calls by how they ended.
- ``appliance_calls_scored_total{outcome}``, ``appliance_calls_contained_total``,
  ``appliance_escalations_total`` (scored calls whose outcome is ``transferred``, the
  definition of :meth:`appliance.metrics.store.CallMetadataStore.rates`).
- ``appliance_compliance_flags_total{check}``: scored calls failing a compliance check.
- ``appliance_sip_rejections_total{status}``: INVITEs refused (403, 503...).
- ``appliance_voice_to_voice_seconds`` and ``appliance_turn_stage_seconds{stage}``: per-turn
  histograms of the ``turn_latency`` columns (:mod:`appliance.metrics.latency`).
- ``appliance_media_callback_errors_total``, ``appliance_media_rx_dropped_frames_total``,
  ``appliance_media_tx_underruns_total`` (20 ms ticks with no agent audio queued: the bridge
  sent silence).
- ``appliance_transfers_total{mode,result}``: transfer results (``transfers`` table, one per
  :class:`~appliance.events.TransferResult`) by mode (``blind``, ``attended``; ``unknown``
  when not recorded) and result (``ok`` when the final SIP status was 2xx, else ``failed``).
- ``appliance_agent_up``, ``appliance_agent_ready``, ``appliance_agent_draining``,
  ``appliance_agent_active_calls``, ``appliance_agent_max_calls``, ``appliance_audit_failed``,
  ``appliance_stage_failed{stage}`` from control op ``status``.
- ``appliance_event_loop_lag_seconds{quantile}`` (0.5, 0.99 and 1 over the last minute) and
  ``appliance_event_loop_stalls_total`` (wake-ups >= 100 ms late): the agent's asyncio loop
  (:mod:`appliance.metrics.loop_lag`), from ``status``.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from appliance.control import ControlClient, ControlError

_LOGGER = logging.getLogger(__name__)

#: Histogram upper bounds, seconds: fine below the 3.5 s voice-to-voice P90 launch threshold.
BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 5.0, 7.5, 10.0)
#: ``turn_latency`` column -> ``stage`` label.
STAGES = {
    "endpointing_s": "endpointing",
    "stt_s": "stt",
    "agent_s": "agent",
    "reply_s": "reply",
    "llm_ttft_s": "llm_ttft",
    "tts_ttfa_s": "tts_ttfa",
}
#: ``call_scores`` flag column -> ``check`` label.
CHECKS = {
    "disclosure_ok": "disclosure",
    "identity_before_phi_ok": "identity_before_phi",
    "no_card_number_ok": "no_card_number",
}
#: Seconds the scrape waits for the agent's ``status``.
STATUS_TIMEOUT_S = 2.0


def metrics_token(path: Path) -> str:
    """The bearer token for ``/metrics``, created on first use (32 random bytes, hex, 0600).

    Raises:
        OSError: The file cannot be created or read.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            pass  # another request created it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def check_bearer(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time)."""
    if not header or not token:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class CallMetricsCollector(Collector):
    """Reads the metrics DB (read-only) and the agent's status on every scrape.

    Args:
        metrics_db: The agent's call metadata SQLite file.
        control: The agent's control socket client (``None``: no agent metrics).
    """

    def __init__(self, metrics_db: Path, control: ControlClient | None = None) -> None:
        self.metrics_db = Path(metrics_db)
        self.control = control

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (empty counters when there is no database yet)."""
        yield from self._database()
        yield from self._agent()

    def _database(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "appliance_calls", "Ended calls by disposition.", labels=["disposition"]
        )
        scored = CounterMetricFamily(
            "appliance_calls_scored", "Scored calls by outcome.", labels=["outcome"]
        )
        contained = CounterMetricFamily(
            "appliance_calls_contained", "Scored calls resolved without a person."
        )
        escalations = CounterMetricFamily(
            "appliance_escalations", "Scored calls handed to a person (outcome transferred)."
        )
        flags = CounterMetricFamily(
            "appliance_compliance_flags", "Scored calls failing a check.", labels=["check"]
        )
        rejections = CounterMetricFamily(
            "appliance_sip_rejections", "INVITEs refused, by SIP status.", labels=["status"]
        )
        cb_errors = CounterMetricFamily(
            "appliance_media_callback_errors", "Exceptions caught in media callbacks."
        )
        dropped = CounterMetricFamily(
            "appliance_media_rx_dropped_frames", "Caller audio frames (20 ms) dropped."
        )
        underruns = CounterMetricFamily(
            "appliance_media_tx_underruns",
            "20 ms ticks with no agent audio queued (silence sent).",
        )
        v2v = HistogramMetricFamily(
            "appliance_voice_to_voice_seconds",
            "Caller's last voice to the agent's first audio, per turn (in-process).",
        )
        stages = HistogramMetricFamily(
            "appliance_turn_stage_seconds", "Per-turn stage latency.", labels=["stage"]
        )
        transfers = CounterMetricFamily(
            "appliance_transfers",
            "Transfer results by mode and result (ok: final SIP status 2xx).",
            labels=["mode", "result"],
        )
        conn = self._open()
        if conn is not None:
            try:
                tables = {
                    r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if "calls" in tables:
                    for disposition, n in conn.execute(
                        "SELECT disposition, COUNT(*) FROM calls "
                        "WHERE disposition IS NOT NULL GROUP BY disposition"
                    ):
                        calls.add_metric([str(disposition)], n)
                if "call_scores" in tables:
                    self._scores(conn, scored, contained, escalations, flags)
                if "rejections" in tables:
                    for status, n in conn.execute(
                        "SELECT status, COUNT(*) FROM rejections GROUP BY status"
                    ):
                        rejections.add_metric([str(status)], n)
                if "call_media" in tables:
                    errs, drops, under = conn.execute(
                        "SELECT COALESCE(SUM(callback_errors), 0), COALESCE(SUM(rx_dropped), 0), "
                        "COALESCE(SUM(tx_underruns), 0) FROM call_media"
                    ).fetchone()
                    cb_errors.add_metric([], errs)
                    dropped.add_metric([], drops)
                    underruns.add_metric([], under)
                if "turn_latency" in tables:
                    self._latency(conn, v2v, stages)
                if "transfers" in tables:
                    for mode, ok, n in conn.execute(
                        "SELECT mode, ok, COUNT(*) FROM transfers GROUP BY mode, ok ORDER BY 1, 2"
                    ):
                        transfers.add_metric([mode or "unknown", "ok" if ok else "failed"], n)
            except sqlite3.Error as exc:
                _LOGGER.error("metrics database unreadable: %s", type(exc).__name__)
            finally:
                conn.close()
        yield from (calls, scored, contained, escalations, flags, rejections, cb_errors, dropped)
        yield underruns
        yield from (v2v, stages, transfers)

    def _open(self) -> sqlite3.Connection | None:
        if not self.metrics_db.exists():
            return None
        try:
            return sqlite3.connect(f"file:{self.metrics_db.resolve()}?mode=ro", uri=True)
        except sqlite3.Error:
            return None

    @staticmethod
    def _scores(
        conn: sqlite3.Connection,
        scored: CounterMetricFamily,
        contained: CounterMetricFamily,
        escalations: CounterMetricFamily,
        flags: CounterMetricFamily,
    ) -> None:
        for outcome, n in conn.execute(
            "SELECT outcome, COUNT(*) FROM call_scores GROUP BY outcome"
        ):
            scored.add_metric([str(outcome)], n)
        row = conn.execute(
            "SELECT COALESCE(SUM(contained), 0), COALESCE(SUM(outcome = 'transferred'), 0), "
            + ", ".join(f"COALESCE(SUM({col} = 0), 0)" for col in CHECKS)
            + " FROM call_scores"
        ).fetchone()
        contained.add_metric([], row[0])
        escalations.add_metric([], row[1])
        for label, n in zip(CHECKS.values(), row[2:], strict=True):
            flags.add_metric([label], n)

    @staticmethod
    def _latency(
        conn: sqlite3.Connection, v2v: HistogramMetricFamily, stages: HistogramMetricFamily
    ) -> None:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(turn_latency)")}
        wanted = ["voice_to_voice_s"] + [c for c in STAGES if c in cols]
        parts = []
        for col in wanted:
            parts += [f"SUM({col} <= {le!r})" for le in BUCKETS]
            parts += [f"COUNT({col})", f"TOTAL({col})"]
        row = conn.execute("SELECT " + ", ".join(parts) + " FROM turn_latency").fetchone()
        width = len(BUCKETS) + 2
        for i, col in enumerate(wanted):
            chunk = row[i * width : (i + 1) * width]
            count, total = int(chunk[-2] or 0), float(chunk[-1] or 0.0)
            buckets = [(str(le), int(n or 0)) for le, n in zip(BUCKETS, chunk, strict=False)]
            buckets.append(("+Inf", count))
            if col == "voice_to_voice_s":
                v2v.add_metric([], buckets, total)
            else:
                stages.add_metric([STAGES[col]], buckets, total)

    def _agent(self) -> Iterator[Metric]:
        status: dict[str, Any] | None = None
        if self.control is not None:
            try:
                got = self.control.call(
                    "status", {}, "service:prometheus", timeout=STATUS_TIMEOUT_S
                )
                status = got if isinstance(got, dict) else None
            except ControlError:
                status = None
        up = GaugeMetricFamily("appliance_agent_up", "1 when the agent answers its status.")
        up.add_metric([], 1 if status is not None else 0)
        yield up
        if status is None:
            return
        for key, doc in (
            ("ready", "1 when the agent takes calls."),
            ("draining", "1 while the agent drains before a stop."),
            ("active_calls", "Calls in progress."),
            ("max_calls", "Concurrent calls this agent takes."),
        ):
            value = status.get(key)
            if isinstance(value, bool | int | float):
                gauge = GaugeMetricFamily(f"appliance_agent_{key}", doc)
                gauge.add_metric([], float(value))
                yield gauge
        audit = status.get("audit")
        if isinstance(audit, dict) and isinstance(audit.get("failed"), bool):
            failed = GaugeMetricFamily("appliance_audit_failed", "1 when audit writes fail.")
            failed.add_metric([], float(audit["failed"]))
            yield failed
        stage_map = status.get("stages")
        if isinstance(stage_map, dict):
            gauge = GaugeMetricFamily(
                "appliance_stage_failed", "1 when a model stage is unhealthy.", labels=["stage"]
            )
            for name, state in sorted(stage_map.items()):
                gauge.add_metric([str(name)], 0.0 if state == "ok" else 1.0)
            yield gauge
        lag = status.get("loop_lag")
        if isinstance(lag, dict) and lag.get("samples"):
            quantiles = GaugeMetricFamily(
                "appliance_event_loop_lag_seconds",
                "How late the agent's event loop ran a due wake-up, over the last minute.",
                labels=["quantile"],
            )
            for label, key in (("0.5", "p50_s"), ("0.99", "p99_s"), ("1", "window_max_s")):
                if isinstance(lag.get(key), int | float):
                    quantiles.add_metric([label], float(lag[key]))
            yield quantiles
            if isinstance(lag.get("stalls"), int):
                stalls = CounterMetricFamily(
                    "appliance_event_loop_stalls", "Loop wake-ups at least 100 ms late."
                )
                stalls.add_metric([], lag["stalls"])
                yield stalls


def exposition(metrics_db: Path, control: ControlClient | None = None) -> bytes:
    """The Prometheus text format (version 0.0.4) of :class:`CallMetricsCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CallMetricsCollector(metrics_db, control))
    return generate_latest(registry)
