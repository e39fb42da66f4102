"""A receive buffer handed on while the fold still reads it, and how far it may be written.

A checked upload is folded tensor by tensor at memory speed; the next upload's bytes come
at wire speed, in the same order (the model's layout). So the intake hands a buffer on as
its update goes to the fold (intake.py), and its next holder writes only below what the
fold has read (`ReadFence`). One buffer then keeps the fold busy while the next body
arrives, as two did, for one model of aggregator memory instead of two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


class ReadFence:
    """How many bytes from a buffer's start its last holder is done with: the new holder
    may write below that. Lives on the event loop; `ReadProgress` moves it from the fold's
    thread."""

    def __init__(self, size: int, *, read: int = 0) -> None:
        self.size = size
        self._read = min(read, size)
        self._moved = asyncio.Event()

    @classmethod
    def clear(cls, size: int) -> ReadFence:
        """The fence of a buffer nobody reads: all of it may be written."""
        return cls(size, read=size)

    @property
    def read(self) -> int:
        return self._read

    def advance(self, read: int) -> None:
        if read > self._read:
            self._read = min(read, self.size)
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()

    def release(self) -> None:
        """The last holder reads no more of the buffer."""
        self.advance(self.size)

    async def reach(self, position: int) -> None:
        """Until the first `position` bytes may be written."""
        while self._read < min(position, self.size):
            await self._moved.wait()


class ReadProgress:
    """Called by an aggregation rule with each tensor it is done reading (RoundAggregate.add's
    `release`), in the fold's worker thread: moves the fence over the longest run of tensors
    read from the buffer's start."""

    def __init__(
        self,
        fence: ReadFence,
        offsets: Mapping[str, tuple[int, int]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # The sender chose the order of the tensors in its body; the fence follows bytes.
        self._spans = sorted(offsets.items(), key=lambda item: item[1])
        self._fence = fence
        self._loop = loop
        self._read: set[str] = set()
        self._next = 0  # spans before this one are read
        self._end = 0  # bytes read from the start, as far as the fold knows
        # One wake-up of the loop in flight at a time: the callback moves the fence to the
        # latest `_end`, so a fold of many small tensors does not write to the loop's
        # self-pipe once per tensor.
        self._scheduled = False

    def __call__(self, name: str) -> None:
        self._read.add(name)
        start = self._next
        while self._next < len(self._spans) and self._spans[self._next][0] in self._read:
            self._next += 1
        if self._next > start:
            self._end = self._spans[self._next - 1][1][1]
            # Set `_end` before reading `_scheduled`; `_advance` clears it before reading
            # `_end`: either this sees it set and `_advance` then reads the new end, or
            # this schedules another.
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon_threadsafe(self._advance)

    def _advance(self) -> None:
        self._scheduled = False
        self._fence.advance(self._end)
