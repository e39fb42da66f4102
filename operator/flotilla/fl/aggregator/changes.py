"""The engine's time and its wake-ups: a clock to read and time out on, and a feed of changes.

Every part of the round engine that changes something a long-poll may wait for (the round
loop, a client's task, /v1/status) bumps the one `Changes` it was given; whoever waits,
waits for the next bump or a time on the clock, whichever comes first. All waiting goes
through the clock, so a test with a fake clock plays whole rounds without sleeping.

A waiting client's task changes only when a phase that hands out work begins (training,
evaluating, the end), so /v1/task long-polls wait for those changes alone: were each folded
update to wake them, the k-th update of a round would wake the k sites already waiting,
O(sites^2) a round (at 1,000 sites: 25-33 s of CPU a round against 3.4-5.6 s,
bench/load_sites.py). Nor does a round's close wake them: a waiting site waits on after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol


class Clock(Protocol):
    """Seconds that only go forward (`clock()`), and a timeout measured in them."""

    def __call__(self) -> float: ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[Any]:
        """Raises TimeoutError in its block once `seconds` passed on this clock."""
        ...


class MonotonicClock:
    """The process's monotonic clock (the event loop's): what the aggregator runs on."""

    def __call__(self) -> float:
        return time.monotonic()

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[Any]:
        return asyncio.timeout(seconds)


class Changes:
    """A sequence number bumped on each change, and waiting for the next one."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._seq = 0
        self._changed = asyncio.Event()
        self._work_changed = asyncio.Event()
        self._closed = False

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def closed(self) -> bool:
        """The aggregator is stopping: nothing will change any more."""
        return self._closed

    def close(self) -> None:
        """Wake every wait; the long-polls (which check `closed` before they wait) answer
        now, so the HTTP server's shutdown does not wait them out (main.py)."""
        self._closed = True
        self.bump(work=True)

    def bump(self, *, work: bool = False) -> None:
        """A change; `work`: one that may give a waiting client work, which also wakes
        `wait(work=True)`."""
        self._seq += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if work:
            changed, self._work_changed = self._work_changed, asyncio.Event()
            changed.set()

    async def wait(self, timeout: float, *, work: bool = False) -> None:
        """Until the next bump (with `work`: the next that may give a client work), or
        `timeout` seconds on the clock."""
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the
        # event is set, and the engine then ran on to its round deadline instead of stopping.
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(timeout):
                await (self._work_changed if work else self._changed).wait()
