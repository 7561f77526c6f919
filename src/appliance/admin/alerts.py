"""Alert rules at the production launch thresholds, with their fired/cleared history.

Evaluated from the call metadata and the agent's status; the history is in the admin database.

Rules (:data:`RULES`; thresholds are the production framework's launch thresholds named in
issue 12):

==================== ======== =============================================================
rule                 severity fires when
==================== ======== =============================================================
v2v_p90              warning  voice-to-voice P90 of the last hour's turns > 3.5 s
v2v_p99              alert    voice-to-voice P99 of the last hour's turns > 5 s
containment_drop     alert    containment of the last 24 h is more than 5 points below
                              that of the 24 h before
compliance_flags     alert    calls with a compliance flag false > 2% of the last 24 h's
transfer_failures    alert    failed transfers > 5% of the last 24 h's transfer results
                              (``transfers``: per REFER, failed unless the final SIP
                              status was 2xx); only when the window has no transfer
                              result, from the post-call scores: calls whose transfer
                              attempts all failed > 5% of calls with an attempt
wer                  alert    word error rate of the last 7 days' reviewed calls > 8%
                              (:func:`appliance.admin.quality.wer_summary`)
audit_verification   alert    the agent's status reports ``audit.failed``
audit_verify_failed  alert    the audit verify timer failed: its alarm marker
                              (:func:`appliance.audit.alarm.alarm_path` under the
                              directory of ``metadata_db``) exists; cleared when a
                              later verification passes and removes it (no data while
                              the ``alarms`` directory is missing: no timer here)
model_stage          alert    the agent's status reports a stage ``failed``
==================== ======== =============================================================

Percentiles are nearest-rank (:func:`appliance.admin.queries.percentile`). A rule without
data (no turns in the window, no scored calls, no transfer attempts, no reviews, the agent
unreachable) keeps its state: no transition is recorded. Transitions (``fired`` and
``cleared``, with the value and the threshold) go to the ``alerts_history`` table of
``admin.sqlite`` (migration ``alerts_001_history``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.admin import queries
from appliance.audit.alarm import alarm_path, read_alarm
from appliance.control import ControlError
from appliance.migrations import apply_migrations

_LOGGER = logging.getLogger(__name__)

#: Seconds between two evaluations by :func:`alert_loop`.
INTERVAL_S = 60.0
_HOUR = 3600.0
_DAY = 86400.0


@dataclass(frozen=True)
class Rule:
    """One alert rule: ``threshold`` in ``unit`` (``s``, ``points``, ``fraction``, ``flag``)."""

    key: str
    title: str
    severity: str
    threshold: float
    unit: str


RULES: tuple[Rule, ...] = (
    Rule("v2v_p90", "Voice-to-voice P90 (1 h) above 3.5 s", "warning", 3.5, "s"),
    Rule("v2v_p99", "Voice-to-voice P99 (1 h) above 5 s", "alert", 5.0, "s"),
    Rule("containment_drop", "Containment fell more than 5 points in 24 h", "alert", 5.0, "points"),
    Rule("compliance_flags", "Compliance-flag rate (24 h) above 2%", "alert", 0.02, "fraction"),
    Rule("transfer_failures", "Transfer failure rate (24 h) above 5%", "alert", 0.05, "fraction"),
    Rule("wer", "Word error rate (7 days) above 8%", "alert", 0.08, "fraction"),
    Rule("audit_verification", "Audit log verification failing", "alert", 0.0, "flag"),
    Rule("audit_verify_failed", "Audit log verify timer failed", "alert", 0.0, "flag"),
    Rule("model_stage", "A model stage is failing", "alert", 0.0, "flag"),
)
RULES_BY_KEY = {rule.key: rule for rule in RULES}


@dataclass(frozen=True)
class Reading:
    """A rule's value at one evaluation; ``value is None`` means no data (state kept)."""

    rule: Rule
    value: float | None
    detail: str = ""

    @property
    def firing(self) -> bool | None:
        """Whether the value is above the threshold; ``None`` without data."""
        if self.value is None:
            return None
        return self.value > self.rule.threshold


WerFn = Callable[[Path, float], dict[str, Any]]


def _wer_fn() -> WerFn | None:
    try:
        module = importlib.import_module("appliance.admin.quality")
    except ImportError:
        return None  # the quality reviews module is not installed yet: no WER data
    fn = getattr(module, "wer_summary", None)
    return fn if callable(fn) else None


