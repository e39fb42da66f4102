"""What bench/load_sites.py samples of the aggregator and the host while a run goes: the
aggregator's CPU seconds, RSS, open descriptors and threads and the worker processes' CPU
seconds, from /proc every 0.1 s in a thread (`Watch`); the bytes the kernel holds queued for
the aggregator's connections (`ss`, every tenth sample, as it starts a process); the host's
TCP buffer memory, and how often the host entered TCP memory pressure. Linux only.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from load_sites_config import KIB
from procs import PeriodicSampler, status_kib


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Sample(NamedTuple):
    at: float  # wall-clock time
    cpu: float  # the aggregator's CPU seconds so far
    rss: int  # KiB
    fds: int
    threads: int
    generator: float  # the workers' CPU seconds so far
    tcp: int  # KiB of kernel memory in TCP buffers, the whole host (/proc/net/sockstat)
    sockets: int  # KiB queued in the aggregator's client sockets (ss: receive + send), or -1


class Watch(PeriodicSampler):
    """Samples the aggregator (CPU, RSS, descriptors, threads), the workers' CPU and the
    host's TCP buffer memory from /proc every `period` seconds, in a thread."""

    def __init__(self, pid: int, port: int, period: float = 0.1) -> None:
        super().__init__(period)
        self.pid, self.port = pid, port
        self.workers: list[int] = []
        self.rows: list[Sample] = []

    def sample(self) -> None:
        pid, count = self.pid, len(self.rows) + 1
        self.rows.append(
            Sample(
                at=time.time(),
                cpu=cpu_seconds(pid),
                rss=status_kib(pid, "VmRSS"),
                fds=open_fds(pid),
                threads=status_kib(pid, "Threads"),
                generator=sum(cpu_seconds(w) for w in self.workers),
                tcp=tcp_kib(),
                sockets=socket_kib(self.port) if count % 10 == 0 else -1,
            )
        )

    def at(self, moment: float) -> Sample:
        """The last sample taken before `moment` (the first one if none was)."""
        before = [row for row in self.rows if row.at <= moment]
        return before[-1] if before else self.rows[0]

    def connected(self, clients: int) -> Sample:
        """The first sample with a descriptor per client: every site connected, round 1 not
        yet open (it opens once every site has reported)."""
        return next((row for row in self.rows if row.fds >= clients), self.rows[-1])

    def peak(self, column: str) -> int:
        return max((int(getattr(row, column)) for row in self.rows), default=0)


def tcp_kib() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // KIB
    return 0


def socket_kib(port: int) -> int:
    """Bytes queued in the kernel for the aggregator's side of its connections, in KiB."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    total = 0
    for part in out.split("skmem:(")[1:]:
        fields = dict(
            (item[0], int(item[1:])) for item in part.split(")")[0].split(",") if item[1:].isdigit()
        )
        total += fields.get("r", 0) + fields.get("w", 0)
    return total // KIB


def tcp_memory_pressures() -> int:
    """How often the host's TCP entered memory pressure (tcp_mem) since boot."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names[0] == "TcpExt:" and "TCPMemoryPressures" in names:
            return int(values[names.index("TCPMemoryPressures")])
    return 0
