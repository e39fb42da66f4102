"""The client fixes glibc's mmap threshold: freed large blocks leave the process at once."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from flotilla.fl.client.memory import return_large_blocks_to_the_os

# A process that frees a 4 MiB block (which raises glibc's moving threshold), then
# allocates and fills 16 more, frees all but the last, and prints how much of the 64 MiB
# is still resident.
PROBE = """
import ctypes, os, sys
from flotilla.fl.client.memory import return_large_blocks_to_the_os
print(return_large_blocks_to_the_os(int(sys.argv[1])), os.environ.get("THP_MEM_ALLOC_ENABLE"))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
size = 4 << 20
first = libc.malloc(size); ctypes.memset(first, 1, size); libc.free(first)
before = rss()
blocks = [libc.malloc(size) for _ in range(16)]
for block in blocks:
    ctypes.memset(block, 1, size)
for block in blocks[:-1]:
    libc.free(block)
print(rss() - before)
"""

glibc_linux = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)


def _kept_after_free(threshold: int) -> tuple[bool, str, int]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MALLOC_MMAP_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] == "True", out[1], int(out[2])


@glibc_linux
def test_freed_large_blocks_leave_the_process_with_the_threshold_fixed() -> None:
    fixed, huge_pages, kept = _kept_after_free(1 << 20)
    assert fixed and huge_pages == "1"  # torch, imported later, maps huge pages
    assert kept <= 6 << 20  # the one block still held, and change
    moving, huge_pages, kept_moving = _kept_after_free(0)
    assert not moving and huge_pages == "None"
    # glibc's own moving threshold keeps the freed blocks in the heap, under the live one.
    assert kept_moving >= 48 << 20


def test_nothing_changes_when_turned_off_or_set_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert return_large_blocks_to_the_os(0) is False
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert return_large_blocks_to_the_os(1 << 20) is False
