"""Control-socket operations on the audit log: admin records, call timelines, transcripts.

The admin process never holds the audit keys (shared/ARCHITECTURE.md, "appliance admin"): it
asks the agent, which appends and decrypts with its own keys. Appends go through
:meth:`AuditLog.append`, whose lock serialises them with the audit observer's writer thread;
reads go through :meth:`AuditLog.call_records` (the ``records_call_id`` index), under the same
lock. Both run in a worker thread (:func:`asyncio.to_thread`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from typing import Any, Protocol

from appliance.audit.observer import AuditObserver
from appliance.audit.store import AuditError, AuditLog, ContentShredded, Entry
from appliance.control import ControlError

_LOGGER = logging.getLogger(__name__)

#: Kinds an administrator may append: ``Admin`` and 2..40 letters (``AdminLogin``, ...).
ADMIN_KIND = re.compile(r"^Admin[A-Za-z]{2,40}$")
#: Most metadata keys of one admin record.
MAX_META_KEYS = 32
#: Largest metadata of one admin record, bytes of compact JSON.
MAX_META_BYTES = 4096
#: Who asked: ``user:<id>`` (a signed-in administrator), ``service:<name>``, or ``anonymous``
#: (a failed sign-in): one token, no spaces or control characters, at most 128 characters.
ACTOR = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
#: A call id as the SIP user agent makes them (12 hex digits), with room for other sources.
CALL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: Bounds of the reason an administrator gives to open a transcript, characters.
REASON_CHARS = (10, 500)


class AuditHolder(Protocol):
    """What the audit ops need of the agent process (``ApplianceServer`` has it)."""

    @property
    def audit(self) -> AuditObserver | None:
        """The audit observer and its log, or ``None`` when the audit log is disabled."""
        ...


def check_actor(actor: str) -> str:
    """Return ``actor`` if it names someone (see :data:`ACTOR`).

    Raises:
        ControlError: ``bad_request`` otherwise.
    """
    if not ACTOR.fullmatch(actor):
        raise ControlError("bad_request", "actor must name who asked, e.g. user:<id>")
    return actor


def _text_arg(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise ControlError("bad_request", f"{name} must be a string")
    return value


def _call_id(args: dict[str, Any]) -> str:
    call_id = _text_arg(args, "call_id")
    if not CALL_ID.fullmatch(call_id):
        raise ControlError("bad_request", "call_id must be 1-64 letters, digits or _.:-")
    return call_id


def check_meta(meta: Any) -> dict[str, str | int | float | bool | None]:
    """Validate admin record metadata: string keys, scalar values, bounded size.

    Raises:
        ControlError: ``bad_request`` naming the problem (not the value).
    """
    if not isinstance(meta, dict):
        raise ControlError("bad_request", "meta must be an object")
    if len(meta) > MAX_META_KEYS:
        raise ControlError("bad_request", f"meta has more than {MAX_META_KEYS} keys")
    for key, value in meta.items():
        if not isinstance(key, str) or not key:
            raise ControlError("bad_request", "meta keys must be non-empty strings")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise ControlError("bad_request", f"meta[{key!r}] must be a string, number or null")
        if isinstance(value, float) and not math.isfinite(value):
            raise ControlError("bad_request", f"meta[{key!r}] must be a finite number")
    if len(json.dumps(meta, separators=(",", ":"))) > MAX_META_BYTES:
        raise ControlError("bad_request", f"meta is larger than {MAX_META_BYTES} bytes as JSON")
    return dict(meta)


def event_view(record: dict[str, Any]) -> dict[str, Any]:
    """A record without content: ``{"index", "t" (s since the epoch), "kind", "meta"}``."""
    return {
        "index": record["index"],
        "t": record["t"],
        "kind": record["kind"],
        "meta": record["meta"],
    }


class AuditOps:
    """``audit.append``, ``call.timeline`` and ``call.transcript`` (see :mod:`control_ops`).

    Args:
        server: The agent process; its ``audit`` observer is read at each request, so a log
            that failed after start answers ``unavailable``.
    """

    def __init__(self, server: AuditHolder) -> None:
        self._server = server

    def log(self, *, writable: bool = True) -> AuditLog:
        """The open audit log.

        Args:
            writable: Also require that the log has not failed (appends need it).

        Raises:
            ControlError: ``unavailable`` when the log is disabled or, if ``writable``, failed.
        """
        observer = self._server.audit
        if observer is None:
            raise ControlError("unavailable", "the audit log is disabled")
        if writable and not observer.healthy:
            raise ControlError("unavailable", "the audit log failed; the agent refuses calls")
        return observer.log

    async def record(
        self, kind: str, actor: str, meta: dict[str, Any], content: dict[str, Any] | None = None
    ) -> int:
        """Append one system record (``call_id`` ``""``) with ``actor`` in its metadata.

        Returns:
            The record's index, once committed.

        Raises:
            ControlError: ``unavailable``: the log is disabled, failed or the write failed.
        """
        log = self.log()
        entry = Entry(kind=kind, call_id="", meta={**meta, "actor": actor}, content=content)
        try:
            (index,) = await asyncio.to_thread(log.append, [entry])
        except AuditError as exc:
            _LOGGER.critical("admin audit record %s could not be written: %s", kind, exc)
            raise ControlError("unavailable", "the audit record could not be written") from exc
        return index

    async def append(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``audit.append``: ``{"kind", "meta"}`` -> ``{"index"}``.

        Raises:
            ControlError: ``bad_request`` for a kind outside :data:`ADMIN_KIND`, metadata that
                is not flat scalars within :data:`MAX_META_KEYS` and :data:`MAX_META_BYTES`,
                or no actor; ``unavailable`` when the log cannot be written.
        """
        kind = _text_arg(args, "kind")
        if not ADMIN_KIND.fullmatch(kind):
            raise ControlError("bad_request", "kind must be Admin followed by 2-40 letters")
        meta = check_meta(args.get("meta", {}))
        return {"index": await self.record(kind, check_actor(actor), meta)}

    async def timeline(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``call.timeline``: ``{"call_id"}`` -> ``{"call_id", "events"}``, no content.

        Raises:
            ControlError: ``bad_request`` for a malformed call id; ``not_found`` when the call
                has no records; ``unavailable`` when the audit log is disabled.
        """
        call_id = _call_id(args)
        records = await self._read(call_id, decrypt=False)
        return {"call_id": call_id, "events": [event_view(r) for r in records]}

    async def transcript(self, args: dict[str, Any], actor: str) -> dict[str, Any]:
        """``call.transcript``: ``{"call_id", "reason"}`` -> ``{"call_id", "turns", "events"}``.

        The view is appended as ``AdminPhiViewed`` (meta ``actor``, ``call_id``; the reason
        sealed as content) before anything is returned; if that append fails, nothing is.

        Raises:
            ControlError: ``bad_request`` for a malformed call id, a reason outside
                :data:`REASON_CHARS` or no actor; ``not_found`` for a call without records or
                whose content was shredded; ``unavailable`` when the view cannot be recorded.
        """
        call_id = _call_id(args)
        reason = _text_arg(args, "reason").strip()
        low, high = REASON_CHARS
        if not low <= len(reason) <= high:
            raise ControlError("bad_request", f"reason must be {low}-{high} characters")
        check_actor(actor)
        self.log()  # refuse before decrypting anything when the view could not be recorded
        records = await self._read(call_id, decrypt=True)
        await self.record("AdminPhiViewed", actor, {"call_id": call_id}, content={"reason": reason})
        turns = []
        for r in records:
            content = r.get("content") or {}
            if r["kind"] == "TurnEnded" and isinstance(content.get("user_text"), str):
                turns.append({"t": r["t"], "speaker": "caller", "text": content["user_text"]})
            elif r["kind"] == "AgentSpoke" and isinstance(content.get("text"), str):
                turns.append({"t": r["t"], "speaker": "agent", "text": content["text"]})
        return {"call_id": call_id, "turns": turns, "events": [event_view(r) for r in records]}

    async def _read(self, call_id: str, *, decrypt: bool) -> list[dict[str, Any]]:
        log = self.log(writable=False)
        try:
            records = await asyncio.to_thread(log.call_records, call_id, decrypt=decrypt)
        except ContentShredded as exc:
            raise ControlError("not_found", "content was shredded") from exc
        except AuditError as exc:
            raise ControlError("unavailable", "the audit log cannot be read") from exc
        if not records:
            raise ControlError("not_found", f"no audit records for call {call_id}")
        return records
