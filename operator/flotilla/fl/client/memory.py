"""Large freed blocks go back to the OS at once, so a client holds its model, not its past.

glibc serves allocations of `M_MMAP_THRESHOLD` bytes and more with their own mappings,
unmapped when freed; smaller ones come from the heap, which keeps what is freed. By
default that threshold moves: each time a mapped block is freed, glibc raises it to that
block's size (up to 32 MiB), so from the first training step on, every layer's gradient
and large activation is a heap block the heap keeps after the step. Measured on a 10M
parameter model trained inside its wire buffer: the client peaked at 1.7-1.9 model sizes
above its base with the moving threshold, 1.12 with it fixed at 1 MiB
(bench/round_bench.py). The price, a page fault per 4 KiB of each large block every time
it is allocated, is small next to the arithmetic that fills such a block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
DEFAULT_MMAP_THRESHOLD = 1 << 20
ENVIRONMENT_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"  # glibc's own tunable wins when set


def fix_mmap_threshold(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False where nothing was changed
    (threshold 0, the environment sets it, or the C library is not glibc)."""
    if threshold <= 0 or ENVIRONMENT_OVERRIDE in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    mallopt = getattr(libc, "mallopt", None)
    gnu_libc = getattr(libc, "gnu_get_libc_version", None)
    if mallopt is None or gnu_libc is None:  # musl and others: their allocators differ
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done
