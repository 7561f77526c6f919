"""TCPA consent records: capture, revoke and look up consent per phone number and scope.

An AI-generated voice is an "artificial voice" under TCPA 47 U.S.C. 227(b)(1) (FCC 24-17,
Declaratory Ruling of 8 February 2024), so every reminder call needs the callee's prior express
consent (47 CFR 64.1200(a)(1)-(2)), which the caller must be able to prove, and a revocation
made "by any reasonable means" must be honoured (47 CFR 64.1200(a)(10)). This module keeps:

* the current state per ``(E.164 number, scope)`` in its own SQLite file (WAL), for the
  outbound gate's lookup at dial time;
* the history of every capture and revocation in the same file (append-only);
* and emits every capture and revocation as a :class:`~appliance.events.ConsentRecorded`
  event (``revoked=True`` for a revocation) through the ``sink`` given at construction, which
  the app routes into the audit log (number and evidence sealed, consent retention).

Ordering against the sink: a capture is emitted *before* its transaction commits (if the audit
sink refuses it, nothing is stored: no consent without its record); a revocation commits
*first*, then is emitted (an opt-out is honoured even if the audit path fails; the sink's own
failure handling, fail-closed in the app, takes over from there).
"""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.events import ConsentRecorded, Event
from appliance.migrations import apply_migrations
from appliance.policy.phone import DEFAULT_REGION, InvalidNumber, PolicyError, normalize_number

if TYPE_CHECKING:
    from appliance.policy.dnc import DncList

SCOPES = ("reminders", "recall", "billing")
"""Consent scopes: appointment reminders, recall (due for a check-up), billing."""
ALL = "all"
"""Revocation scope meaning every scope, an opt-out (also puts the number on the DNC list)."""
SOURCES = ("import", "admin", "inbound-call", "outbound-call")
"""Where a consent record came from: the roster CSV, the admin page, the inbound agent, a
reminder call the box placed (an opt-out said or keyed on it)."""

FUTURE_SLACK_S = 300.0
"""How far ahead of this box's clock a consent time may be (clock skew of the source), s."""

CSV_COLUMNS = ("number", "scope", "method", "timestamp", "evidence")
"""Columns of the roster CSV (header row required; ``evidence`` may be empty)."""

Sink = Callable[[Event], None]


class ConsentError(PolicyError):
    """A consent operation was refused (bad scope, source, time); no number in the message."""

    def __init__(self, message: str, code: str = "consent_invalid") -> None:
        super().__init__(code, message)


