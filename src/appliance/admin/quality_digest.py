"""The quality reviewer's weekly digest: containment, compliance flags, escalations and WER.

Per ISO week (UTC, Monday to Monday), from the agent's call metadata database (opened
read-only; ``call_scores`` by ``scored_at``) and the quality review's corrections
(:mod:`appliance.admin.quality`, by review time):

- containment rate: contained / scored calls;
- compliance-flag rate: scored calls failing any compliance check (AI disclosure, identity
  before PHI, no card number spoken) / scored calls;
- escalation rate: scored calls with outcome ``transferred`` / scored calls (the definition of
  :meth:`appliance.metrics.store.CallMetadataStore.rates`);
- WER: corpus WER of that week's reviewed turns.

Breaches marked for the owner (thresholds of issue 12's launch framework): WER above 8 %;
compliance-flag rate above 2 %; containment below 70 % (the low-risk tier's phase gate), or
more than 5 points below the previous week's (the containment-drop alert, read per week).
Escalation rate has no threshold of its own and is shown without a mark.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.admin.quality import WER_ALERT, next_period, period_start, wer_between

#: Compliance-flag rate above which a week is marked (issue 12: "above 2% in 24 h").
COMPLIANCE_FLAG_MAX = 0.02
#: Containment below which a week is marked (issue 12, low tier gate: ">= 70% over 7 days").
CONTAINMENT_MIN = 0.70
#: Week-on-week containment drop (fraction) that is marked (issue 12: "more than 5 points").
CONTAINMENT_DROP = 0.05


@dataclass
class DigestWeek:
    """One week of the digest; a rate is ``None`` without calls (or reviewed words)."""

    start: float
    calls: int
    containment_rate: float | None
    compliance_flag_rate: float | None
    escalation_rate: float | None
    wer: float | None
    reviewed_calls: int
    breaches: list[str] = field(default_factory=list)


def _scores(metrics_db: Path, start: float, end: float) -> tuple[int, int, int, int]:
    """(calls, contained, flagged, transferred) scored in ``[start, end)``."""
    path = Path(metrics_db)
    if not path.exists():
        return 0, 0, 0, 0
    conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT COUNT(*), SUM(contained), "
            "SUM(disclosure_ok = 0 OR identity_before_phi_ok = 0 OR no_card_number_ok = 0), "
            "SUM(outcome = 'transferred') FROM call_scores WHERE scored_at >= ? AND scored_at < ?",
            [start, end],
        ).fetchone()
    except sqlite3.OperationalError:  # no call_scores table yet
        return 0, 0, 0, 0
    finally:
        conn.close()
    return tuple(int(x or 0) for x in row)  # type: ignore[return-value]


def weekly_digest(
    conn: sqlite3.Connection, metrics_db: Path, weeks: int = 8, now: float | None = None
) -> list[DigestWeek]:
    """The last ``weeks`` ISO weeks (the current one included), newest first, breaches marked.

    Args:
        conn: The admin database (quality migrations applied).
        metrics_db: The agent's call metadata database (read-only).
        weeks: How many weeks, 1..52.
        now: The current time, epoch seconds.

    Raises:
        ValueError: ``weeks`` out of range.
    """
    if not 1 <= weeks <= 52:
        raise ValueError("weeks must be 1..52")
    now = time.time() if now is None else now
    first = period_start(now - (weeks - 1) * 7 * 86400, "week")
    out: list[DigestWeek] = []
    start = first
    previous: float | None = None
    while start <= now:
        end = next_period(start, "week")
        calls, contained, flagged, transferred = _scores(metrics_db, start, end)
        quality = wer_between(conn, start, end)

        def rate(n: int, calls: int = calls) -> float | None:
            return n / calls if calls else None

        week = DigestWeek(
            start=start,
            calls=calls,
            containment_rate=rate(contained),
            compliance_flag_rate=rate(flagged),
            escalation_rate=rate(transferred),
            wer=quality["wer"],
            reviewed_calls=int(quality["calls"]),
        )
        if week.wer is not None and week.wer > WER_ALERT:
            week.breaches.append("wer")
        if (
            week.compliance_flag_rate is not None
            and week.compliance_flag_rate > COMPLIANCE_FLAG_MAX
        ):
            week.breaches.append("compliance_flag_rate")
        if week.containment_rate is not None and (
            week.containment_rate < CONTAINMENT_MIN
            or (previous is not None and previous - week.containment_rate > CONTAINMENT_DROP)
        ):
            week.breaches.append("containment_rate")
        if week.containment_rate is not None:
            previous = week.containment_rate
        out.append(week)
        start = end
    return out[::-1]
