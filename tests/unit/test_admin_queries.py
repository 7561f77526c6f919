"""The admin page's read-only queries over a metadata DB written by the agent's own store."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.admin import charts, queries
from appliance.events import (
    CallAnswered,
    CallEnded,
    CallScored,
    MediaStats,
    TransferResult,
    TurnLatency,
    WorkflowOutcome,
)
from appliance.metrics.store import CallMetadataStore

NOW = 1_764_000_000.0  # 2025-11-24 16:00 UTC, a Monday


def add_call(
    store: CallMetadataStore,
    call_id: str,
    at: float,
    v2v: list[float],
    *,
    outcome: str = "resolved",
    contained: bool = True,
    transfer_appropriate: bool | None = None,
    disclosure_ok: bool = True,
    scored: bool = True,
    confidence: Sequence[float | None] = (),
    transfers: Sequence[tuple[str, bool, int]] = (),
    workflows: Sequence[tuple[str, str]] = (),
) -> None:
    """Feed one call's events to the store the way the agent does, and score it.

    ``confidence`` gives the turns' STT confidences in order (missing ones ``None``);
    ``transfers`` ``(mode, ok, SIP status)`` results and ``workflows`` ``(workflow, outcome)``
    outcomes are emitted as the agent's :class:`TransferResult` / :class:`WorkflowOutcome`.
    """
    store.on_event(CallAnswered(call_id, t=at, codec="PCMU"))
    for i, (mode, ok, status) in enumerate(transfers):
        store.on_event(
            TransferResult(
                call_id,
                t=at + 30 + i,
                handoff_id=f"h-{call_id}-{i}",
                ok=ok,
                status=status,
                webhook_delivered=True,
                mode=mode,
            )  # fmt: skip
        )
    for i, (workflow, reached) in enumerate(workflows):
        store.on_event(
            WorkflowOutcome(call_id, t=at + 40 + i, workflow=workflow, outcome=reached, intent="x")
        )
    for i, v in enumerate(v2v):
        store.on_event(
            TurnLatency(
                call_id,
                t=at + 5 + i,
                endpointing_s=0.3,
                stt_s=0.2,
                llm_ttft_s=None,
                tts_ttfa_s=0.1,
                voice_to_voice_s=v,
                agent_s=v - 0.5,
                reply_s=0.2,
                listening="free",
                stt_confidence=confidence[i] if i < len(confidence) else None,
            )
        )
    store.on_event(CallEnded(call_id, t=at + 60, disposition="caller_hangup", duration_s=60.0))
    store.on_event(
        MediaStats(
            call_id, rx_frames=3000, rx_dropped=1, tx_frames=2900, tx_underruns=4, callback_errors=0
        )  # fmt: skip
    )
    if scored:
        store.record_score(
            call_id,
            CallScored(
                call_id,
                t=at + 61,
                outcome=outcome,
                contained=contained,
                transfer_appropriate=transfer_appropriate,
                disclosure_ok=disclosure_ok,
                identity_before_phi_ok=True,
                no_card_number_ok=True,
                sentiment=0.25,
                judge="rules",
            ),
        )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "calls.sqlite"
    store = CallMetadataStore(path)
    # Last 24 h: 4 calls. c1..c3 contained; c4 transferred (ok) with a failed-flag disclosure.
    add_call(store, "c1", NOW - 3600 * 2, [1.0, 2.0], confidence=[0.9, 0.45],
             workflows=[("faq", "resolved")])  # fmt: skip
    add_call(store, "c2", NOW - 1800, [3.0, 4.0, 6.0], confidence=[0.8, None, 0.3],
             workflows=[("faq", "resolved"), ("reschedule", "resolved")])  # fmt: skip
    add_call(store, "c3", NOW - 600, [1.5], outcome="message_taken", confidence=[0.95])
    add_call(
        store, "c4", NOW - 300, [2.5], outcome="transferred", contained=False,
        transfer_appropriate=True, disclosure_ok=False, confidence=[0.6],
        transfers=[("attended", False, 480), ("blind", True, 200)],
        workflows=[("reschedule", "transferred")],
    )  # fmt: skip
    # A call with a transfer attempt that failed (still contained), and one unscored.
    add_call(store, "c5", NOW - 200, [], outcome="message_taken", transfer_appropriate=True,
             transfers=[("blind", False, 0)], workflows=[("", "abandoned")])  # fmt: skip
    add_call(store, "c6", NOW - 100, [0.9], scored=False)
    # 2 days ago: outside the 24 h window.
    add_call(store, "old", NOW - 2 * 86400, [9.0])
    store.close()
    return path


def test_percentile_nearest_rank() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert queries.percentile(values, 0.5) == 5.0
    assert queries.percentile(values, 0.9) == 9.0
    assert queries.percentile(values, 0.99) == 10.0
    assert queries.percentile([7.0], 0.01) == 7.0
    assert queries.percentile([], 0.5) is None


def test_bucket_start_aligns_weeks_on_monday() -> None:
    wed = NOW + 2 * 86400 + 5 * 3600
    assert queries.bucket_start(wed, "week") == NOW - 16 * 3600  # Monday 00:00 UTC
    assert queries.bucket_start(NOW + 59, "hour") == NOW
    assert queries.bucket_start(NOW, "day") == NOW - 16 * 3600


def test_metrics_db_opened_read_only(db: Path) -> None:
    with queries.open_metrics(db) as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM calls")
    with queries.open_metrics(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 7


def test_missing_or_corrupt_db_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(queries.MetricsUnavailable), queries.open_metrics(tmp_path / "none"):
        pass
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(queries.MetricsUnavailable), queries.open_metrics(bad) as conn:
        conn.execute("SELECT 1 FROM calls")


def test_summary_rates_and_latency(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        s = queries.summary(conn, NOW)
    assert s["calls"] == 6
    assert s["scored"] == 5
    assert s["containment_rate"] == pytest.approx(4 / 5)
    assert s["task_completion_rate"] == pytest.approx(2 / 5)
    assert s["escalation_rate"] == pytest.approx(1 / 5)
    assert s["compliance_flag_rate"] == pytest.approx(1 / 5)
    assert s["transfer_attempts"] == 2
    assert s["transfer_success_rate"] == pytest.approx(0.5)
    assert s["transfer_failure_rate"] == pytest.approx(0.5)
    # Turns with a confidence: 0.9 0.45 0.8 0.3 0.95 0.6 -> sorted 0.3 0.45 0.6 0.8 0.9 0.95
    assert s["stt_confidence"] == {"turns": 6, "p50": 0.6, "low_share": pytest.approx(2 / 6)}
    # Transfer results (per REFER): 1 ok of 3, from the transfers table.
    t = s["transfer"]
    assert t["source"] == "transfer_results"
    assert (t["transfers"], t["succeeded"]) == (3, 1)
    assert t["success_rate"] == pytest.approx(1 / 3) and t["failure_rate"] == pytest.approx(2 / 3)
    assert t["by_mode"] == {
        "attended": {"transfers": 1, "succeeded": 0, "success_rate": 0.0},
        "blind": {"transfers": 2, "succeeded": 1, "success_rate": 0.5},
    }
    lat = s["latency"]
    # 1.0 2.0 3.0 4.0 6.0 1.5 2.5 0.9 -> sorted 0.9 1.0 1.5 2.0 2.5 3.0 4.0 6.0
    assert lat["turns"] == 8
    assert lat["p50"] == 2.0
    assert lat["p90"] == 6.0


def test_series_buckets_hourly(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        rows = queries.series(conn, "hour", NOW)
    assert len(rows) == 48
    assert rows[-1]["start"] == NOW
    assert rows[-1]["calls"] == 0  # nothing answered at/after NOW
    last_hour = rows[-2]  # NOW-3600..NOW: c2..c6
    assert last_hour["calls"] == 5
    assert last_hour["v2v_p50"] == 2.5  # of 0.9 1.5 2.5 3.0 4.0 6.0
    assert last_hour["stages"]["endpointing_s"] == pytest.approx(0.3)
    assert last_hour["stages"]["llm_ttft_s"] is None
    assert rows[-3]["calls"] == 1 and rows[-3]["containment_rate"] == 1.0
    # c2..c5's turns with a confidence: 0.8 0.3 0.95 0.6; c1's (2 h ago): 0.9 0.45.
    assert last_hour["stt_confidence"] == {"turns": 4, "p50": 0.6, "low_share": 0.25}
    assert rows[-3]["stt_confidence"] == {"turns": 2, "p50": 0.45, "low_share": 0.5}
    assert rows[-4]["stt_confidence"] == {"turns": 0, "p50": None, "low_share": None}
    assert last_hour["transfer_results"] == 3 and last_hour["transfer_results_succeeded"] == 1
    assert last_hour["transfer_result_success_rate"] == pytest.approx(1 / 3)
    assert rows[-3]["transfer_results"] == 0 and rows[-3]["transfer_result_success_rate"] is None
    assert sum(r["calls"] for r in rows) == 6  # "old" is 48 h back: outside the range


def test_series_week_and_bad_bucket(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        weeks = queries.series(conn, "week", NOW)
        assert sum(r["calls"] for r in weeks) == 7
        with pytest.raises(KeyError):
            queries.series(conn, "month", NOW)


def test_list_calls_filters_and_paging(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        rows, total = queries.list_calls(conn, queries.CallFilter(), page=1, per_page=3)
        assert total == 7
        assert [r["call_id"] for r in rows] == ["c6", "c5", "c4"]
        assert rows[0]["score"] is None and rows[0]["outcome"] is None
        assert rows[2]["score"] == (3, 4)  # disclosure failed; transfer appropriate counted
        page3, _ = queries.list_calls(conn, queries.CallFilter(), page=3, per_page=3)
        assert [r["call_id"] for r in page3] == ["old"]
        _, n = queries.list_calls(conn, queries.CallFilter(outcome="message_taken"))
        assert n == 2
        unscored, n = queries.list_calls(conn, queries.CallFilter(outcome="unscored"))
        assert n == 1 and unscored[0]["call_id"] == "c6"
        _, n = queries.list_calls(conn, queries.CallFilter(since=NOW - 700, until=NOW - 250))
        assert n == 2  # c3, c4
        _, n = queries.list_calls(conn, queries.CallFilter(call_id="c"))
        assert n == 6
        _, n = queries.list_calls(conn, queries.CallFilter(call_id="%"))
        assert n == 0  # LIKE wildcards are literal
        assert queries.dispositions(conn) == ["caller_hangup"]


def test_list_calls_workflows_and_filter(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        rows, _ = queries.list_calls(conn, queries.CallFilter(), per_page=10)
        flows = {r["call_id"]: r["workflows"] for r in rows}
        assert flows["c2"] == [
            {"workflow": "faq", "outcome": "resolved"},
            {"workflow": "reschedule", "outcome": "resolved"},
        ]  # in time order
        assert flows["c5"] == [{"workflow": "", "outcome": "abandoned"}]
        assert flows["c6"] == [] and flows["old"] == []
        rows, n = queries.list_calls(conn, queries.CallFilter(workflow="reschedule"))
        assert n == 2 and [r["call_id"] for r in rows] == ["c4", "c2"]
        _, n = queries.list_calls(conn, queries.CallFilter(workflow="faq", since=NOW - 3600))
        assert n == 1  # c2
        _, n = queries.list_calls(conn, queries.CallFilter(workflow="nope"))
        assert n == 0
        assert queries.workflows(conn) == ["faq", "reschedule"]  # no "" (outside a workflow)
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM calls c WHERE c.call_id IN "
                "(SELECT call_id FROM call_workflows WHERE workflow = ?)",
                ["faq"],
            )
        )
        assert "idx_call_workflows_workflow" in plan


def test_transfer_rates_fall_back_to_scores_without_results(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    store = CallMetadataStore(path)
    add_call(store, "a", NOW - 600, [1.0], outcome="transferred", contained=False,
             transfer_appropriate=True)  # fmt: skip
    add_call(store, "b", NOW - 500, [1.0], outcome="message_taken", transfer_appropriate=True)
    # A transfer result outside the window does not count for it.
    add_call(store, "c", NOW - 3 * 86400, [1.0], transfers=[("blind", True, 202)])
    store.close()
    with queries.open_metrics(path) as conn:
        t = queries.transfer_rates(conn, NOW - 86400, NOW)
        assert t["source"] == "call_scores" and t["by_mode"] == {}
        assert (t["transfers"], t["succeeded"], t["failure_rate"]) == (2, 1, 0.5)
        t = queries.transfer_rates(conn, NOW - 4 * 86400, NOW)
        assert t["source"] == "transfer_results" and t["transfers"] == 1
        assert t["success_rate"] == 1.0


def test_a_database_before_007_reads_as_not_recorded(tmp_path: Path) -> None:
    """An agent that predates 007..009 wrote it: the new figures read as empty, not an error."""
    path = tmp_path / "calls.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE calls (call_id TEXT PRIMARY KEY, answered_at REAL, disclosure_at REAL,"
        " ended_at REAL, duration_s REAL, disposition TEXT, codec TEXT, turns INTEGER,"
        " barge_ins INTEGER);"
        "CREATE TABLE turn_latency (call_id TEXT, t REAL, endpointing_s REAL, stt_s REAL,"
        " llm_ttft_s REAL, tts_ttfa_s REAL, voice_to_voice_s REAL, agent_s REAL, reply_s REAL,"
        " listening TEXT);"
        "CREATE TABLE call_scores (call_id TEXT PRIMARY KEY, scored_at REAL, outcome TEXT,"
        " contained INTEGER, transfer_appropriate INTEGER, disclosure_ok INTEGER,"
        " identity_before_phi_ok INTEGER, no_card_number_ok INTEGER, sentiment REAL, judge TEXT);"
        "CREATE TABLE call_media (call_id TEXT PRIMARY KEY, rx_frames INTEGER,"
        " rx_dropped INTEGER, tx_frames INTEGER, tx_underruns INTEGER, callback_errors INTEGER);"
    )
    conn.execute("INSERT INTO calls (call_id, answered_at, turns) VALUES ('x', ?, 1)", [NOW - 60])
    conn.execute(
        "INSERT INTO turn_latency (call_id, t, voice_to_voice_s) VALUES ('x', ?, 1.0)", [NOW - 50]
    )
    conn.commit()
    conn.close()
    with queries.open_metrics(path) as conn:
        s = queries.summary(conn, NOW)
        assert s["stt_confidence"]["turns"] == 0 and s["transfer"]["source"] == "call_scores"
        rows = queries.series(conn, "day", NOW + 1)  # a fresh cache key's "now"
        assert rows[-1]["stt_confidence"]["p50"] is None
        listed, total = queries.list_calls(conn, queries.CallFilter())
        assert total == 1 and listed[0]["workflows"] == []
        assert queries.list_calls(conn, queries.CallFilter(workflow="faq")) == ([], 0)
        assert queries.workflows(conn) == []
        d = queries.call_detail(conn, "x")
        assert d is not None and d["turn_rows"][0]["stt_confidence"] is None
        assert d["transfers"] == [] and d["workflows"] == []


def test_call_detail(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        d = queries.call_detail(conn, "c4")
        assert queries.call_detail(conn, "nope") is None
    assert d is not None
    assert d["flags"] == {
        "disclosure_ok": False,
        "identity_before_phi_ok": True,
        "no_card_number_ok": True,
        "transfer_appropriate": True,
    }
    assert d["media"]["tx_underruns"] == 4
    assert [t["voice_to_voice_s"] for t in d["turn_rows"]] == [2.5]
    assert d["turn_rows"][0]["agent_s"] == pytest.approx(2.0)
    assert d["turn_rows"][0]["stt_confidence"] == 0.6
    assert d["workflows"] == [{"workflow": "reschedule", "outcome": "transferred"}]
    assert [(x["mode"], x["ok"], x["status"]) for x in d["transfers"]] == [
        ("attended", False, 480),
        ("blind", True, 200),
    ]


def test_indexes_used_for_windows(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT t FROM turn_latency WHERE t >= ? AND t < ?", [0, 1]
            )
        )
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM turn_latency WHERE call_id = ?", ["c1"]
            )
        )
        assert "INDEX" in plan


def test_charts_render_escaped_svg() -> None:
    svg = charts.line_chart(
        "P90 <test>",
        ["a", "b", "c"],
        [charts.Series("v2v & co", [1.0, None, 3.0])],
        unit="s",
        thresholds=[(3.5, "warning")],
    )
    assert svg.startswith("<svg") and "<test>" not in svg and "&lt;test&gt;" in svg
    assert "polyline" not in svg  # a gap splits the line into single points
    assert svg.count("<circle") == 2
    assert 'class="threshold"' in svg and "style=" not in svg
    bars = charts.stacked_bars(
        "stages", ["a"], [charts.Series("x", [1.0]), charts.Series("y", [0.5])]
    )
    assert bars.count("<rect") == 2
    assert charts.nice_max(3.7) == 5.0 and charts.nice_max(0) == 1.0
    assert charts.nice_max(0.021) == 0.05


def test_series_serves_settled_buckets_from_memory(db: Path) -> None:
    with queries.open_metrics(db) as conn:
        before = queries.series(conn, "hour", NOW)
    rw = sqlite3.connect(db)
    with rw:  # one call in a settled bucket (3 h ago) and one in the open bucket
        rw.execute("INSERT INTO calls (call_id, answered_at) VALUES ('late', ?)", [NOW - 3 * 3600])
        rw.execute("INSERT INTO calls (call_id, answered_at) VALUES ('new', ?)", [NOW + 10])
    rw.close()
    with queries.open_metrics(db) as conn:
        after = queries.series(conn, "hour", NOW + 20)
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT call_id FROM calls c "
                "ORDER BY c.answered_at DESC, c.rowid DESC LIMIT 50 OFFSET 1000"
            )
        )
    assert after[-4]["calls"] == before[-4]["calls"] == 0  # settled: computed once
    assert after[-1]["calls"] == 1  # the open bucket is read each time
    assert "TEMP B-TREE" not in plan  # the call list pages in index order
