"""Giving the memory a load freed back to the operating system.

Loading an index decodes every item through temporary numpy arrays several times the size of what is
kept (records, sorted copies, grouped copies: ~90 B an item against ~16 B kept at 64 bits). glibc's
allocator serves arrays of this size from its heap once it has freed one of them (its mmap threshold
rises to the largest freed block, up to 32 MiB), and freed heap pages below live allocations stay part
of the process's RSS. ``malloc_trim(0)`` returns them: measured at 1 M items, a worker's RSS growth
went from 87 B to 16 B an item (``docs/memory.md``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def release_freed_memory() -> None:
    """Return freed heap pages to the OS where the C library can (glibc); elsewhere nothing to do."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
