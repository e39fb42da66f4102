"""The client fixes glibc's mmap threshold: freed large blocks leave the process at once."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from flotilla.fl.client.memory import fix_mmap_threshold

# A process that frees a 4 MiB block (which raises glibc's moving threshold), then
# allocates and fills 16 more, frees all but the last, and prints how much of the 64 MiB
# is still resident.
PROBE = """
import ctypes, sys
from flotilla.fl.client.memory import fix_mmap_threshold
print(fix_mmap_threshold(int(sys.argv[1])))
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


def _kept_after_free(threshold: int) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(threshold)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0] == "True", int(out[1])


@glibc_linux
def test_freed_large_blocks_leave_the_process_with_the_threshold_fixed() -> None:
    fixed, kept = _kept_after_free(1 << 20)
    assert fixed
    assert kept <= 6 << 20  # the one block still held, and change
    moving, kept_moving = _kept_after_free(0)
    assert not moving
    # glibc's own moving threshold keeps the freed blocks in the heap, under the live one.
    assert kept_moving >= 48 << 20


def test_nothing_changes_when_turned_off_or_set_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fix_mmap_threshold(0) is False
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert fix_mmap_threshold(1 << 20) is False
