"""Returning freed heap memory to the system after each call (glibc ``malloc_trim(3)``)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def return_freed_memory() -> None:
    """Give the heap memory freed by an ended call back to the system (glibc ``malloc_trim``).

    Each call builds and drops ONNX sessions and audio buffers on worker threads; glibc keeps
    the freed pages in its per-thread arenas, so the worker's RSS climbed about 20 MB per call
    without it (measured over 30 calls; Python objects stayed flat). Blocking for a few ms:
    run it off the event loop. A no-op where the C library is not glibc.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
