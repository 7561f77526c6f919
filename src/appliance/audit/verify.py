"""``appliance audit verify``: re-derive the Merkle tree and check every signed checkpoint.

Needs no decryption key. For each record in index order it recomputes the RFC 6962 root and
compares it with the root stored beside the record; at each checkpoint size it compares with
the checkpoint, whose Ed25519 signature was checked first. Successive checkpoints are
consistent when both match the one re-derived tree (append-only). Detected, with the first bad
index: a flipped byte (leaf or stored root), a deleted row (index gap), reordered rows, a
truncated tail (fewer records than a checkpoint covers) and a forged or altered checkpoint.
Calls whose data key was destroyed are reported as shredded, not as tampered.

The per-row roots carry no key: anyone who can write the file can recompute them. What makes a
forgery detectable is the Ed25519 signature over (origin, size, root) in the checkpoints, so
verification also demands **coverage**: every record whose time is more than ``max_age_s``
before ``now`` must lie under a signed checkpoint (index < the largest signed size). A log with
old records and no checkpoint at all, a log whose checkpoints were deleted and whose roots were
recomputed, and an old unsigned tail all fail, and so does an unsigned record dated more than
``max_age_s`` in the future (it would never come of age). The public key must come from a trust
anchor off the box (pinned at enrolment, see
:func:`appliance.audit.service.verify_from_settings`); checkpoints kept off the box (the witness
copy) catch a log rewritten with fresh timestamps.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.audit.checkpoint import Checkpoint, CheckpointError, open_note
from appliance.audit.merkle import TreeBuilder, leaf_hash
from appliance.audit.record import RecordError, decode

DEFAULT_MAX_AGE_S = 3600.0
"""Default coverage limit in seconds (``[audit] checkpoint_max_age_s``)."""


@dataclass
class VerifyReport:
    """Outcome of a verification."""

    ok: bool
    size: int = 0
    checkpoints: int = 0
    first_bad_index: int | None = None
    problem: str | None = None
    shredded_calls: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable line."""
        if self.ok:
            shred = f", {len(self.shredded_calls)} call(s) shredded" if self.shredded_calls else ""
            return f"OK: {self.size} records, {self.checkpoints} checkpoint(s) verified{shred}"
        where = "" if self.first_bad_index is None else f" at index {self.first_bad_index}"
        return f"FAILED{where}: {self.problem}"


def _fail(report: VerifyReport, index: int | None, problem: str) -> VerifyReport:
    report.ok = False
    report.first_bad_index = index
    report.problem = problem
    return report


def verify(
    db_path: Path,
    public_key: Ed25519PublicKey,
    *,
    key_name: str = "appliance-audit",
    origin: str | None = None,
    extra_notes: list[str] | None = None,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    now: float | None = None,
) -> VerifyReport:
    """Verify an audit database read-only.

    Args:
        db_path: The audit SQLite file.
        public_key: The checkpoint signing key's public half (a pinned copy, not the box's).
        key_name: Signer name in the notes.
        origin: Expected checkpoint origin, if known.
        extra_notes: Checkpoints collected off the box (the witness copy), checked as well.
        max_age_s: A record whose time ``t`` is more than this many seconds before ``now``
            must be covered by a signed checkpoint (``[audit] checkpoint_max_age_s``).
        now: Reference time in seconds since the epoch (default: the clock); give the time a
            copy was taken to verify an archived copy.

    Returns:
        The report; ``ok`` is false with the first bad index and the problem on failure.

    Raises:
        ValueError: ``max_age_s`` is not positive.
    """
    if not max_age_s > 0:
        raise ValueError(f"max_age_s must be > 0, got {max_age_s!r}")
    deadline = (time.time() if now is None else now) - max_age_s
    report = VerifyReport(ok=True)
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return _fail(report, None, f"cannot open {db_path}: {exc}")
    with conn:
        notes = [row[0] for row in conn.execute("SELECT note FROM checkpoints ORDER BY size")]
        checkpoints: dict[int, Checkpoint] = {}
        for note in [*notes, *(extra_notes or [])]:
            try:
                cp = open_note(note, public_key, key_name)
            except CheckpointError as exc:
                return _fail(report, None, f"checkpoint signature invalid: {exc}")
            if origin is not None and cp.origin != origin:
                return _fail(report, None, f"checkpoint origin {cp.origin!r} is not {origin!r}")
            if cp.size in checkpoints and checkpoints[cp.size].root != cp.root:
                return _fail(report, cp.size - 1, f"two checkpoints disagree at size {cp.size}")
            checkpoints[cp.size] = cp
        report.checkpoints = len(checkpoints)
        tree = TreeBuilder()
        expected = 0
        covered = max(checkpoints, default=0)
        first_uncovered_old: tuple[int, float] | None = None
        for idx, data, stored_root in conn.execute(
            "SELECT idx, data, root FROM records ORDER BY idx"
        ):
            if idx != expected:
                return _fail(report, expected, f"record {expected} is missing (deleted row)")
            try:
                record = decode(data)
            except RecordError as exc:
                return _fail(report, idx, f"record {idx} is not a valid record ({exc})")
            tree.append(leaf_hash(data))
            root = tree.root()
            if root != stored_root:
                return _fail(
                    report,
                    idx,
                    f"record {idx} was altered, removed or moved: the "
                    "re-derived root differs from the one stored with it",
                )
            signed = checkpoints.get(tree.size)
            if signed is not None and signed.root != root:
                return _fail(
                    report,
                    idx,
                    f"records up to {idx} do not match the signed checkpoint at size {signed.size}",
                )
            # An unsigned record dated beyond now + max_age_s would never come of age: a forger
            # could date a rewritten tail in the future to dodge the coverage rule.
            if (
                idx >= covered
                and first_uncovered_old is None
                and not (deadline <= record.t <= deadline + 2 * max_age_s)
            ):
                first_uncovered_old = (idx, record.t)
            expected += 1
        report.size = tree.size
        beyond = [s for s in checkpoints if s > tree.size]
        if beyond:
            return _fail(
                report,
                tree.size,
                f"log truncated: a signed checkpoint covers "
                f"{max(beyond)} records but only {tree.size} remain",
            )
        if 0 in checkpoints and checkpoints[0].root != TreeBuilder().root():
            return _fail(report, None, "checkpoint at size 0 has a wrong root")
        if first_uncovered_old is not None and first_uncovered_old[1] > deadline:
            idx, t = first_uncovered_old
            return _fail(
                report,
                idx,
                f"record {idx} is dated {(t - deadline - max_age_s) / 3600:.1f} h in the future "
                "and not covered by a signed checkpoint: unsigned records cannot be told from a "
                "forgery",
            )
        if first_uncovered_old is not None:
            idx, t = first_uncovered_old
            what = (
                "no signed checkpoint at all"
                if not checkpoints
                else f"the last signed checkpoint covers only {covered} record(s)"
            )
            return _fail(
                report,
                idx,
                f"record {idx} is {(deadline + max_age_s - t) / 3600:.1f} h old but not covered "
                f"by a signed checkpoint ({what}; limit {max_age_s:.0f} s): unsigned records "
                "cannot be told from a forgery",
            )
        report.shredded_calls = sorted(
            r[0]
            for r in conn.execute("SELECT DISTINCT call_id FROM deks WHERE shredded IS NOT NULL")
        )
    conn.close()
    return report
