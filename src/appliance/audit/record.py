"""Audit records and their canonical, versioned byte encoding (pure functions).

A record is one Merkle leaf. Encoding v1 is the byte ``0x01`` followed by canonical JSON
(UTF-8, sorted keys, no white space, ASCII only) of the record's fields. Content that may hold
PHI (transcripts, digits, caller numbers, tool arguments) never appears in clear: it is sealed
with the call's data key (see :mod:`appliance.audit.envelope`) and only its ciphertext enters
the leaf, so the log verifies without any key and still verifies after the key is destroyed
(crypto-shredding).

The store keeps beside each record the Merkle root of the log up to and including it (outside
the leaf), which lets the verifier name the first bad index; the signed checkpoints make the
whole tree authentic.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

VERSION = 1


class RecordError(ValueError):
    """A record cannot be encoded or decoded."""


@dataclass(frozen=True)
class Record:
    """One audit record.

    Attributes:
        t: Event time, seconds since the epoch.
        kind: Event type, e.g. ``"TurnEnded"`` or ``"AdminLogin"``.
        call_id: Opaque call id, or ``""`` for events outside calls.
        meta: Clear metadata without PHI (times, durations, dispositions, codes).
        sealed: AES-256-GCM envelope of the content (JSON), or ``None``.
        dek_id: Id of the data key that sealed ``sealed``, or ``None``.
    """

    t: float
    kind: str
    call_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    sealed: bytes | None = None
    dek_id: str | None = None


def encode(record: Record) -> bytes:
    """Canonical v1 bytes of ``record`` (the Merkle leaf data).

    Raises:
        RecordError: A field has the wrong type or metadata is not JSON-serialisable.
    """
    if not isinstance(record.kind, str) or not record.kind:
        raise RecordError("record kind must be a non-empty string")
    doc = {
        "t": record.t,
        "kind": record.kind,
        "call_id": record.call_id,
        "meta": record.meta,
        "sealed": None if record.sealed is None else base64.b64encode(record.sealed).decode(),
        "dek_id": record.dek_id,
    }
    try:
        body = json.dumps(
            doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise RecordError(f"record metadata is not canonical JSON: {exc}") from exc
    return bytes([VERSION]) + body.encode("ascii")


def decode(data: bytes) -> Record:
    """Parse canonical v1 bytes.

    Raises:
        RecordError: Unknown version, malformed JSON, missing or mistyped fields, or bytes
            that are not in canonical form (so re-encoding would differ).
    """
    if not data:
        raise RecordError("empty record")
    if data[0] != VERSION:
        raise RecordError(f"unknown record version {data[0]}")
    try:
        doc = json.loads(data[1:].decode("ascii"))
        sealed = doc["sealed"]
        record = Record(
            t=float(doc["t"]),
            kind=str(doc["kind"]),
            call_id=str(doc["call_id"]),
            meta=dict(doc["meta"]),
            sealed=None if sealed is None else base64.b64decode(sealed, validate=True),
            dek_id=doc["dek_id"],
        )
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"malformed record: {type(exc).__name__}") from exc
    if encode(record) != data:
        raise RecordError("record bytes are not in canonical form")
    return record
