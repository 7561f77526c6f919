"""Quality review store: random samples without repeats, WER counts as jiwer's, summaries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import jiwer
import pytest

from appliance.admin.quality import (
    QualityError,
    caller_turns,
    draw_sample,
    get_sample,
    list_samples,
    open_store,
    period_start,
    record_review,
    wer_summary,
    wer_trend,
)
from appliance.events import CallAnswered, CallEnded
from appliance.metrics.store import CallMetadataStore
from appliance.text.wer import normalise_for_wer, word_edits

DAY = 86400.0
T0 = 1_780_000_000.0  # a fixed epoch second (2026-05-28, a Thursday)

# Real caller turns as the recogniser wrote them and as a reviewer corrected them.
PAIRS = [
    (
        "I'd like to move my appointment to Tuesday the 7th please",
        "i like to move the my appointment tuesday 7 please",
    ),
    ("My date of birth is March 4th 1982", "my date of birth is march four 1982"),
    ("Can I speak to the receptionist", "can i speak to the reception list"),
    ("Yes that's right", "yes that's right"),
    ("Cancel it", ""),
]


def _metrics(tmp_path: Path, n: int, *, t0: float = T0, ended: bool = True) -> Path:
    db = tmp_path / "calls.sqlite"
    store = CallMetadataStore(db)
    for i in range(n):
        store.on_event(CallAnswered(f"call-{i:03d}", codec="PCMU", t=t0 + i * 60))
        if ended:
            store.on_event(
                CallEnded(
                    f"call-{i:03d}",
                    disposition="caller_hangup",
                    duration_s=30.0,
                    t=t0 + i * 60 + 30,
                )
            )
    store.close()
    return db


def test_draw_is_uniform_without_repeats_and_records_who(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path, 30)
    conn = open_store(tmp_path / "admin.sqlite")
    first = draw_sample(conn, metrics, 10, since=T0, seed=1, actor="user:3", now=T0 + DAY)
    second = draw_sample(conn, metrics, 10, since=T0, seed=1, actor="user:4", now=T0 + DAY)
    third = draw_sample(conn, metrics, 50, since=T0, seed=1, actor="user:4")
    ids = [s.call_id for s in first + second + third]
    assert len(first) == len(second) == 10 and len(third) == 10  # only 10 left
    assert len(set(ids)) == 30  # every call exactly once
    assert draw_sample(conn, metrics, 5, since=T0) == []  # nothing left
    assert {s.drawn_by for s in first} == {"user:3"} and first[0].drawn_at == T0 + DAY
    assert all(s.reviewed_at is None and s.wer is None for s in list_samples(conn))
    # The draw is random: first sample is not simply the first ten calls in order.
    assert sorted(s.call_id for s in first) != [f"call-{i:03d}" for i in range(10)]


def test_draw_respects_since_and_skips_unended_calls(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path, 10)
    store = CallMetadataStore(metrics)
    store.on_event(CallAnswered("live", t=T0 + 5000))  # still in progress
    store.close()
    conn = open_store(tmp_path / "admin.sqlite")
    got = draw_sample(conn, metrics, 100, since=T0 + 5 * 60, seed=2)
    assert sorted(s.call_id for s in got) == [f"call-{i:03d}" for i in range(5, 10)]
    with pytest.raises(QualityError):
        draw_sample(conn, metrics, 0, since=T0)
    assert draw_sample(conn, tmp_path / "absent.sqlite", 3, since=T0) == []


def test_seeded_draws_are_reproducible(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path, 20)
    a = draw_sample(open_store(tmp_path / "a.sqlite"), metrics, 5, since=T0, seed=9)
    b = draw_sample(open_store(tmp_path / "b.sqlite"), metrics, 5, since=T0, seed=9)
    c = draw_sample(open_store(tmp_path / "c.sqlite"), metrics, 5, since=T0, seed=10)
    assert [s.call_id for s in a] == [s.call_id for s in b]
    assert {s.call_id for s in a} != {s.call_id for s in c}


@pytest.mark.parametrize(("reference", "hypothesis"), PAIRS)
def test_word_edits_equal_jiwer(reference: str, hypothesis: str) -> None:
    edits = word_edits(reference, hypothesis)
    ref, hyp = normalise_for_wer(reference), normalise_for_wer(hypothesis)
    if hyp:
        out = jiwer.process_words(ref, hyp)
        assert (edits.substitutions, edits.deletions, edits.insertions, edits.hits) == (
            out.substitutions,
            out.deletions,
            out.insertions,
            out.hits,
        )
        assert edits.errors / edits.reference_words == pytest.approx(jiwer.wer(ref, hyp))
    else:  # jiwer refuses an empty hypothesis; every reference word is a deletion
        assert (edits.deletions, edits.insertions, edits.hits) == (len(ref.split()), 0, 0)


def test_review_keeps_counts_only_and_summarises(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path, 3)
    admin = tmp_path / "admin.sqlite"
    conn = open_store(admin)
    samples = draw_sample(conn, metrics, 3, since=T0, seed=0, actor="user:1")
    transcript = {
        "turns": [
            {"t": T0 + 1, "speaker": "agent", "text": "Hello, this is an automated assistant."},
            *(
                {"t": T0 + 2 + i, "speaker": "caller", "text": hyp}
                for i, (_, hyp) in enumerate(PAIRS)
            ),
        ]
    }
    turns = caller_turns(transcript)
    assert [h for _, h in turns] == [h for _, h in PAIRS]
    refs = [r for r, _ in PAIRS]
    record_review(conn, samples[0].id, turns, refs, actor="user:2", now=T0 + DAY)
    with pytest.raises(QualityError):
        record_review(conn, samples[1].id, turns, refs[:2])
    with pytest.raises(QualityError):
        record_review(conn, 9999, turns, refs)

    # No text is stored anywhere in the admin database.
    dump = "\n".join(sqlite3.connect(admin).iterdump()).lower()
    for ref, hyp in PAIRS:
        for text in (ref, hyp):
            if len(text) > 8:
                assert text.lower() not in dump

    expected = jiwer.wer(
        [normalise_for_wer(r) for r, _ in PAIRS],
        [normalise_for_wer(h) or "<empty>" for _, h in PAIRS],
    )
    # jiwer's "<empty>" placeholder is one substitution where we count one deletion: same total.
    summary = wer_summary(admin, since=T0)
    assert summary["calls"] == 1
    assert summary["words"] == sum(len(normalise_for_wer(r).split()) for r, _ in PAIRS)
    assert summary["wer"] == pytest.approx(expected)
    assert get_sample(conn, samples[0].id).wer == pytest.approx(expected)

    # The window: a later review counts only from its own time on.
    perfect = [(T0, r) for r in refs]
    record_review(conn, samples[1].id, perfect, refs, now=T0 + 8 * DAY)
    assert wer_summary(admin, since=T0 + 2 * DAY) == {
        "wer": 0.0,
        "calls": 1,
        "words": summary["words"],
    }
    both = wer_summary(admin, since=T0)
    assert both["calls"] == 2 and both["wer"] == pytest.approx(expected / 2)
    assert wer_summary(admin, since=T0 + 9 * DAY) == {"wer": None, "calls": 0, "words": 0}
    assert wer_summary(tmp_path / "none.sqlite", since=0) == {"wer": None, "calls": 0, "words": 0}

    trend = wer_trend(conn, since=T0, period="week", until=T0 + 9 * DAY)
    assert [p["calls"] for p in trend] == [1, 1]
    assert trend[0]["start"] == period_start(T0, "week")
    assert trend[0]["wer"] == pytest.approx(expected) and trend[1]["wer"] == 0.0
    daily = wer_trend(conn, since=T0, period="day", until=T0 + 9 * DAY)
    assert len(daily) == 10 and sum(p["calls"] for p in daily) == 2
    with pytest.raises(QualityError):
        wer_trend(conn, since=T0, period="month")


def test_caller_turns_rejects_malformed_results() -> None:
    with pytest.raises(QualityError):
        caller_turns({"events": []})
    assert caller_turns({"turns": [{"speaker": "caller", "text": "hi"}, "junk"]}) == [(0.0, "hi")]


def _scored(store: CallMetadataStore, call_id: str, t: float, contained: bool, **kw: bool) -> None:
    from appliance.events import CallScored

    store.record_score(
        call_id,
        CallScored(
            call_id,
            outcome="resolved" if contained else "transferred",
            contained=contained,
            transfer_appropriate=None if contained else True,
            disclosure_ok=kw.get("disclosure_ok", True),
            identity_before_phi_ok=True,
            no_card_number_ok=True,
            sentiment=0.0,
            judge="rules",
            t=t,
        ),
    )


def test_weekly_digest_marks_breaches(tmp_path: Path) -> None:
    from appliance.admin.quality_digest import weekly_digest

    week0 = period_start(T0, "week")
    metrics = tmp_path / "calls.sqlite"
    store = CallMetadataStore(metrics)
    for i in range(10):  # week 0: 80 % contained, no flags
        _scored(store, f"a{i}", week0 + 3600 * (i + 1), contained=i < 8)
    for i in range(10):  # week 1: 60 % contained, one disclosure failure (10 %)
        _scored(store, f"b{i}", week0 + 7 * DAY + 3600 * (i + 1), i < 6, disclosure_ok=i != 0)
    store.close()
    admin = tmp_path / "admin.sqlite"
    conn = open_store(admin)
    conn.execute("INSERT INTO quality_samples (call_id, drawn_at, drawn_by) VALUES ('b1', 0, '')")
    sid = int(conn.execute("SELECT id FROM quality_samples").fetchone()[0])
    conn.commit()
    record_review(
        conn,
        sid,
        [(0.0, "can i speak to the reception list")],
        ["Can I speak to the receptionist"],
        now=week0 + 8 * DAY,
    )

    digest = weekly_digest(conn, metrics, weeks=3, now=week0 + 9 * DAY)
    assert [w.start for w in digest] == [week0 + 7 * DAY, week0, week0 - 7 * DAY]
    latest, before, empty = digest
    assert (before.calls, before.containment_rate, before.compliance_flag_rate) == (10, 0.8, 0.0)
    assert before.escalation_rate == pytest.approx(0.2) and before.breaches == []
    assert latest.containment_rate == pytest.approx(0.6)
    assert latest.compliance_flag_rate == pytest.approx(0.1)
    assert latest.wer == pytest.approx(2 / 6) and latest.reviewed_calls == 1
    assert set(latest.breaches) == {"wer", "compliance_flag_rate", "containment_rate"}
    assert empty.calls == 0 and empty.containment_rate is None and empty.breaches == []
    with pytest.raises(ValueError):
        weekly_digest(conn, metrics, weeks=0)
