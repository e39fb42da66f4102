"""The receive buffers: a fixed few, made on first use and handed out in arrival order.

How a buffer is held (pace, yielding, one per site) is the intake's business (intake.py);
this only keeps the buffers and the line of uploads waiting for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

# Two, however many clients a round samples. Memory is the design's promise (one model, not
# clients x model), and a buffer is busy only while bytes arrive and the fold runs: at LAN
# speeds that is milliseconds, so two keep the fold busy while the next body arrives.
# When clients outnumber buffers, fairness comes from how a buffer is held, not from more of
# them: a site holds at most one; a slow body keeps a floor rate or is cut; and while others
# wait, a holder that would not arrive before its round closes yields (503, so the client
# retries). A holder on pace keeps its buffer: cutting it would throw its bytes away.
# Resumable uploads must keep this: a paused upload holds no pool buffer between
# connections, and its site's one slot and its pace carry over to the resumed one.
RECEIVE_BUFFERS = 2


class ReceivePool:
    def __init__(self, size: int, *, count: int = RECEIVE_BUFFERS) -> None:
        self._size = size
        self._count = count
        self._made = 0
        self._free: list[memoryview] = []
        self._waiters: deque[asyncio.Future[memoryview]] = deque()

    @property
    def waiting(self) -> int:
        """Uploads in line for a buffer."""
        return len(self._waiters)

    def get_nowait(self) -> memoryview | None:
        """A free buffer (made if fewer than `count` exist), or None when all are held."""
        if self._free:
            return self._free.pop()
        if self._made < self._count:
            self._made += 1
            return memoryview(bytearray(self._size))
        return None

    def queue(self) -> asyncio.Future[memoryview]:
        """A place in line: the future gets a buffer when one is given back."""
        waiter: asyncio.Future[memoryview] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def abandon(self, waiter: asyncio.Future[memoryview]) -> bool:
        """The waiter gave up; a buffer handed over just as it did is passed on. True when
        that happened (the line changed)."""
        handed = waiter.done() and not waiter.cancelled() and waiter.exception() is None
        if handed:
            self.give(waiter.result())
        waiter.cancel()
        return handed

    def leave(self, waiter: asyncio.Future[memoryview]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def give(self, buffer: memoryview) -> bool:
        """To the longest waiting upload (first come, first served), else back to the pool.
        True when a waiter took it (one waiter fewer)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(buffer)
                return True
        self._free.append(buffer)
        return False
