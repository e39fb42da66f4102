"""Process helpers for the bench: memory read from /proc, process trees, orderly stops."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self


def status_kib(pid: int, field: str) -> int:
    """A `/proc/PID/status` size in KiB (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) has used; 0 once it is gone.
    Unlike wall time, hardly moved by other work on the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    """The process's proportional set size in KiB: shared pages (torch's libraries) counted
    once across the processes sharing them, so a sum over processes is memory really used."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree(pid: int) -> list[int]:
    """The process and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            todo += [int(c) for c in children]
    return found


class PeriodicSampler:
    """Calls `sample` every `period` seconds in a thread while in use (`with`)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError


class PeakSampler(PeriodicSampler):
    """Calls `measure` (KiB) every `period` seconds in a thread while in use; keeps the peak."""

    def __init__(self, measure: Callable[[], int], period: float) -> None:
        super().__init__(period)
        self.measure, self.peak_kib = measure, 0

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, self.measure())


def tree_rss_peak(pid: int, period: float = 0.2) -> PeakSampler:
    """The peak of a process tree's summed RSS."""
    return PeakSampler(lambda: sum(status_kib(p, "VmRSS") for p in tree(pid)), period)


def pss_peak(pids: list[int], period: float = 0.5) -> PeakSampler:
    """The peak of some processes' summed PSS."""
    return PeakSampler(lambda: sum(pss_kib(p) for p in pids), period)


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def stop_group(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group the bench started (setsid), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
