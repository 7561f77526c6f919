"""Giving an ended call's memory back: a full garbage collection, then glibc ``malloc_trim(3)``.

Measured (2-core x86_64, 30 calls of failed transfers, two at a time): without this the
worker's RSS grew 50-70 MB per pair of calls and never came back. Each call's pipeline dies
as reference cycles (pipecat processors point at each other) holding its ONNX sessions and
audio buffers; CPython's generational collector only runs a full collection once the objects
surviving since the last one exceed a quarter of all long-lived objects, and the models'
half a million objects pushed that far out (8 full collections in a whole run). Then glibc
keeps the freed pages in its per-thread arenas.

So the worker freezes everything alive after start-up (:func:`freeze_startup_objects`: the
models and libraries, about 530,000 objects, are never scanned again) and, after each call,
runs a full collection, now over the calls' objects only (about 40 ms), then trims the heap.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def freeze_startup_objects() -> int:
    """Collect, then move every object alive now out of the collector's reach (``gc.freeze``).

    Call once, after the models are loaded and warmed. Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def return_freed_memory() -> None:
    """Free an ended call's cycles and give the freed heap back (blocking, about 40 ms).

    Holds the GIL while it collects; run it off the event loop (``asyncio.to_thread``). The
    heap trim is a no-op where the C library is not glibc.
    """
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
