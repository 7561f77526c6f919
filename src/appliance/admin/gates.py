"""Phased-rollout gates computed from the box's own call metadata (read only).

A risk tier may be switched on only when the tier below it meets its gate (issue 12,
"Workflows and phased rollout"). Enabling ``low`` needs no gate; enabling ``medium`` needs the
**low** gate; enabling ``high`` needs the **medium** gate:

========  ====================================================================================
gate      criteria, over the calls scored in the last 7 days (a rolling window)
========  ====================================================================================
low       containment >= 70 %; compliance-flag rate < 2 %; warm-transfer success > 95 %
medium    containment >= 60 %; escalation-to-complaint conversion < 5 %
========  ====================================================================================

The thresholds are the issue's. Every figure comes from ``call_scores`` of the call metadata
database (:mod:`appliance.metrics.store`, one row per call, written from
:class:`~appliance.events.CallScored`), opened read only (``file:...?mode=ro``):

* **containment rate** = calls with ``contained`` / scored calls (no transfer to a person
  succeeded; :func:`appliance.policy.scoring.contained_of`).
* **compliance-flag rate** = calls with at least one compliance flag false
  (``disclosure_ok``, ``identity_before_phi_ok``, ``no_card_number_ok``) / scored calls.
* **warm-transfer success** = calls with a transfer attempt whose transfer succeeded / calls
  with a transfer attempt. A transfer was attempted when ``transfer_appropriate`` is not NULL
  (the scorer sets it exactly when a ``TransferAttempted`` happened); it succeeded when the
  call is not ``contained`` (a ``TransferResult`` with ``ok``). Whether the CTI webhook got
  the context payload is not in the metrics database, so it does not count here; the
  checklist's test transfer checks the payload.
* **escalation-to-complaint conversion** = escalated calls whose caller sentiment is strongly
  negative / escalated calls. The appliance records no complaint as such; the nearest
  recorded signal is the call's mean caller sentiment (VADER compound,
  :mod:`appliance.text.sentiment`) at or below :data:`COMPLAINT_SENTIMENT` (-0.5, the
  "strongly negative" cut the live frustration trigger uses). A call is escalated when a
  transfer was attempted or its outcome is ``transferred``.

The window holds every scored call; ``call_scores`` does not record which workflow (and so
which tier) a call ran, so the gate of a tier is measured on all calls while that tier and
those below it are enabled. A criterion whose denominator is 0 (no calls, no transfers) has no
value and is **not met**: a gate fails closed without data.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

#: Length of the rolling window, seconds (7 days).
WINDOW_S = 7 * 24 * 3600.0

#: Mean caller sentiment at or below which an escalated call counts as a complaint; the value
#: of :data:`appliance.text.sentiment.STRONG_NEGATIVE` (kept here so the admin process does
#: not load the sentiment lexicon).
COMPLAINT_SENTIMENT = -0.5

#: Tier -> the gate that must be met before it may be enabled.
REQUIRED_GATE: dict[str, str | None] = {"low": None, "medium": "low", "high": "medium"}

Op = Literal[">=", ">", "<"]


@dataclass(frozen=True)
class Criterion:
    """One condition of a gate.

    Attributes:
        key: Machine name, e.g. ``"containment_rate"``.
        label: Words for the page.
        value: The measured rate (0..1), or ``None`` without data.
        op: ``">="``, ``">"`` or ``"<"``.
        threshold: The bound (0..1).
        numerator: Calls counted in the numerator.
        denominator: Calls counted in the denominator.
        met: Whether ``value op threshold`` holds (False without data).
        definition: How the value is computed.
    """

    key: str
    label: str
    value: float | None
    op: Op
    threshold: float
    numerator: int
    denominator: int
    met: bool
    definition: str


@dataclass(frozen=True)
class Gate:
    """A tier's gate over one window.

    Attributes:
        tier: ``"low"`` or ``"medium"``.
        criteria: Its conditions.
        calls: Scored calls in the window.
        window_start: Epoch seconds.
        window_end: Epoch seconds.
        met: All criteria met.
        source: ``"ok"``, or why there is no data (``"no metrics database"``, ...).
    """

    tier: str
    criteria: tuple[Criterion, ...]
    calls: int
    window_start: float
    window_end: float
    met: bool
    source: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able view."""
        return asdict(self)


_DEFINITIONS = {
    "containment_rate": "calls handled end to end without a successful transfer / scored calls",
    "compliance_flag_rate": (
        "calls with a failed disclosure, identity-before-PHI or card-number check / scored calls"
    ),
    "transfer_success_rate": (
        "calls whose transfer to a person succeeded / calls with a transfer attempt"
    ),
    "complaint_rate": (
        "escalated calls with mean caller sentiment <= -0.5 (strongly negative) / escalated calls"
    ),
}

