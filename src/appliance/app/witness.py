"""Periodic signed checkpoints, and their push to an off-box witness (``[audit] witness_url``).

``audit verify`` fails when a record older than ``[audit] checkpoint_max_age_s`` is not under a
signed checkpoint (:mod:`appliance.audit.verify`), so the agent signs one every
``[audit] checkpoint_interval_s`` whenever the log grew since the last one (besides the one at
each call's end). A box without SSH cannot be collected by the Ansible ``checkpoints`` role, so
it pushes each new signed note to a witness instead: an HTTP(S) ``POST`` of the note text
(``text/plain; charset=utf-8``, the C2SP ``tlog-checkpoint`` body in a ``sumdb/note`` signed
note), oldest first. Any 2xx answer counts as received; the size last received is kept beside
the checkpoint file (``<checkpoint_file>.witness``) so a restart does not push everything again.

A push never blocks a call and never raises: it runs in a worker thread, a failure is logged
with the exception type only (no note, no URL, which may hold a token) and the same notes are
tried again at the next tick.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from appliance.audit.observer import AuditObserver
from appliance.audit.store import AuditError, AuditLog
from appliance.config.settings import AuditSettings

_LOGGER = logging.getLogger(__name__)

#: Seconds one ``POST`` may take before it counts as failed.
PUSH_TIMEOUT_S = 10.0


def checkpoint_if_grown(log: AuditLog) -> int | None:
    """Sign a checkpoint when the log has records no checkpoint covers yet.

    Returns:
        The new checkpoint's tree size, or ``None`` when the last one already covers the log.

    Raises:
        AuditError: The checkpoint could not be written.
    """
    last = log.last_checkpoint()
    if last is not None and last[0] >= log.size:
        return None
    return log.checkpoint().size


class WitnessPush:
    """Sends each signed checkpoint note of the checkpoint file to a witness URL, in order.

    Args:
        url: ``http://`` or ``https://`` URL (HTTPS is verified against the system CAs).
        checkpoint_file: The box's ``[audit] checkpoint_file`` (JSON lines ``{"size", "note"}``).
        timeout: Seconds per request.
    """

    def __init__(self, url: str, checkpoint_file: Path, timeout: float = PUSH_TIMEOUT_S) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError("witness URL must be http:// or https://")
        self.url = url
        self.checkpoint_file = Path(checkpoint_file)
        self.state_file = self.checkpoint_file.with_name(self.checkpoint_file.name + ".witness")
        self.timeout = timeout
        self.pushed = self._load_state()

    def _load_state(self) -> int:
        try:
            return int(self.state_file.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return -1

    def _save_state(self) -> None:
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            tmp.write_text(f"{self.pushed}\n", encoding="ascii")
            os.replace(tmp, self.state_file)
        except OSError as exc:
            _LOGGER.warning("witness push state not saved: %s", type(exc).__name__)

    def _pending(self) -> list[tuple[int, str]]:
        try:
            text = self.checkpoint_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out: list[tuple[int, str]] = []
        for line in text.split("\n")[:-1]:  # a torn last line (no newline) waits for later
            try:
                entry = json.loads(line)
                size, note = int(entry["size"]), str(entry["note"])
            except (ValueError, KeyError, TypeError):
                continue
            if size > self.pushed:
                out.append((size, note))
        out.sort(key=lambda item: item[0])
        return out

    def push_new(self) -> int:
        """POST every note newer than the last one received; stop at the first failure.

        Returns:
            How many notes the witness received now. Never raises: failures are logged
            (exception type only) and retried at the next call.
        """
        try:
            pending = self._pending()
        except (OSError, UnicodeDecodeError) as exc:
            _LOGGER.warning("witness push: checkpoint file unreadable: %s", type(exc).__name__)
            return 0
        sent = 0
        for size, note in pending:
            request = urllib.request.Request(
                self.url,
                data=note.encode("utf-8"),
                method="POST",
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, OSError, ValueError) as exc:
                _LOGGER.warning("witness push failed (%s); retried later", type(exc).__name__)
                break
            if not 200 <= status < 300:
                _LOGGER.warning("witness push refused with HTTP %d; retried later", status)
                break
            self.pushed = size
            sent += 1
        if sent:
            self._save_state()
        return sent


async def checkpoint_loop(observer: AuditObserver, settings: AuditSettings) -> None:
    """Every ``checkpoint_interval_s``: sign a checkpoint if the log grew, then push new notes.

    Runs until cancelled. A failed checkpoint is logged; the observer's own fail-closed path
    handles a log that can no longer be written (no checkpoint is tried after it failed).
    """
    push = (
        WitnessPush(settings.witness_url, settings.checkpoint_file)
        if settings.witness_url
        else None
    )
    while True:
        if observer.healthy:
            try:
                await asyncio.to_thread(checkpoint_if_grown, observer.log)
            except (AuditError, sqlite3.Error) as exc:
                _LOGGER.error("periodic audit checkpoint failed: %s", type(exc).__name__)
        if push is not None:
            await asyncio.to_thread(push.push_new)
        await asyncio.sleep(settings.checkpoint_interval_s)