class ImportRejected(ConsentError):
    """A CSV import had bad rows: nothing was imported.

    Attributes:
        errors: ``(line number, message)`` per bad row, line 1 being the header.
    """

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = errors
        lines = "; ".join(f"line {n}: {m}" for n, m in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(
            f"{len(errors)} bad row(s), nothing imported: {lines}{more}", "consent_import_rejected"
        )


@dataclass(frozen=True)
class ConsentRecord:
    """The current consent state of one number for one scope.

    Attributes:
        number: E.164 number.
        scope: One of :data:`SCOPES`.
        granted: ``True`` while consent stands, ``False`` once revoked.
        given_t: When it was given (or revoked, when ``granted`` is false), epoch seconds.
        recorded_t: When this box recorded it, epoch seconds.
        method: How (``"written"``, ``"verbal-on-call"``, ``"dtmf"``, ...).
        source: One of :data:`SOURCES`.
        evidence: Free text or a reference to the evidence (a form id, a call id).
        call_id: The call it was given or revoked in, or ``""``.
    """

    number: str
    scope: str
    granted: bool
    given_t: float
    recorded_t: float
    method: str
    source: str
    evidence: str
    call_id: str


def _m001(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE consent (number TEXT NOT NULL, scope TEXT NOT NULL,"
        " granted INTEGER NOT NULL, given_t REAL NOT NULL, recorded_t REAL NOT NULL,"
        " method TEXT NOT NULL, source TEXT NOT NULL, evidence TEXT NOT NULL,"
        " call_id TEXT NOT NULL, PRIMARY KEY (number, scope)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE consent_history (id INTEGER PRIMARY KEY, number TEXT NOT NULL,"
        " scope TEXT NOT NULL, revoked INTEGER NOT NULL, given_t REAL NOT NULL,"
        " recorded_t REAL NOT NULL, method TEXT NOT NULL, source TEXT NOT NULL,"
        " evidence TEXT NOT NULL, call_id TEXT NOT NULL)"
    )
    conn.execute("CREATE INDEX consent_history_number ON consent_history (number)")


MIGRATIONS = [("001_consent", _m001)]


def open_db(path: Path) -> sqlite3.Connection:
    """Open (creating) a policy SQLite file in WAL mode, autocommit, usable across threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def epoch_of(at: datetime | float | None) -> float:
    """Epoch seconds of an aware datetime or a float (``None``: now).

    Raises:
        ConsentError: A naive datetime (its instant is unknown), or a time more than
            :data:`FUTURE_SLACK_S` ahead of the clock.
    """
    if at is None:
        return time.time()
    if isinstance(at, datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise ConsentError("a time needs its UTC offset (an aware datetime)")
        t = at.timestamp()
    else:
        t = float(at)
    if t > time.time() + FUTURE_SLACK_S:
        raise ConsentError("a consent or revocation cannot be given in the future")
    return t


def _check(scope: str, source: str, method: str, *, revoke: bool = False) -> None:
    scopes = (*SCOPES, ALL) if revoke else SCOPES
    if scope not in scopes:
        raise ConsentError(f"unknown consent scope {scope!r}; expected one of {scopes}")
    if source not in SOURCES:
        raise ConsentError(f"unknown consent source {source!r}; expected one of {SOURCES}")
    if not method.strip():
        raise ConsentError("the consent method is empty")


class ConsentStore:
    """Consent per E.164 number and scope, in its own SQLite file, every change emitted.

    Args:
        path: The SQLite file (created, WAL).
        sink: Receives a :class:`~appliance.events.ConsentRecorded` per capture and revocation
            (the app's event bus, so the audit log gets it).
        dnc: The do-not-call list a revocation of scope :data:`ALL` adds the number to.
        region: Region assumed for numbers without a ``+`` country code.

    Thread-safe (one connection, one lock); lookups are one primary-key read. The sink is
    called with the store's lock held and must not call back into the store (the
    ``AuditObserver`` and ``EventBus.emit`` only enqueue or fan out).
    """

    def __init__(
        self,
        path: Path,
        sink: Sink,
        *,
        dnc: DncList | None = None,
        region: str = DEFAULT_REGION,
    ) -> None:
        self.path = path
        self._sink = sink
        self._dnc = dnc
        self._region = region
        self._lock = threading.Lock()
        self._conn = open_db(path)
        apply_migrations(self._conn, MIGRATIONS, self._conn)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def normalize(self, number: str) -> str:
        """E.164 form of ``number``; raises :class:`~appliance.policy.phone.InvalidNumber`."""
        return normalize_number(number, self._region)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @staticmethod
    def _write(
        conn: sqlite3.Connection, event: ConsentRecorded, number: str, recorded_t: float
    ) -> None:
        row = (
            number,
            event.scope,
            int(not event.revoked),
            event.given_t,
            recorded_t,
            event.method,
            event.source,
            event.evidence,
            event.call_id,
        )
        conn.execute(
            "INSERT INTO consent_history (number, scope, revoked, given_t, recorded_t, method,"
            " source, evidence, call_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (number, event.scope, int(event.revoked), *row[3:]),
        )
        conn.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def capture(
        self,
        number: str,
        scope: str,
        *,
        method: str,
        source: str,
        evidence: str = "",
        at: datetime | float | None = None,
        call_id: str = "",
    ) -> ConsentRecord:
        """Record the callee's consent for ``scope`` (replacing an earlier revocation).

        Args:
            number: The callee's number, any format ``phonenumbers`` parses.
            scope: One of :data:`SCOPES` (consent is never given for :data:`ALL`).
            method: How it was given (``"written"``, ``"verbal-on-call"``, ``"dtmf"``).
            source: One of :data:`SOURCES`.
            evidence: The evidence, or a reference to it (sealed in the audit log).
            at: When it was given (aware datetime or epoch seconds); ``None``: now.
            call_id: The call it was given in, or ``""``.

        Returns:
            The stored record.

        Raises:
            InvalidNumber: ``number`` is not a valid phone number.
            ConsentError: Unknown scope or source, empty method, naive ``at``.
            Exception: Whatever the sink raised (then nothing was stored).
        """
        e164 = self.normalize(number)
        _check(scope, source, method)
        return self._capture_many([(e164, scope, method, source, evidence, at, call_id)])[0]

    def _capture_many(
        self,
        rows: Iterable[tuple[str, str, str, str, str, datetime | float | None, str]],
    ) -> list[ConsentRecord]:
        now = time.time()
        events = [
            ConsentRecorded(
                call_id,
                phone_number=e164,
                scope=scope,
                method=method,
                evidence=evidence,
                revoked=False,
                source=source,
                given_t=epoch_of(at) if at is not None else now,
                t=now,
            )
            for e164, scope, method, source, evidence, at, call_id in rows
        ]
        with self._tx() as conn:
            for event in events:
                self._write(conn, event, event.phone_number, now)
            for event in events:  # inside the transaction: a refused record rolls back all
                self._sink(event)
        return [self._record(e, now) for e in events]

    def revoke(
        self,
        number: str,
        scope: str,
        *,
        method: str,
        source: str,
        evidence: str = "",
        at: datetime | float | None = None,
        call_id: str = "",
    ) -> list[ConsentRecord]:
        """Revoke consent for ``scope``, or for every scope with :data:`ALL` (an opt-out).

        A revocation of :data:`ALL` also puts the number on the internal do-not-call list
        (when a :class:`~appliance.policy.dnc.DncList` was given). It is stored even where no
        consent was on file, so a later import cannot silently re-grant it (a capture after a
        revocation is a new, explicit consent).

        Returns:
            The revoked records (one per scope; every scope for :data:`ALL`).

        Raises:
            InvalidNumber: ``number`` is not a valid phone number.
            ConsentError: Unknown scope or source, empty method, naive ``at``.
        """
        e164 = self.normalize(number)
        _check(scope, source, method, revoke=True)
        now = time.time()
        given = epoch_of(at) if at is not None else now
        event = ConsentRecorded(
            call_id,
            phone_number=e164,
            scope=scope,
            method=method,
            evidence=evidence,
            revoked=True,
            source=source,
            given_t=given,
            t=now,
        )
        scopes = SCOPES if scope == ALL else (scope,)
        with self._tx() as conn:
            if scope == ALL:
                conn.execute(
                    "INSERT INTO consent_history (number, scope, revoked, given_t, recorded_t,"
                    " method, source, evidence, call_id) VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)",
                    (e164, ALL, given, now, method, source, evidence, call_id),
                )
            for s in scopes:
                conn.execute(
                    "INSERT OR REPLACE INTO consent VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)",
                    (e164, s, given, now, method, source, evidence, call_id),
                )
                if scope != ALL:
                    conn.execute(
                        "INSERT INTO consent_history (number, scope, revoked, given_t,"
                        " recorded_t, method, source, evidence, call_id)"
                        " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?)",
                        (e164, s, given, now, method, source, evidence, call_id),
                    )
        try:
            if scope == ALL and self._dnc is not None:
                self._dnc.add_opt_out(e164, method=method, source=source, emit=False)
        finally:  # the revocation is on file: its record goes out even if the DNC write failed
            self._sink(event)
        return [
            ConsentRecord(e164, s, False, given, now, method, source, evidence, call_id)
            for s in scopes
        ]

    def get(self, number: str, scope: str) -> ConsentRecord | None:
        """The current record of ``number`` for ``scope``, or ``None`` when none was ever made.

        Raises:
            InvalidNumber: ``number`` is not a valid phone number.
        """
        return self.lookup(self.normalize(number), scope)

    def lookup(self, e164: str, scope: str) -> ConsentRecord | None:
        """:meth:`get` for a number already in E.164 form (the gate's hot path)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT number, scope, granted, given_t, recorded_t, method, source, evidence,"
                " call_id FROM consent WHERE number = ? AND scope = ?",
                (e164, scope),
            ).fetchone()
        return None if row is None else ConsentRecord(row[0], row[1], bool(row[2]), *row[3:])

    def scopes_of(self, e164: str) -> dict[str, bool]:
        """Every scope on file for an E.164 number: ``{scope: granted}``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT scope, granted FROM consent WHERE number = ?", (e164,)
            ).fetchall()
        return {s: bool(g) for s, g in rows}

    def history(self, number: str) -> list[dict[str, object]]:
        """Every capture and revocation of ``number``, oldest first (for the admin page)."""
        e164 = self.normalize(number)
        with self._lock:
            cur = self._conn.execute(
                "SELECT scope, revoked, given_t, recorded_t, method, source, evidence, call_id"
                " FROM consent_history WHERE number = ? ORDER BY id",
                (e164,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def count(self) -> int:
        """Number of ``(number, scope)`` records on file."""
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM consent").fetchone()[0])

    def import_csv(self, data: str | Path, *, source: str = "import") -> int:
        """Import the roster CSV: header ``number,scope,method,timestamp,evidence``.

        ``timestamp`` is ISO 8601 with a UTC offset (``2026-03-01T09:30:00-05:00`` or ``...Z``),
        when the consent was given. All rows are checked first; if any is bad, nothing is
        imported and :class:`ImportRejected` lists every bad row with its line number. A row
        whose number already has a *revocation* on file for that scope is bad too: an old
        roster must not re-grant a consent the callee revoked (use :meth:`capture` for a new,
        explicit consent).

        Args:
            data: A path to the file, or its text.
            source: The :data:`SOURCES` value recorded (``"import"``).

        Returns:
            The number of consents captured (one event each).

        Raises:
            ImportRejected: Bad rows (nothing imported).
            ConsentError: Unknown ``source``.
        """
        if source not in SOURCES:
            raise ConsentError(f"unknown consent source {source!r}; expected one of {SOURCES}")
        text = data.read_text(encoding="utf-8-sig") if isinstance(data, Path) else data
        reader = csv.reader(io.StringIO(text))
        errors: list[tuple[int, str]] = []
        header = next(reader, None)
        if header is None or tuple(h.strip().lower() for h in header) != CSV_COLUMNS:
            raise ImportRejected([(1, f"the header must be {','.join(CSV_COLUMNS)}")])
        rows: list[tuple[str, str, str, str, str, datetime | float | None, str]] = []
        seen: dict[tuple[str, str], int] = {}
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(CSV_COLUMNS):
                errors.append((line, f"{len(fields)} fields, expected {len(CSV_COLUMNS)}"))
                continue
            raw, scope, method, stamp, evidence = (f.strip() for f in fields)
            try:
                e164 = self.normalize(raw)
            except InvalidNumber as exc:
                errors.append((line, exc.message))
                continue
            if scope not in SCOPES:
                errors.append((line, f"unknown scope {scope!r}; expected one of {SCOPES}"))
                continue
            if not method:
                errors.append((line, "empty method"))
                continue
            try:
                at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                errors.append((line, f"timestamp {stamp!r} is not ISO 8601"))
                continue
            if at.tzinfo is None or at.utcoffset() is None:
                errors.append((line, f"timestamp {stamp!r} has no UTC offset"))
                continue
            if at.timestamp() > time.time() + FUTURE_SLACK_S:
                errors.append((line, f"timestamp {stamp!r} is in the future"))
                continue
            if (e164, scope) in seen:
                errors.append((line, f"same number and scope as line {seen[e164, scope]}"))
                continue
            seen[e164, scope] = line
            current = self.lookup(e164, scope)
            if current is not None and not current.granted:
                errors.append((line, "consent for this scope was revoked; not re-granted"))
                continue
            rows.append((e164, scope, method, source, evidence, at, ""))
        if errors:
            raise ImportRejected(errors)
        return len(self._capture_many(rows))

    @staticmethod
    def _record(event: ConsentRecorded, recorded_t: float) -> ConsentRecord:
        return ConsentRecord(
            event.phone_number,
            event.scope,
            not event.revoked,
            event.given_t,
            recorded_t,
            event.method,
            event.source,
            event.evidence,
            event.call_id,
        )