def evaluate(
    metrics_db: Path,
    status: dict[str, Any] | None,
    now: float,
    *,
    reviews_db: Path | None = None,
    wer_fn: WerFn | None = None,
) -> list[Reading]:
    """Evaluate every rule of :data:`RULES` at ``now`` (epoch s).

    Args:
        metrics_db: The agent's call metadata database (opened read-only).
        status: The agent's ``status`` control answer, or ``None`` when unreachable.
        now: Evaluation time.
        reviews_db: Database passed to ``wer_fn`` (the admin database).
        wer_fn: ``wer_summary(db_path, since) -> {"wer", "calls"}``; default
            :func:`appliance.admin.quality.wer_summary` when that module exists.

    Returns:
        One :class:`Reading` per rule, in :data:`RULES` order.
    """
    values: dict[str, tuple[float | None, str]] = {}
    try:
        with queries.open_metrics(metrics_db) as conn:
            hour = queries.latency_window(conn, now - _HOUR, now)
            day = queries.score_rates(conn, now - _DAY, now)
            before = queries.score_rates(conn, now - 2 * _DAY, now - _DAY)
            transfer = queries.transfer_rates(conn, now - _DAY, now)
    except queries.MetricsUnavailable:
        hour, day, before = {"turns": 0}, {}, {}
        transfer = {"failure_rate": None, "transfers": 0, "source": "call_scores"}
    turns = f"{hour['turns']} turns"
    values["v2v_p90"] = (hour.get("p90"), turns)
    values["v2v_p99"] = (hour.get("p99"), turns)
    now_c, before_c = day.get("containment_rate"), before.get("containment_rate")
    drop = None if now_c is None or before_c is None else (before_c - now_c) * 100
    values["containment_drop"] = (drop, f"{_pct(before_c)} -> {_pct(now_c)}")
    values["compliance_flags"] = (day.get("compliance_flag_rate"), f"{day.get('scored', 0)} calls")
    values["transfer_failures"] = (
        transfer["failure_rate"],
        f"{transfer['transfers']} transfer results"
        if transfer["source"] == "transfer_results"
        else f"{transfer['transfers']} calls with a transfer, from post-call scores",
    )
    fn = wer_fn or _wer_fn()
    wer: tuple[float | None, str] = (None, "no WER data yet")
    if fn is not None and reviews_db is not None:
        try:
            got = fn(reviews_db, now - 7 * _DAY)
            if got.get("wer") is not None:
                wer = (float(got["wer"]), f"{got.get('calls', 0)} reviewed calls")
        except (sqlite3.Error, OSError, ValueError, TypeError, KeyError):
            _LOGGER.warning("WER summary unavailable")
    values["wer"] = wer
    values["audit_verification"] = (None, "agent unreachable")
    values["model_stage"] = (None, "agent unreachable")
    marker_path = alarm_path(metrics_db.parent)
    marker = read_alarm(marker_path)
    if marker is not None:
        values["audit_verify_failed"] = (1.0, str(marker.get("problem", ""))[:300])
    elif marker_path.parent.is_dir():  # made by the verify unit: the timer has run
        values["audit_verify_failed"] = (0.0, "")
    else:
        values["audit_verify_failed"] = (None, "the verify timer has not run here")
    if isinstance(status, dict):
        audit = status.get("audit")
        if isinstance(audit, dict) and "failed" in audit:
            values["audit_verification"] = (1.0 if audit["failed"] else 0.0, "")
        stages = status.get("stages")
        if isinstance(stages, dict):
            failed = sorted(str(name) for name, state in stages.items() if state == "failed")
            values["model_stage"] = (float(len(failed)), ", ".join(failed))
    return [Reading(rule, *values[rule.key]) for rule in RULES]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _m001_history(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE alerts_history (
            id INTEGER PRIMARY KEY,
            rule TEXT NOT NULL,
            severity TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('fired', 'cleared')),
            t REAL NOT NULL,
            value REAL,
            threshold REAL NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        )"""
    )
    conn.execute("CREATE INDEX alerts_history_rule ON alerts_history (rule, id)")
    conn.execute("CREATE INDEX alerts_history_t ON alerts_history (t)")


MIGRATIONS = [("alerts_001_history", _m001_history)]


class AlertStore:
    """The alert history in the admin database (WAL; one short transaction per call).

    Args:
        path: ``admin.sqlite`` (created with its directory).

    Raises:
        sqlite3.Error: The database cannot be opened or migrated.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            apply_migrations(conn, MIGRATIONS, conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def record(self, readings: list[Reading], now: float) -> list[dict[str, Any]]:
        """Record the transitions ``readings`` imply and return them.

        A rule above its threshold whose last state is not ``fired`` fires; a rule at or
        below it whose last state is ``fired`` clears; a reading without data changes
        nothing. Check and insert share one ``BEGIN IMMEDIATE`` transaction, so two
        evaluators at once record a transition once.
        """
        out: list[dict[str, Any]] = []
        with contextlib.closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                states = self._states(conn)
                for r in readings:
                    if r.firing is None:
                        continue
                    fired = states.get(r.rule.key, {}).get("state") == "fired"
                    if r.firing == fired:
                        continue
                    row = {
                        "rule": r.rule.key,
                        "severity": r.rule.severity,
                        "state": "fired" if r.firing else "cleared",
                        "t": now,
                        "value": r.value,
                        "threshold": r.rule.threshold,
                        "detail": r.detail,
                    }
                    conn.execute(
                        "INSERT INTO alerts_history (rule, severity, state, t, value, threshold,"
                        " detail) VALUES (:rule, :severity, :state, :t, :value, :threshold,"
                        " :detail)",
                        row,
                    )
                    out.append(row)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return out

    @staticmethod
    def _states(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
        rows = conn.execute(
            "SELECT h.* FROM alerts_history h JOIN (SELECT rule, MAX(id) AS id FROM "
            "alerts_history GROUP BY rule) last ON last.id = h.id"
        ).fetchall()
        return {row["rule"]: dict(row) for row in rows}

    def current(self) -> dict[str, dict[str, Any]]:
        """Each rule's last transition (``rule`` to the history row); rules never fired absent."""
        with contextlib.closing(self._connect()) as conn:
            return self._states(conn)

    def history(self, limit: int = 100, rule: str | None = None) -> list[dict[str, Any]]:
        """The latest transitions, newest first (of one ``rule`` or all)."""
        with contextlib.closing(self._connect()) as conn:
            where, params = ("WHERE rule = ?", [rule]) if rule else ("", [])
            rows = conn.execute(
                f"SELECT * FROM alerts_history {where} ORDER BY id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [dict(row) for row in rows]


async def agent_status(ctx: Any, actor: str = "service:admin-alerts") -> dict[str, Any] | None:
    """The agent's ``status`` answer, or ``None`` when it cannot be had."""
    try:
        status = await ctx.control.acall("status", {}, actor)
    except ControlError:
        return None
    return status if isinstance(status, dict) else None


async def evaluate_and_record(
    ctx: Any,
    now: float | None = None,
    status: dict[str, Any] | None = None,
    *,
    ask_agent: bool = True,
) -> tuple[list[Reading], list[dict[str, Any]]]:
    """Evaluate all rules for the admin app ``ctx`` and record the transitions.

    Args:
        ctx: The :class:`~appliance.admin.web.AdminContext` (``settings``, ``db_path``,
            ``control``).
        now: Evaluation time (default: the clock).
        status: The agent's status if already fetched (``None``: unknown).
        ask_agent: Ask the agent for its status when ``status`` is ``None``.

    Returns:
        ``(readings, transitions)``.

    Raises:
        sqlite3.Error: The admin database cannot be written.
    """
    now = time.time() if now is None else now
    if status is None and ask_agent:
        status = await agent_status(ctx)
    readings = await asyncio.to_thread(
        evaluate,
        Path(ctx.settings.store.metadata_db),
        status,
        now,
        reviews_db=Path(ctx.db_path),
    )
    store = AlertStore(Path(ctx.db_path))
    transitions = await asyncio.to_thread(store.record, readings, now)
    for row in transitions:
        _LOGGER.warning("alert %s %s", row["rule"], row["state"])
    return readings, transitions


async def alert_loop(ctx: Any, interval: float = INTERVAL_S) -> None:
    """Evaluate the rules every ``interval`` seconds until cancelled (the admin app lifespan).

    A failed evaluation is logged (type only) and retried at the next tick.
    """
    while True:
        try:
            await evaluate_and_record(ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the loop outlives one bad evaluation
            _LOGGER.error("alert evaluation failed: %s", type(exc).__name__)
        await asyncio.sleep(interval)