#: tier -> (key, label, op, threshold); the issue's thresholds.
GATES: dict[str, tuple[tuple[str, str, Op, float], ...]] = {
    "low": (
        ("containment_rate", "Containment", ">=", 0.70),
        ("compliance_flag_rate", "Compliance-flag rate", "<", 0.02),
        ("transfer_success_rate", "Warm-transfer success", ">", 0.95),
    ),
    "medium": (
        ("containment_rate", "Containment", ">=", 0.60),
        ("complaint_rate", "Escalation-to-complaint conversion", "<", 0.05),
    ),
}

_SQL = """
SELECT COUNT(*),
       COALESCE(SUM(contained), 0),
       COALESCE(SUM(disclosure_ok = 0 OR identity_before_phi_ok = 0 OR no_card_number_ok = 0), 0),
       COUNT(transfer_appropriate),
       COALESCE(SUM(transfer_appropriate IS NOT NULL AND contained = 0), 0),
       COALESCE(SUM(transfer_appropriate IS NOT NULL OR outcome = 'transferred'), 0),
       COALESCE(SUM((transfer_appropriate IS NOT NULL OR outcome = 'transferred')
                    AND sentiment <= ?), 0)
FROM call_scores
WHERE scored_at >= ? AND scored_at <= ?
"""


def window_counts(
    db_path: Path, now: float, window_s: float = WINDOW_S
) -> tuple[dict[str, int], str]:
    """Count the calls each rate needs over ``[now - window_s, now]``.

    Args:
        db_path: The call metadata database (``[store] metadata_db``); opened read only.
        now: End of the window, epoch seconds.
        window_s: Window length, seconds.

    Returns:
        ``(counts, source)``: ``counts`` has ``calls``, ``contained``, ``flagged``,
        ``transfers``, ``transfers_ok``, ``escalated``, ``complaints`` (all 0 without data);
        ``source`` is ``"ok"`` or why nothing could be read (the database is missing, has no
        scores table, or cannot be opened). Never raises for a missing or unreadable file.
    """
    keys = ("calls", "contained", "flagged", "transfers", "transfers_ok", "escalated", "complaints")
    empty = dict.fromkeys(keys, 0)
    if not db_path.is_file():
        return empty, "no metrics database"
    uri = f"file:{quote(str(db_path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            row = conn.execute(_SQL, [COMPLAINT_SENTIMENT, now - window_s, now]).fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return empty, "no call scores recorded"
        return empty, "metrics database unreadable"
    except sqlite3.DatabaseError:
        return empty, "metrics database unreadable"
    return {k: int(v or 0) for k, v in zip(keys, row, strict=True)}, "ok"


def rates(counts: dict[str, int]) -> dict[str, tuple[int, int]]:
    """The ``(numerator, denominator)`` of each rate a gate uses."""
    return {
        "containment_rate": (counts["contained"], counts["calls"]),
        "compliance_flag_rate": (counts["flagged"], counts["calls"]),
        "transfer_success_rate": (counts["transfers_ok"], counts["transfers"]),
        "complaint_rate": (counts["complaints"], counts["escalated"]),
    }


def _holds(value: float, op: Op, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold
    if op == ">":
        return value > threshold
    return value < threshold


def evaluate(tier: str, counts: dict[str, int], source: str, window: tuple[float, float]) -> Gate:
    """Judge one tier's gate on window counts (see :func:`window_counts`).

    Raises:
        KeyError: ``tier`` has no gate (only ``low`` and ``medium`` have one).
    """
    fractions = rates(counts)
    criteria = []
    for key, label, op, threshold in GATES[tier]:
        num, den = fractions[key]
        value = num / den if den else None
        criteria.append(
            Criterion(
                key=key,
                label=label,
                value=value,
                op=op,
                threshold=threshold,
                numerator=num,
                denominator=den,
                met=value is not None and _holds(value, op, threshold),
                definition=_DEFINITIONS[key],
            )
        )
    return Gate(
        tier=tier,
        criteria=tuple(criteria),
        calls=counts["calls"],
        window_start=window[0],
        window_end=window[1],
        met=all(c.met for c in criteria),
        source=source,
    )


def compute_gates(
    db_path: Path, now: float | None = None, window_s: float = WINDOW_S
) -> dict[str, Gate]:
    """Both gates (``low``, ``medium``) over the rolling window ending ``now``.

    Args:
        db_path: The call metadata database.
        now: Epoch seconds; the current time when ``None``.
        window_s: Window length, seconds (default 7 days).
    """
    end = time.time() if now is None else now
    counts, source = window_counts(db_path, end, window_s)
    return {tier: evaluate(tier, counts, source, (end - window_s, end)) for tier in GATES}


def gate_for_enabling(tier: str, db_path: Path, now: float | None = None) -> Gate | None:
    """The gate that must be met before ``tier`` is enabled; ``None`` for ``low``.

    Raises:
        KeyError: Unknown tier.
    """
    needed = REQUIRED_GATE[tier]
    if needed is None:
        return None
    return compute_gates(db_path, now)[needed]
