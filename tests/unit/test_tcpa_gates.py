"""The TCPA gates (issue 15, Deliver 1-3 and the gate of 4): consent, DNC, calling window.

Real SQLite files, the real ``phonenumbers`` metadata and IANA tz data, a frozen clock passed
as the dial instant, and a real encrypted audit log for the events. Numbers are 555-01xx
(reserved for fiction) in real area codes.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from appliance.audit import envelope
from appliance.audit.checkpoint import load_or_create_signing_key
from appliance.audit.observer import AUDITED, AuditObserver, to_entry
from appliance.audit.store import SCOPE_CONSENT, AuditLog, key_scope
from appliance.events import CONTENT_FIELDS, ConsentRecorded, DialRefused, Event
from appliance.policy.calling_window import CallingWindow, callee_zones
from appliance.policy.consent import ALL, ConsentError, ConsentStore, ImportRejected
from appliance.policy.dnc import DncList
from appliance.policy.outbound_gate import REASONS, OutboundGate
from appliance.policy.phone import InvalidNumber, normalize_number

NY = "+1 212 555 0134"
CHICAGO = "+1 312 555 0134"
DENVER = "+1 303 555 0134"
SF = "+1 415 555 0134"
ALASKA = "+1 907 555 0134"  # phonenumbers: America/Adak and America/Anchorage
HAWAII = "+1 808 555 0134"
PHOENIX = "+1 602 555 0134"  # Arizona keeps MST all year
IDAHO = "+1 208 555 0134"  # phonenumbers: America/Boise and America/Los_Angeles
TOLL_FREE = "+1 800 555 0134"  # every North American zone
INTL_FREEPHONE = "+800 1234 5678"  # valid, but no zone (Etc/Unknown)

ALL_US = (NY, CHICAGO, DENVER, SF, ALASKA, HAWAII, PHOENIX, IDAHO, TOLL_FREE)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


class Gates:
    """Consent, DNC and gate on real files in ``tmp_path``; every event collected."""

    def __init__(self, tmp_path: Path, window: CallingWindow | None = None) -> None:
        self.events: list[Event] = []
        self.dnc = DncList(tmp_path / "dnc.sqlite", self.events.append)
        self.consent = ConsentStore(tmp_path / "consent.sqlite", self.events.append, dnc=self.dnc)
        self.gate = OutboundGate(
            self.consent, self.dnc, window or CallingWindow(), self.events.append
        )

    def grant(self, number: str, scope: str = "reminders") -> None:
        self.consent.capture(number, scope, method="written", source="admin", evidence="form 12")

    def refusals(self) -> list[tuple[str, str]]:
        return [(e.phone_number, e.reason) for e in self.events if isinstance(e, DialRefused)]


@pytest.fixture
def gates(tmp_path: Path) -> Gates:
    return Gates(tmp_path)


# A summer weekday at 12:30 UTC: 08:30 in New York (EDT), earlier everywhere west of it.
MORNING = utc(2026, 7, 15, 12, 30)
# The next day at 01:30 UTC: 21:30 in New York, 15:30 in Honolulu.
EVENING = utc(2026, 7, 16, 1, 30)


# --- phone numbers ---------------------------------------------------------------------------


def test_numbers_are_normalised_to_e164_and_invalid_ones_refused_clearly() -> None:
    for written in ("(212) 555-0134", "+1 212 555 0134", "1-212-555-0134", "2125550134"):
        assert normalize_number(written) == "+12125550134"
    for bad in ("", "not a number", "555 0134", "+1 555 555 0134", "+1 212 555 01345 99"):
        with pytest.raises(InvalidNumber) as info:
            normalize_number(bad)
        assert info.value.code == "invalid_number"
        assert "0134" not in str(info.value)  # the message never repeats the number


# --- consent ---------------------------------------------------------------------------------


def test_consent_missing_revoked_and_out_of_scope_are_refused(gates: Gates) -> None:
    other = "+1 212 555 0199"
    assert gates.gate.check(NY, "reminders", MORNING).reason == "no-consent"
    gates.grant(NY, "billing")
    decision = gates.gate.check(NY, "reminders", MORNING)
    assert (decision.allowed, decision.reason) == (False, "consent-out-of-scope")
    gates.grant(NY, "reminders")
    assert gates.gate.check(NY, "reminders", MORNING).allowed
    gates.grant(other)
    gates.consent.revoke(other, "reminders", method="dtmf", source="inbound-call")
    assert gates.gate.check(other, "reminders", MORNING).reason == "consent-revoked"
    assert gates.refusals() == [
        ("+12125550134", "no-consent"),
        ("+12125550134", "consent-out-of-scope"),
        ("+12125550199", "consent-revoked"),
    ]


def test_revocation_while_a_campaign_runs_stops_the_next_dial(gates: Gates) -> None:
    """The gate caches nothing: the same check again, after a revocation, is refused."""
    gates.grant(CHICAGO)
    noon = utc(2026, 7, 15, 17, 0)
    first = gates.gate.check(CHICAGO, "reminders", noon)
    assert first.allowed and first.reason == "ok"
    assert first.zones == ("America/Chicago",)
    assert first.local_times == ("2026-07-15T12:00-05:00",)
    gates.consent.revoke(
        CHICAGO, "reminders", method="verbal-on-call", source="inbound-call", call_id="c42"
    )
    second = gates.gate.check(CHICAGO, "reminders", noon + timedelta(minutes=2))
    assert (second.allowed, second.reason) == (False, "consent-revoked")
    # An opt-out of everything ("take me off your list") lands on the DNC list too.
    gates.grant(DENVER)
    assert gates.gate.check(DENVER, "reminders", noon).allowed
    gates.consent.revoke(DENVER, ALL, method="keypad-opt-out", source="inbound-call")
    assert gates.gate.check(DENVER, "reminders", noon).reason == "dnc"
    assert gates.dnc.lists_of(DENVER) == ["internal"]
    for scope in ("reminders", "recall", "billing"):
        record = gates.consent.get(DENVER, scope)
        assert record is not None and not record.granted
    # A new consent after a revocation is explicit and stands.
    gates.grant(CHICAGO)
    assert gates.gate.check(CHICAGO, "reminders", noon).allowed


def test_consent_survives_reopening_and_keeps_its_history(tmp_path: Path) -> None:
    events: list[Event] = []
    store = ConsentStore(tmp_path / "consent.sqlite", events.append)
    given = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    store.capture(SF, "recall", method="written", source="admin", evidence="intake form", at=given)
    store.revoke(SF, "recall", method="letter", source="admin")
    store.capture(SF, "recall", method="verbal-on-call", source="inbound-call", call_id="c9")
    store.close()
    again = ConsentStore(tmp_path / "consent.sqlite", events.append)
    record = again.get("(415) 555-0134", "recall")
    assert record is not None and record.granted and record.source == "inbound-call"
    assert record.call_id == "c9"
    history = again.history(SF)
    assert [(h["revoked"], h["method"]) for h in history] == [
        (0, "written"),
        (1, "letter"),
        (0, "verbal-on-call"),
    ]
    assert history[0]["given_t"] == given.timestamp()
    assert (
        sqlite3.connect(tmp_path / "consent.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
        == "wal"
    )


def test_bad_capture_input_is_refused_and_stores_nothing(gates: Gates) -> None:
    with pytest.raises(InvalidNumber):
        gates.consent.capture("+1 555 555 0134", "reminders", method="written", source="admin")
    with pytest.raises(ConsentError, match="scope"):
        gates.consent.capture(NY, "marketing", method="written", source="admin")
    with pytest.raises(ConsentError, match="scope"):
        gates.consent.capture(NY, ALL, method="written", source="admin")  # consent is per scope
    with pytest.raises(ConsentError, match="source"):
        gates.consent.capture(NY, "reminders", method="written", source="email")
    with pytest.raises(ConsentError, match="offset"):
        gates.consent.capture(
            NY, "reminders", method="written", source="admin", at=datetime(2026, 1, 1, 9)
        )
    with pytest.raises(ConsentError, match="future"):
        gates.consent.capture(NY, "reminders", method="written", source="admin", at=utc(2099, 1, 1))
    assert gates.consent.count() == 0 and gates.events == []


def test_an_opt_out_is_recorded_even_when_the_dnc_write_fails(gates: Gates) -> None:
    gates.grant(NY)
    gates.dnc.close()  # the DNC file is gone from under the store
    with pytest.raises(sqlite3.ProgrammingError):
        gates.consent.revoke(NY, ALL, method="dtmf", source="inbound-call")
    record = gates.consent.get(NY, "reminders")
    assert record is not None and not record.granted
    last = gates.events[-1]
    assert isinstance(last, ConsentRecorded) and last.revoked and last.scope == ALL


def test_a_capture_the_audit_sink_refuses_is_not_stored_but_a_revocation_is(
    tmp_path: Path,
) -> None:
    def broken(event: Event) -> None:
        raise OSError("audit path down")

    store = ConsentStore(tmp_path / "consent.sqlite", broken)
    with pytest.raises(OSError):
        store.capture(NY, "reminders", method="written", source="admin")
    assert store.get(NY, "reminders") is None  # no consent without its record
    with pytest.raises(OSError):
        store.revoke(NY, "reminders", method="dtmf", source="inbound-call")
    record = store.get(NY, "reminders")
    assert record is not None and not record.granted  # the opt-out is honoured anyway


ROSTER_BAD = """number,scope,method,timestamp,evidence
+1 212 555 0134,reminders,written,2026-03-01T09:30:00-05:00,intake form 2026-03
(312) 555-0134,recall,written,2026-03-02T10:00:00Z,
+1 555 555 0134,reminders,written,2026-03-01T09:30:00-05:00,bad area code
+1 303 555 0134,marketing,written,2026-03-01T09:30:00-05:00,unknown scope
+1 415 555 0134,reminders,written,2026-03-01 09:30,no offset
+1 808 555 0134,reminders,,2026-03-01T09:30:00-10:00,no method
+1 907 555 0134,reminders,written
+1 212 555 0134,reminders,verbal,2026-03-03T09:30:00-05:00,twice
+1 602 555 0134,billing,written,2099-01-01T00:00:00Z,future
"""


def test_csv_import_reports_bad_rows_by_line_and_imports_nothing(gates: Gates) -> None:
    with pytest.raises(ImportRejected) as info:
        gates.consent.import_csv(ROSTER_BAD)
    assert [line for line, _ in info.value.errors] == [4, 5, 6, 7, 8, 9, 10]
    messages = dict(info.value.errors)
    assert "valid" in messages[4] and "scope" in messages[5] and "offset" in messages[6]
    assert "method" in messages[7] and "fields" in messages[8] and "line 2" in messages[9]
    assert "future" in messages[10]
    assert "555 0134" not in str(info.value) and "5550134" not in str(info.value)
    assert gates.consent.count() == 0 and gates.events == []
    with pytest.raises(ImportRejected) as header:
        gates.consent.import_csv("phone,scope\n+1 212 555 0134,reminders\n")
    assert header.value.errors[0][0] == 1


def test_csv_import_captures_every_row_and_never_regrants_a_revocation(
    gates: Gates, tmp_path: Path
) -> None:
    good = "\n".join(ROSTER_BAD.splitlines()[:3]) + "\n\n"
    roster = tmp_path / "roster.csv"
    roster.write_text(good)
    assert gates.consent.import_csv(roster) == 2
    ny = gates.consent.get(NY, "reminders")
    assert ny is not None and ny.granted and ny.source == "import"
    assert ny.given_t == datetime(2026, 3, 1, 14, 30, tzinfo=UTC).timestamp()
    assert ny.evidence == "intake form 2026-03"
    assert [(e.phone_number, e.scope, e.source) for e in gates.events] == [
        ("+12125550134", "reminders", "import"),
        ("+13125550134", "recall", "import"),
    ]
    gates.consent.revoke(NY, "reminders", method="dtmf", source="inbound-call")
    with pytest.raises(ImportRejected) as info:
        gates.consent.import_csv(roster)
    assert info.value.errors == [(2, "consent for this scope was revoked; not re-granted")]
    assert not gates.consent.get(NY, "reminders").granted  # type: ignore[union-attr]


# --- do-not-call -----------------------------------------------------------------------------


def test_a_number_on_the_dnc_list_is_refused_even_with_consent(
    gates: Gates, tmp_path: Path
) -> None:
    for n in (NY, SF, HAWAII):
        gates.grant(n)
    registry = tmp_path / "registry.txt"
    registry.write_text("# national registry extract\n2125550134\n+1 212 555 0134\n\n")
    assert gates.dnc.import_list(registry, "national-2026-07") == 1
    assert gates.gate.check(NY, "reminders", MORNING).reason == "dnc"
    # A CSV list with a header, first column the number.
    assert gates.dnc.import_list("number,name\n(415) 555-0134,x\n", "billing-system") == 1
    assert gates.gate.check(SF, "reminders", EVENING).reason == "dnc"
    # An explicit opt-out, recorded as a revocation of everything.
    gates.dnc.add_opt_out(HAWAII, method="admin-page", source="admin", evidence="phoned desk")
    assert gates.gate.check(HAWAII, "reminders", EVENING).reason == "dnc"
    assert HAWAII in gates.dnc and "+1 303 555 0134" not in gates.dnc
    opt_out = [e for e in gates.events if isinstance(e, ConsentRecorded) and e.revoked]
    assert [(e.phone_number, e.scope, e.source) for e in opt_out] == [
        ("+18085550134", "all", "admin")
    ]
    # Re-importing a list replaces it; internal opt-outs stay.
    assert gates.dnc.import_list("+1 303 555 0134\n", "national-2026-07") == 1
    assert NY not in gates.dnc and DENVER in gates.dnc and HAWAII in gates.dnc
    assert gates.dnc.count() == 3 and gates.dnc.count("internal") == 1


def test_a_dnc_import_with_bad_lines_changes_nothing(gates: Gates) -> None:
    assert gates.dnc.import_list("+1 212 555 0134\n", "national") == 1
    with pytest.raises(ImportRejected) as info:
        gates.dnc.import_list("+1 303 555 0134\nnonsense\n\n+1 555 555 0134\n", "national")
    assert [line for line, _ in info.value.errors] == [2, 4]
    assert NY in gates.dnc and DENVER not in gates.dnc
    with pytest.raises(ConsentError):
        gates.dnc.import_list("+1 303 555 0134\n", "internal")


def test_dnc_lookup_uses_the_primary_key_index(gates: Gates) -> None:
    gates.dnc.import_list("+1 212 555 0134\n", "national")
    plan = sqlite3.connect(gates.dnc.path).execute(
        "EXPLAIN QUERY PLAN SELECT 1 FROM dnc WHERE number = ? LIMIT 1", ("+12125550134",)
    )
    detail = " ".join(str(row[-1]) for row in plan)
    assert "USING PRIMARY KEY" in detail and "SCAN" not in detail


# --- calling window --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "morning", "evening"),
    [
        (NY, True, False),  # 08:30 EDT / 21:30 EDT
        (CHICAGO, False, True),  # 07:30 CDT / 20:30 CDT
        (DENVER, False, True),  # 06:30 MDT / 19:30 MDT
        (PHOENIX, False, True),  # 05:30 MST / 18:30 MST
        (SF, False, True),  # 05:30 PDT / 18:30 PDT
        (ALASKA, False, True),  # 04:30 AKDT (03:30 Adak) / 17:30 AKDT (16:30 Adak)
        (HAWAII, False, True),  # 02:30 HST / 15:30 HST
    ],
)
def test_window_in_the_callees_zone_with_a_frozen_clock(
    gates: Gates, number: str, morning: bool, evening: bool
) -> None:
    gates.grant(number)
    for instant, allowed in ((MORNING, morning), (EVENING, evening)):
        decision = gates.gate.check(number, "reminders", instant)
        assert decision.allowed is allowed, (number, instant, decision)
        assert decision.reason == ("ok" if allowed else "outside-window")
    assert [r for _, r in gates.refusals()] == ["outside-window"]


@pytest.mark.parametrize(
    ("number", "day_before", "day_of", "instant"),
    [
        # New York springs forward on 2026-03-08: 12:30 UTC is 07:30 EST, then 08:30 EDT.
        (NY, False, True, (3, 7, 12, 30)),
        # Denver springs forward the same day: 14:30 UTC is 07:30 MST, then 08:30 MDT ...
        (DENVER, False, True, (3, 7, 14, 30)),
        # ... while Phoenix keeps MST: 07:30 on both days.
        (PHOENIX, False, False, (3, 7, 14, 30)),
        # New York falls back on 2026-11-01: 01:30 UTC is 21:30 EDT (Oct 31), then 20:30 EST.
        (NY, False, True, (11, 1, 1, 30)),
        # Los Angeles falls back the same day: 04:30 UTC is 21:30 PDT, then 20:30 PST.
        (SF, False, True, (11, 1, 4, 30)),
    ],
)
def test_window_across_dst_transitions(
    gates: Gates, number: str, day_before: bool, day_of: bool, instant: tuple[int, ...]
) -> None:
    gates.grant(number)
    month, day, hour, minute = instant
    first = utc(2026, month, day, hour, minute)
    assert gates.gate.check(number, "reminders", first).allowed is day_before
    assert gates.gate.check(number, "reminders", first + timedelta(days=1)).allowed is day_of


def test_ambiguous_zone_only_the_overlap_counts(gates: Gates) -> None:
    assert callee_zones(normalize_number(IDAHO)) == ("America/Boise", "America/Los_Angeles")
    gates.grant(IDAHO)
    expected = {
        utc(2026, 7, 15, 14, 30): False,  # Boise 08:30, Los Angeles 07:30
        utc(2026, 7, 15, 15, 0): True,  # Boise 09:00, Los Angeles 08:00
        utc(2026, 7, 16, 2, 59): True,  # Boise 20:59, Los Angeles 19:59
        utc(2026, 7, 16, 3, 0): False,  # Boise 21:00, Los Angeles 20:00
    }
    got = {t: gates.gate.check(IDAHO, "reminders", t).allowed for t in expected}
    assert got == expected
    # The patient's address pins the zone: Boise alone allows 08:30 Boise.
    decision = gates.gate.check(IDAHO, "reminders", utc(2026, 7, 15, 14, 30), "America/Boise")
    assert decision.allowed and decision.zones == ("America/Boise",)
    # Alaska's +1 907: Adak is an hour behind Anchorage, so the overlap starts 09:00 Anchorage.
    gates.grant(ALASKA)
    assert not gates.gate.check(ALASKA, "reminders", utc(2026, 7, 15, 16, 30)).allowed
    assert gates.gate.check(ALASKA, "reminders", utc(2026, 7, 15, 17, 30)).allowed


def test_a_toll_free_number_is_dialled_only_where_every_candidate_zone_is_open(
    gates: Gates,
) -> None:
    """+1 800 maps to every North American zone, Guam (UTC+10) to St John's (UTC-3:30).

    The overlap is from 08:00 in Guam (22:00 UTC) to 21:00 in St John's: 23:30 UTC in July
    (NDT, UTC-2:30), 00:30 UTC in January (NST, UTC-3:30), so DST moves its end.
    """
    zones = callee_zones(normalize_number(TOLL_FREE))
    assert len(zones) > 10 and {"Pacific/Guam", "America/St_Johns"} <= set(zones)
    gates.grant(TOLL_FREE)
    common = [time(22, 0), time(22, 15), time(22, 30), time(22, 45), time(23, 0), time(23, 15)]
    january = [time(23, 30), time(23, 45), time(0, 0), time(0, 15)]
    for day, quarters in ((utc(2026, 7, 15), common), (utc(2026, 1, 15), common + january)):
        allowed = set()
        for quarter in range(24 * 4):
            instant = day + timedelta(minutes=15 * quarter)
            decision = gates.gate.check(TOLL_FREE, "reminders", instant)
            assert decision.reason in {"ok", "outside-window"}
            if decision.allowed:
                allowed.add(instant.time())
        assert allowed == set(quarters), (day, sorted(allowed))


def test_unknown_zone_is_refused(gates: Gates) -> None:
    gates.grant(INTL_FREEPHONE)
    assert callee_zones(normalize_number(INTL_FREEPHONE)) == ()
    assert gates.gate.check(INTL_FREEPHONE, "reminders", MORNING).reason == "unknown-timezone"
    gates.grant(NY)
    decision = gates.gate.check(NY, "reminders", MORNING, address_tz="Mars/Olympus_Mons")
    assert (decision.allowed, decision.reason) == (False, "unknown-timezone")


def test_holidays_and_a_stricter_window(tmp_path: Path) -> None:
    july4 = date(2026, 7, 4)
    gates = Gates(tmp_path, CallingWindow(time(9, 0), time(19, 0), frozenset({july4})))
    gates.grant(NY)
    gates.grant(HAWAII)
    # 10:00 in New York on the 4th: a holiday there.
    assert gates.gate.check(NY, "reminders", utc(2026, 7, 4, 14, 0)).reason == "holiday"
    # 01:30 UTC on the 5th is still the 4th (15:30) in Honolulu, the callee's calendar counts.
    assert gates.gate.check(HAWAII, "reminders", utc(2026, 7, 5, 1, 30)).reason == "holiday"
    assert gates.gate.check(NY, "reminders", utc(2026, 7, 5, 14, 0)).allowed
    # 08:30 is inside TCPA's hours but outside this practice's 09:00-19:00.
    assert gates.gate.check(NY, "reminders", MORNING).reason == "outside-window"
    assert gates.gate.check(NY, "reminders", utc(2026, 7, 15, 22, 59)).allowed  # 18:59
    assert gates.gate.check(NY, "reminders", utc(2026, 7, 15, 23, 0)).reason == "outside-window"
    for wider in ((time(7, 59), time(19, 0)), (time(9, 0), time(21, 1)), (time(12), time(9))):
        with pytest.raises(ValueError):
            CallingWindow(*wider)


def test_the_window_refuses_a_naive_clock(gates: Gates) -> None:
    gates.grant(NY)
    with pytest.raises(ValueError):
        gates.gate.check(NY, "reminders", datetime(2026, 7, 15, 12, 30))


# --- the gate's reasons and events -----------------------------------------------------------


def test_every_refusal_has_a_stable_reason_and_an_event(gates: Gates) -> None:
    gates.grant(NY)
    decision = gates.gate.check("+1 555 555 0134", "reminders", MORNING, call_id="plan-7")
    assert (decision.allowed, decision.reason, decision.number) == (False, "invalid-number", "")
    with pytest.raises(ConsentError):
        gates.gate.check(NY, "marketing", MORNING)
    refused = [e for e in gates.events if isinstance(e, DialRefused)]
    assert len(refused) == 1
    assert (refused[0].call_id, refused[0].reason, refused[0].scope) == (
        "plan-7",
        "invalid-number",
        "reminders",
    )
    assert set(REASONS) == {
        "no-consent",
        "consent-revoked",
        "consent-out-of-scope",
        "dnc",
        "outside-window",
        "holiday",
        "unknown-timezone",
        "invalid-number",
    }


def test_old_consent_records_still_load() -> None:
    old = ConsentRecorded("c1", phone_number="+12125550134", scope="reminders", method="written")
    assert old.source == "" and old.given_t == 0.0 and not old.revoked


def test_events_reach_the_audit_log_sealed(tmp_path: Path) -> None:
    """Consent and refusals through a real AuditLog: the number only ever sealed."""
    assert {"ConsentRecorded", "DialRefused"} <= AUDITED
    assert key_scope("DialRefused", "") == key_scope("DialRefused", "c1") == SCOPE_CONSENT
    assert "phone_number" in CONTENT_FIELDS
    log = AuditLog(
        tmp_path / "audit.sqlite",
        envelope.load_kek(tmp_path / "keys" / "kek", create=True),
        load_or_create_signing_key(tmp_path / "keys" / "signing.key"),
        origin="test/tcpa",
        checkpoint_file=tmp_path / "checkpoints.log",
    )
    observer = AuditObserver(log)
    gates_dir = tmp_path / "policy"
    dnc = DncList(gates_dir / "dnc.sqlite", observer)
    consent = ConsentStore(gates_dir / "consent.sqlite", observer, dnc=dnc)
    gate = OutboundGate(consent, dnc, CallingWindow(), observer)
    consent.capture(NY, "reminders", method="written", source="import", evidence="signed 03-01")
    assert gate.check(NY, "reminders", EVENING).reason == "outside-window"
    consent.revoke(NY, ALL, method="verbal-on-call", source="inbound-call", call_id="c5")
    assert gate.check(NY, "reminders", MORNING).reason == "dnc"
    assert observer.flush(10) and observer.acknowledged == 4
    records = log.call_records("", decrypt=True) + log.call_records("c5", decrypt=True)
    by_kind = [(r["kind"], r["meta"].get("reason"), r["meta"].get("revoked")) for r in records]
    assert sorted(by_kind, key=str) == sorted(
        [
            ("ConsentRecorded", None, False),
            ("DialRefused", "outside-window", None),
            ("DialRefused", "dnc", None),
            ("ConsentRecorded", None, True),
        ],
        key=str,
    )
    for r in records:
        assert r["content"]["phone_number"] == "+12125550134"
        assert "phone_number" not in r["meta"]
    capture = next(
        r for r in records if r["kind"] == "ConsentRecorded" and not r["meta"]["revoked"]
    )
    assert (
        capture["meta"]["source"] == "import" and capture["content"]["evidence"] == "signed 03-01"
    )
    entry = to_entry(DialRefused("", phone_number="+12125550134", scope="reminders", reason="dnc"))
    assert entry.content == {"phone_number": "+12125550134"} and entry.meta["reason"] == "dnc"
    scopes = {
        row[0]
        for row in sqlite3.connect(tmp_path / "audit.sqlite").execute("SELECT scope FROM deks")
    }
    assert scopes == {SCOPE_CONSENT}
    observer.close()
    log.close()
    raw = (tmp_path / "audit.sqlite").read_bytes()
    for wal in tmp_path.glob("audit.sqlite-wal"):
        raw += wal.read_bytes()
    assert b"2125550134" not in raw and b"signed 03-01" not in raw
