"""Large freed blocks go back to the OS at once, so a client holds its model, not its past.

glibc serves allocations of `M_MMAP_THRESHOLD` bytes and more with their own mappings,
unmapped when freed; smaller ones come from the heap, which keeps what is freed. By
default that threshold moves: each time a mapped block is freed, glibc raises it to that
block's size (up to 32 MiB), so from the first training step on, every layer's gradient
is a heap block, and the heap keeps a varying amount of them. Fixed at 1 MiB, every
gradient is a fresh mapping, paid for in page faults; torch's huge-page option
(THP_MEM_ALLOC_ENABLE: 2 MiB-aligned blocks advised as huge pages) makes that one fault
per 2 MiB instead of one per 4 KiB.

Measured (bench/round_bench.py, 8 clients, one SGD step on one example, 2026-11-30):
client peak above its base 1.73-1.93 model sizes (10M parameters) and 1.75-1.92 (50M)
with glibc's moving threshold; 1.13 and 1.09 with this, round overhead unchanged. The
price is in the step: 10 -> 15 ms (10M) and 45 -> 50 ms (50M) for a step on one example,
where the arithmetic is least; without huge pages (a kernel with THP "never") it would
be 24 and 110 ms.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
DEFAULT_MMAP_THRESHOLD = 1 << 20
ENVIRONMENT_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"  # glibc's own tunable wins when set
# torch's CPU allocator: blocks of 2 MiB and more are 2 MiB-aligned and advised as huge
# pages, so a fresh mapping costs one fault per 2 MiB instead of one per 4 KiB.
TORCH_HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def return_large_blocks_to_the_os(threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes, and ask torch for huge pages for
    its large tensors (THP_MEM_ALLOC_ENABLE; effective only before torch is imported).
    False where nothing was changed: threshold 0, the environment sets the threshold, or
    the C library is not glibc."""
    if threshold <= 0 or ENVIRONMENT_OVERRIDE in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: no library search at start-up
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    gnu_libc = getattr(libc, "gnu_get_libc_version", None)
    if mallopt is None or gnu_libc is None:  # musl and others: their allocators differ
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if done:
        os.environ.setdefault(TORCH_HUGE_PAGES, "1")
    log.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done
