"""A round's course, for `load_sites.py --timeline`: how busy the aggregator's event loop
was and how far the sites had got, step by step from the round's opening.

The loop's busy share comes from its thread's on-CPU nanoseconds (/proc/PID/task/PID/
schedstat, the main thread, which runs the event loop), sampled every 5 ms in a thread
(`LoopClock`); the sites' progress from the workers' events (when each site had its model
and when its upload was answered). Together they show which part of a round its overhead
is: the dispatch (models out, hidden behind training while it ends first), the wait for
training, or the intake (uploads in, one at a time after training).
"""

from __future__ import annotations

import bisect
import time
from pathlib import Path
from typing import Any

from procs import PeriodicSampler

STEP_S = 0.1
PERIOD_S = 0.005


def loop_seconds(pid: int) -> float:
    """On-CPU seconds of the process's main thread so far; 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9
    except OSError:
        return 0.0


class LoopClock(PeriodicSampler):
    """The main thread's on-CPU seconds against wall time, every `period` seconds, in a thread."""

    def __init__(self, pid: int, period: float = PERIOD_S) -> None:
        super().__init__(period)
        self.pid = pid
        self.times: list[float] = []  # wall times, ascending
        self.seconds: list[float] = []  # the thread's on-CPU seconds at each

    def sample(self) -> None:
        self.times.append(time.time())
        self.seconds.append(loop_seconds(self.pid))

    def busy(self, start: float, end: float) -> float:
        """The loop's share of a core between two wall times (between the samples nearest
        inside them); NaN where fewer than two samples fall inside."""
        times, seconds = self.times, self.seconds
        first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, end) - 1
        if last <= first:
            return float("nan")
        return (seconds[last] - seconds[first]) / (times[last] - times[first])


def _counts(moments: list[float], start: float, steps: int) -> list[int]:
    counts = [0] * steps
    for moment in moments:
        step = int((moment - start) / STEP_S)
        if 0 <= step < steps:
            counts[step] += 1
    return counts


def timeline(history: list[dict[str, Any]], tallies: list[dict[str, Any]], clock: LoopClock) -> str:
    """Per round after the first: the loop's busy % and the sites that had their model and
    had their upload answered, in each 100 ms from the round's opening to its close."""
    events = [e for t in tallies for e in t["events"]]
    lines = []
    for record in history[1:] or history:
        start = record["started_at"]
        steps = int(record["duration_seconds"] / STEP_S) + 1
        mine = [e for e in events if e["round"] == record["round"]]
        busy = [clock.busy(start + i * STEP_S, start + (i + 1) * STEP_S) for i in range(steps)]
        rows = {
            "loop busy %": [f"{share * 100:.0f}" if share == share else "-" for share in busy],
            "models in": _counts([e["model"] for e in mine if "model" in e], start, steps),
            "uploads answered": _counts([e["done"] for e in mine if "done" in e], start, steps),
        }
        lines.append(
            f"round {record['round']} ({record['duration_seconds']:.2f} s), "
            f"each 100 ms from its opening:"
        )
        lines += [f"  {name:>16} " + " ".join(f"{v:>4}" for v in row) for name, row in rows.items()]
    return "\n".join(lines)
