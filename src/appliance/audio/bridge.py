"""Thread-safe audio bridge between the pjsua2 media thread and the asyncio loop.

pjsua2's conference bridge calls :class:`AudioMediaPort` callbacks every 20 ms from its clock
thread. Those callbacks must never block on the asyncio side, so each call owns one
:class:`AudioBridge`: a bounded inbound queue (caller audio, 20 ms frames of 16-bit mono PCM
at the bridge clock rate) and an outbound queue of 20 ms chunks, each tagged interruptible or
not. The media thread only appends/pops under a lock held for a few microseconds; a missing
outbound chunk is replaced by silence, never waited for.

Barge-in: :meth:`AudioBridge.clear_interruptible` drops queued interruptible agent audio, so
the wire goes quiet at the next 20 ms tick. Protected audio (the AI disclosure) is kept.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: Packetisation time of the bridge and of G.711 RTP, in milliseconds.
PTIME_MS = 20


@dataclass
class BridgeStats:
    """Counters for one call's bridge (frames are 20 ms)."""

    rx_frames: int = 0
    rx_dropped: int = 0
    tx_frames: int = 0
    tx_voiced_frames: int = 0
    tx_underruns: int = 0
    cleared_frames: int = 0
    #: Exceptions caught inside the media callbacks (they never reach pjmedia's clock thread).
    callback_errors: int = 0


class AudioBridge:
    """Bounded PCM queues between the media thread and asyncio.

    Args:
        sample_rate: Bridge clock rate in Hz (pjsua2 ``medConfig.clockRate``), e.g. 16000.
        max_inbound_ms: Inbound backlog bound; the oldest frames are dropped beyond it.
        on_inbound: Called (from the media thread) after a frame was queued; it must only
            schedule work, e.g. ``loop.call_soon_threadsafe``.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        max_inbound_ms: int = 2000,
        on_inbound: Callable[[], None] | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_bytes = sample_rate * PTIME_MS // 1000 * 2
        self._silence = bytes(self.frame_bytes)
        self._inbound: deque[bytes] = deque(maxlen=max(1, max_inbound_ms // PTIME_MS))
        self._outbound: deque[tuple[bytes, bool]] = deque()
        self._lock = threading.Lock()
        self.on_inbound = on_inbound
        self.stats = BridgeStats()
        self.last_tx_voiced_at: float | None = None
        self.closed = False

    # -- media thread side -------------------------------------------------------------------

    def put_inbound(self, pcm: bytes) -> None:
        """Queue one received frame (media thread). Never blocks."""
        if self.closed:
            return
        with self._lock:
            if len(self._inbound) == self._inbound.maxlen:
                self.stats.rx_dropped += 1
            self._inbound.append(pcm)
            self.stats.rx_frames += 1
        if self.on_inbound is not None:
            self.on_inbound()

    def take_outbound(self) -> bytes:
        """Return the next 20 ms frame to send (media thread); silence when nothing is queued."""
        with self._lock:
            if self._outbound:
                chunk, _ = self._outbound.popleft()
                self.stats.tx_frames += 1
                self.stats.tx_voiced_frames += 1
                self.last_tx_voiced_at = time.monotonic()
                return chunk
        self.stats.tx_underruns += 1
        return self._silence

    # -- asyncio side --------------------------------------------------------------------------

    def drain_inbound(self) -> list[bytes]:
        """Take all queued inbound frames, oldest first."""
        with self._lock:
            frames = list(self._inbound)
            self._inbound.clear()
        return frames

    def put_outbound(self, pcm: bytes, *, interruptible: bool = True) -> None:
        """Queue agent audio (16-bit mono PCM at :attr:`sample_rate`) as 20 ms chunks.

        A trailing partial chunk is padded with silence.
        """
        if self.closed or not pcm:
            return
        size = self.frame_bytes
        if len(pcm) % size:
            pcm = pcm + bytes(size - len(pcm) % size)
        chunks = [(pcm[i : i + size], interruptible) for i in range(0, len(pcm), size)]
        with self._lock:
            self._outbound.extend(chunks)

    @property
    def queued_ms(self) -> int:
        """Agent audio queued but not yet sent, in ms."""
        return len(self._outbound) * PTIME_MS

    def clear_interruptible(self) -> int:
        """Drop queued interruptible agent audio (barge-in); returns the dropped ms."""
        with self._lock:
            kept = deque(c for c in self._outbound if not c[1])
            dropped = len(self._outbound) - len(kept)
            self._outbound = kept
            self.stats.cleared_frames += dropped
        return dropped * PTIME_MS

    def close(self) -> None:
        """Stop accepting audio in both directions."""
        self.closed = True
        with self._lock:
            self._outbound.clear()
            self._inbound.clear()


def loop_notifier(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
    """Build an ``on_inbound`` callback that sets ``event`` on ``loop`` (thread-safe)."""

    def notify() -> None:
        if not event.is_set():
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # loop closed during shutdown
                pass

    return notify
