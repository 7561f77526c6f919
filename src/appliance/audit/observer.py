"""The call path's audit observer: typed events in, durable encrypted records out.

Subscribed to the event bus; never called from inside a pipeline stage. Events are queued and
written by one writer thread in batches (one transaction per batch, typically one caller turn),
so the audio path never waits for an fsync. Content fields (transcripts, agent text, digits)
are sealed; clear metadata holds no PHI.

Fail closed: if a write fails (disk full, I/O error, lost key), :attr:`healthy` turns false and
``on_failure`` is called once; the server then refuses new calls and ends current ones with a
spoken notice. Records acknowledged before the failure stay committed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from appliance.audit.store import AuditError, AuditLog, Entry
from appliance.events import CONTENT_FIELDS, CallEnded, Event

_LOGGER = logging.getLogger(__name__)

#: Event kinds audited. Everything else the bus carries is ignored here.
AUDITED = {
    "CallOffered",
    "CallRejected",
    "CallAnswered",
    "DisclosurePlayed",
    "TurnEnded",
    "AgentSpoke",
    "BargeIn",
    "DtmfReceived",
    "TurnLatency",
    "CallEnded",
    "ConsentRecorded",
    "DialRefused",
    "AmdDecided",
    "ConfigChanged",
    "IntentRecognized",
    "SlotFilled",
    "ToolCalled",
    "IdentityVerified",
    "Escalated",
    "TransferAttempted",
    "TransferResult",
    "MessageTaken",
    "PciPause",
    "WorkflowOutcome",
    "CallScored",
    "ServiceStarted",
    "MediaStats",
}


def to_entry(event: Event) -> Entry:
    """Split an event into clear metadata and sealed content."""
    data: dict[str, Any] = asdict(event)
    call_id = str(data.pop("call_id"))
    t = float(data.pop("t"))
    content = {k: data.pop(k) for k in list(data) if k in CONTENT_FIELDS}
    return Entry(
        kind=event.kind,
        call_id="" if call_id == "-" else call_id,
        meta=data,
        content=content or None,
        t=t,
    )


class AuditObserver:
    """Queues audited events and writes them from one thread.

    Args:
        log: The audit log (this observer is its only writer).
        on_failure: Called once, from the writer thread, when the log cannot be written.
        checkpoint_on_call_end: Sign a checkpoint after each call ends.
    """

    def __init__(
        self,
        log: AuditLog,
        on_failure: Callable[[AuditError], object] | None = None,
        *,
        checkpoint_on_call_end: bool = True,
    ) -> None:
        self.log = log
        self.healthy = True
        self.acknowledged = 0
        self._on_failure = on_failure
        self._checkpoint = checkpoint_on_call_end
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        """Event-bus listener: enqueue (never blocks the caller)."""
        if event.kind in AUDITED:
            with self._cond:
                self._pending += 1
            self._queue.put(event)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was written (or failed)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Write what is queued, sign a final checkpoint and stop the writer."""
        self._queue.put(None)
        self._thread.join(30)
        if self.healthy:
            try:
                self.log.checkpoint()
            except AuditError:
                _LOGGER.exception("final audit checkpoint failed")

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[Event] = []
            item = self._queue.get()
            while True:
                if item is None:
                    stop = True
                    break
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()

    def _write(self, batch: list[Event]) -> None:
        if not self.healthy:
            return  # failed closed: the server no longer takes calls
        try:
            self.log.append([to_entry(e) for e in batch])
            self.acknowledged += len(batch)
            if self._checkpoint and any(isinstance(e, CallEnded) for e in batch):
                self.log.checkpoint()
        except AuditError as exc:
            self.healthy = False
            _LOGGER.critical("audit log write failed, failing closed: %s", exc)
            if self._on_failure is not None:
                self._on_failure(exc)
