"""Give memory the C allocator holds but no longer uses back to the operating system.

glibc's malloc keeps freed memory in its arenas (one per thread that allocated: the event
loop, the engine loop, onnxruntime's and llguidance's workers) for reuse, so a server's
resident memory ratchets up with the spread of request shapes it has seen, although the
memory in use does not grow. `malloc_trim(0)` returns every free page of every arena;
AsyncEngine calls it once its loop has been idle for a second after work
(runtime.async_engine). Elsewhere (another C library, or none to load) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _glibc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # e.g. musl: it has no malloc_trim, and returns memory by itself
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def release_free_memory() -> bool:
    """malloc_trim(0) where the C library is glibc; True if memory was given back."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
