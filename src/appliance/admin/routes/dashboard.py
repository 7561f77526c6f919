"""Admin page routes: the dashboard (``/``), the alert history and ``/api/dashboard/summary``.

Figures come from the agent's call metadata database, opened read-only
(:mod:`appliance.admin.queries`); alerts are evaluated on every dashboard load as well as by
:func:`appliance.admin.alerts.alert_loop` (:mod:`appliance.admin.alerts`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from appliance.admin import alerts, charts, queries
from appliance.admin.auth import Principal, require
from appliance.admin.rbac import Permission
from appliance.admin.web import AdminContext, get_ctx, render

router = APIRouter()
VIEW = require(Permission.VIEW_DASHBOARD)

Bucket = Literal["hour", "day", "week"]
RuleKey = Literal[
    "v2v_p90",
    "v2v_p99",
    "containment_drop",
    "compliance_flags",
    "transfer_failures",
    "wer",
    "audit_verification",
    "audit_verify_failed",
    "model_stage",
]

#: Stage breakdown layers: ``voice_to_voice = endpointing + agent + reply``.
STACKED = (("Endpointing", "endpointing_s"), ("Agent", "agent_s"), ("Reply", "reply_s"))
#: Stages inside the above, charted as lines (P50 of each bucket).
INNER = (("STT", "stt_s"), ("LLM TTFT", "llm_ttft_s"), ("TTS TTFA", "tts_ttfa_s"))


def _load(metrics_db: Path, bucket: str, now: float) -> dict[str, Any]:
    with queries.open_metrics(metrics_db) as conn:
        return {
            "summary": queries.summary(conn, now),
            "series": queries.series(conn, bucket, now),
        }


def transfer_source(series: list[dict[str, Any]]) -> str:
    """``"transfer_results"`` when any bucket of the range has one, else ``"call_scores"``.

    The chart's transfer success line then comes from the agent's transfer results
    (``transfer_result_success_rate``), or, for a range without any, from the post-call
    scores (``transfer_success_rate``), never a mix of the two.
    """
    return "transfer_results" if any(b["transfer_results"] for b in series) else "call_scores"


def _charts(series: list[dict[str, Any]], bucket: str) -> dict[str, Markup]:
    labels = [charts.bucket_label(b["start"], bucket) for b in series]
    transfer_key = (
        "transfer_result_success_rate"
        if transfer_source(series) == "transfer_results"
        else "transfer_success_rate"
    )

    def col(key: str) -> list[float | None]:
        return [b[key] for b in series]

    def stage(key: str) -> list[float | None]:
        return [b["stages"][key] for b in series]

    return {
        "calls": charts.line_chart("Calls", labels, [charts.Series("Calls", col("calls"))]),
        "rates": charts.line_chart(
            "Containment, task completion, escalation",
            labels,
            [
                charts.Series("Containment", col("containment_rate")),
                charts.Series("Task completion", col("task_completion_rate")),
                charts.Series("Escalation", col("escalation_rate")),
                charts.Series("Transfer success", col(transfer_key)),
            ],
            unit="%",
            y_max=1.0,
        ),
        "v2v": charts.line_chart(
            "Voice-to-voice latency",
            labels,
            [charts.Series("P50", col("v2v_p50")), charts.Series("P90", col("v2v_p90"))],
            unit="s",
            thresholds=[(3.5, "P90 warning")],
        ),
        "stages": charts.stacked_bars(
            "Stage breakdown (P50 per stage)",
            labels,
            [charts.Series(name, stage(key)) for name, key in STACKED],
        ),
        "inner": charts.line_chart(
            "STT, LLM time to first token, TTS time to first audio (P50)",
            labels,
            [charts.Series(name, stage(key)) for name, key in INNER],
            unit="s",
        ),
        "stt": charts.line_chart(
            "STT confidence",
            labels,
            [
                charts.Series("P50", [b["stt_confidence"]["p50"] for b in series]),
                charts.Series(
                    "Share of turns below 0.5", [b["stt_confidence"]["low_share"] for b in series]
                ),
            ],
            y_max=1.0,
        ),
        "compliance": charts.line_chart(
            "Compliance-flag rate",
            labels,
            [charts.Series("Flagged calls", col("compliance_flag_rate"))],
            unit="%",
            thresholds=[(0.02, "alert")],
        ),
    }


def _alert_rows(
    readings: list[alerts.Reading], current: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for r in readings:
        last = current.get(r.rule.key)
        rows.append(
            {
                "rule": r.rule,
                "value": r.value,
                "detail": r.detail,
                "firing": last is not None and last["state"] == "fired",
                "since": last["t"] if last else None,
            }
        )
    return rows


@router.get("/", response_class=HTMLResponse)
async def dashboard(
    request: Request,
    bucket: Bucket = "day",
    principal: Principal = Depends(VIEW),  # noqa: B008 - FastAPI dependency
) -> HTMLResponse:
    """The dashboard: headline figures of the last 24 h, charts per bucket, alerts."""
    ctx: AdminContext = get_ctx(request)
    now = time.time()
    status = await alerts.agent_status(ctx, principal.actor)
    readings, _ = await alerts.evaluate_and_record(ctx, now, status, ask_agent=False)
    store = alerts.AlertStore(Path(ctx.db_path))
    current, history = await asyncio.gather(
        asyncio.to_thread(store.current), asyncio.to_thread(store.history, 20)
    )
    try:
        data: dict[str, Any] | None = await asyncio.to_thread(
            _load, Path(ctx.settings.store.metadata_db), bucket, now
        )
    except queries.MetricsUnavailable as exc:
        data, problem = None, str(exc)
    else:
        problem = ""
    return render(
        request,
        "dashboard/index.html",
        bucket=bucket,
        buckets=list(queries.BUCKETS),
        data=data,
        problem=problem,
        chart=_charts(data["series"], bucket) if data else {},
        legends={
            "rates": charts.legend(
                ["Containment", "Task completion", "Escalation", "Transfer success"]
            ),
            "v2v": charts.legend(["P50", "P90"]),
            "stages": charts.legend([name for name, _ in STACKED]),
            "inner": charts.legend([name for name, _ in INNER]),
            "stt": charts.legend(["P50", "Share of turns below 0.5"]),
        },
        transfer_source=transfer_source(data["series"]) if data else "",
        alerts=_alert_rows(readings, current),
        history=history,
        rules=alerts.RULES_BY_KEY,
        agent_reachable=status is not None,
    )


@router.get("/dashboard/alerts", response_class=HTMLResponse)
async def alert_history(
    request: Request,
    rule: RuleKey | None = None,
    principal: Principal = Depends(VIEW),  # noqa: B008 - FastAPI dependency
) -> HTMLResponse:
    """Every recorded alert transition (the last 500), optionally of one rule."""
    ctx = get_ctx(request)
    store = alerts.AlertStore(Path(ctx.db_path))
    history = await asyncio.to_thread(store.history, 500, rule)
    return render(
        request,
        "dashboard/alerts.html",
        history=history,
        rule=rule,
        rules=alerts.RULES_BY_KEY,
    )


@router.get("/api/dashboard/summary")
async def api_summary(
    request: Request,
    bucket: Bucket = "day",
    window_hours: int = Query(24, ge=1, le=24 * 90, description="Headline window, hours."),
    principal: Principal = Depends(VIEW),  # noqa: B008 - FastAPI dependency
) -> dict[str, Any]:
    """Headline figures of the last ``window_hours``, the chart series and the alert states.

    ``available`` is false (and the figures absent) while there is no call metadata yet.
    Latencies are seconds, rates fractions, times epoch seconds; percentiles nearest-rank.
    ``summary.stt_confidence`` is the STT's per-turn confidence (0..1: ``p50``, ``low_share``
    below 0.5); ``summary.transfer`` says its ``source`` (``transfer_results`` or, with none
    in the window, ``call_scores``) (:mod:`appliance.admin.queries`).
    """
    ctx = get_ctx(request)
    now = time.time()
    metrics_db = Path(ctx.settings.store.metadata_db)

    def load() -> dict[str, Any]:
        with queries.open_metrics(metrics_db) as conn:
            return {
                "summary": queries.summary(conn, now, window_hours * 3600.0),
                "series": queries.series(conn, bucket, now),
            }

    store = alerts.AlertStore(Path(ctx.db_path))
    current = await asyncio.to_thread(store.current)
    out: dict[str, Any] = {
        "bucket": bucket,
        "now": now,
        "alerts": [
            {
                "rule": rule.key,
                "severity": rule.severity,
                "threshold": rule.threshold,
                "firing": current.get(rule.key, {}).get("state") == "fired",
                "since": current.get(rule.key, {}).get("t"),
                "value": current.get(rule.key, {}).get("value"),
            }
            for rule in alerts.RULES
        ],
    }
    try:
        out |= {"available": True, **await asyncio.to_thread(load)}
    except queries.MetricsUnavailable:
        out["available"] = False
    return out
