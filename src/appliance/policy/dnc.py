"""The do-not-call list: internal opt-outs plus imported lists, scrubbed before each dial.

47 CFR 64.1200(d) requires a caller to keep its own do-not-call list and honour a request
not to be called; 64.1200(c)(2) forbids calls to numbers on the national registry without
consent or an established relationship. This list holds both kinds apart:

* ``internal`` entries: opt-outs ("stop calling me", a keypad opt-out, the admin page, a
  revocation of every consent scope). Never removed by an import.
* imported lists, by name (the national registry extract the practice downloads, a list from
  its billing system): re-importing a list under the same name replaces its entries.

Lookups are one primary-key read of an indexed SQLite table (``WITHOUT ROWID``, key
``(number, list)``), at dial time, never cached.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from pathlib import Path

from appliance.events import ConsentRecorded
from appliance.migrations import apply_migrations
from appliance.policy.consent import SOURCES, ConsentError, ImportRejected, Sink, open_db
from appliance.policy.phone import DEFAULT_REGION, InvalidNumber, normalize_number

INTERNAL = "internal"
"""Name of the list of opt-outs made to this practice."""


def _m001(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE dnc (number TEXT NOT NULL, list TEXT NOT NULL, t REAL NOT NULL,"
        " method TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (number, list)) WITHOUT ROWID"
    )


MIGRATIONS = [("001_dnc", _m001)]


class DncList:
    """Do-not-call numbers (E.164) in their own SQLite file.

    Args:
        path: The SQLite file (created, WAL).
        sink: Receives a :class:`~appliance.events.ConsentRecorded` (scope ``"all"``,
            ``revoked=True``) per explicit opt-out; ``None`` to emit nothing (tests, benchmark).
        region: Region assumed for numbers without a ``+`` country code.
    """

    def __init__(self, path: Path, sink: Sink | None = None, *, region: str = DEFAULT_REGION):
        self.path = path
        self._sink = sink
        self._region = region
        self._lock = threading.Lock()
        self._conn = open_db(path)
        apply_migrations(self._conn, MIGRATIONS, self._conn)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def add_opt_out(
        self,
        number: str,
        *,
        method: str,
        source: str,
        evidence: str = "",
        call_id: str = "",
        emit: bool = True,
    ) -> str:
        """Put ``number`` on the internal list (an opt-out); returns its E.164 form.

        Committed before the event is emitted: an opt-out is honoured even when the audit path
        fails. :meth:`~appliance.policy.consent.ConsentStore.revoke` with scope ``"all"`` calls
        this with ``emit=False`` (it emits its own record).

        Raises:
            InvalidNumber: Not a valid phone number.
            ConsentError: Unknown ``source`` or empty ``method``.
        """
        e164 = normalize_number(number, self._region)
        if source not in SOURCES:
            raise ConsentError(f"unknown source {source!r}; expected one of {SOURCES}")
        if not method.strip():
            raise ConsentError("the opt-out method is empty")
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO dnc VALUES (?, ?, ?, ?, ?)",
                (e164, INTERNAL, now, method, source),
            )
        if emit and self._sink is not None:
            self._sink(
                ConsentRecorded(
                    call_id,
                    phone_number=e164,
                    scope="all",
                    method=method,
                    evidence=evidence,
                    revoked=True,
                    source=source,
                    t=now,
                )
            )
        return e164

    def contains(self, e164: str) -> bool:
        """Whether an E.164 number is on any list (one indexed read; the gate's hot path)."""
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM dnc WHERE number = ? LIMIT 1", (e164,))
            return row.fetchone() is not None

    def __contains__(self, number: object) -> bool:
        """``number in dnc`` for any format (an invalid number is never on the list)."""
        if not isinstance(number, str):
            return False
        try:
            return self.contains(normalize_number(number, self._region))
        except InvalidNumber:
            return False

    def lists_of(self, number: str) -> list[str]:
        """Names of the lists ``number`` is on (``"internal"`` for an opt-out)."""
        e164 = normalize_number(number, self._region)
        with self._lock:
            rows = self._conn.execute(
                "SELECT list FROM dnc WHERE number = ? ORDER BY list", (e164,)
            ).fetchall()
        return [r[0] for r in rows]

    def count(self, list_name: str | None = None) -> int:
        """Entries on one list, or on all lists."""
        with self._lock:
            if list_name is None:
                cur = self._conn.execute("SELECT count(*) FROM dnc")
            else:
                cur = self._conn.execute("SELECT count(*) FROM dnc WHERE list = ?", (list_name,))
            return int(cur.fetchone()[0])

    def import_list(self, data: str | Path, list_name: str) -> int:
        """Replace the imported list ``list_name`` with the numbers in ``data``.

        ``data`` (a path or the text) holds one number per line, or a CSV whose first column
        is the number (a header row whose first field is ``number`` or ``phone`` is skipped;
        ``#`` starts a comment line). Every line is checked first: if any number is invalid,
        nothing changes and :class:`~appliance.policy.consent.ImportRejected` lists the bad
        lines. Duplicates are kept once.

        Returns:
            Distinct numbers now on the list.

        Raises:
            ImportRejected: Bad lines (nothing imported).
            ConsentError: ``list_name`` is empty or ``"internal"``.
        """
        if not list_name.strip() or list_name == INTERNAL:
            raise ConsentError(f"an imported list needs its own name, not {list_name!r}")
        text = data.read_text(encoding="utf-8-sig") if isinstance(data, Path) else data
        numbers: set[str] = set()
        errors: list[tuple[int, str]] = []
        reader = csv.reader(io.StringIO(text))
        for fields in reader:
            line = reader.line_num
            first = fields[0].strip() if fields else ""
            if not first or first.startswith("#"):
                continue
            if line == 1 and first.lower() in {"number", "phone", "phone_number"}:
                continue
            try:
                numbers.add(normalize_number(first, self._region))
            except InvalidNumber as exc:
                errors.append((line, exc.message))
        if errors:
            raise ImportRejected(errors)
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("DELETE FROM dnc WHERE list = ?", (list_name,))
                self._conn.executemany(
                    "INSERT INTO dnc VALUES (?, ?, ?, 'list-import', 'import')",
                    ((n, list_name, now) for n in numbers),
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return len(numbers)
