"""The receive buffers: a fixed few, made on first use and handed out in arrival order.

How a buffer is held (pace, yielding, one per site) is the intake's business (intake.py);
this only keeps the buffers, each with the fence of its last reader (fence.py), and the
line of uploads waiting for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from flotilla.fl.aggregator.fence import ReadFence
from flotilla.fl.wire import Layout, TensorViews

# At most two by default (spec.limits.receiveBuffers), however many clients a round samples.
# Memory is the design's promise (one model, not clients x model), and a buffer is busy only
# while bytes arrive: it is handed on as its update goes to the fold, whose reading the next
# body follows behind (fence.py), so one buffer keeps the fold busy while the next body
# arrives. Only the first is made up front; another is made for a waiting upload when every
# holder's own link is what holds it up (pace.py's slow link: the aggregator could take a
# second body at once without slowing the first), so a LAN keeps one model of receive memory
# and slow links get bodies arriving side by side. When clients outnumber buffers, fairness
# comes from how a buffer is held, not from more of them: a site holds at most one; a slow
# body keeps a floor rate or is cut; and while others wait, a holder that would not arrive
# before its round closes yields (503, so the client retries). A holder on pace keeps its
# buffer: cutting it would throw its bytes away. Resumable uploads must keep this: a paused
# upload holds no pool buffer between connections, and its site's one slot and its pace
# carry over to the resumed one.
RECEIVE_BUFFERS = 2


@dataclass(frozen=True)
class Slot:
    """A receive buffer and how far its last holder has read it: write only below that."""

    buffer: memoryview
    fence: ReadFence
    _kept: _KeptViews = field(default_factory=lambda: _KeptViews(), compare=False, repr=False)

    def views(self, layout: Layout, offsets: Mapping[str, tuple[int, int]]) -> TensorViews:
        """`layout`'s tensors over this buffer's data at `offsets` (a body's, relative to
        the buffer's start)."""
        kept = self._kept
        if kept.views is None or kept.layout is not layout or kept.offsets != offsets:
            kept.layout, kept.offsets = layout, dict(offsets)
            kept.views = layout.views(self.buffer, offsets=offsets, base=0)
        return kept.views

    def refenced(self, fence: ReadFence) -> Slot:
        """This buffer behind another reader's fence."""
        return Slot(self.buffer, fence, self._kept)


@dataclass
class _KeptViews:
    """The last tensor views made over a buffer, with the offsets they were made for: bodies
    mostly come in the layout's order, and a torch view per tensor per upload was ~7% of the
    event loop at 1,000 sites (bench/README.md, "The collector"). Kept across fences
    (`Slot.refenced`): the buffer is the same."""

    layout: Layout | None = None
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    views: TensorViews | None = None


class ReceivePool:
    def __init__(self, size: int, *, count: int = RECEIVE_BUFFERS) -> None:
        self._size = size
        self._count = count
        self._made = 0
        self._free: list[Slot] = []
        self._waiters: deque[asyncio.Future[Slot]] = deque()

    @property
    def waiting(self) -> int:
        """Uploads in line for a buffer."""
        return len(self._waiters)

    @property
    def count(self) -> int:
        """The most buffers it makes."""
        return self._count

    @property
    def made(self) -> int:
        return self._made

    @property
    def can_grow(self) -> bool:
        return self._made < self._count

    def get_nowait(self) -> Slot | None:
        """A free buffer (the first is made on first use), or None when all are held."""
        if self._free:
            return self._free.pop()
        if self._made == 0:
            return self._make()
        return None

    def grow(self) -> bool:
        """One more buffer, for the longest waiting upload, if fewer than `count` exist and
        one waits. True when that happened."""
        if not self._waiters or not self.can_grow:
            return False
        return self.give(self._make())

    def _make(self) -> Slot:
        self._made += 1
        return Slot(memoryview(bytearray(self._size)), ReadFence.clear(self._size))

    def queue(self) -> asyncio.Future[Slot]:
        """A place in line: the future gets a buffer when one is given back."""
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def abandon(self, waiter: asyncio.Future[Slot]) -> bool:
        """The waiter gave up; a buffer handed over just as it did is passed on. True when
        that happened (the line changed)."""
        handed = waiter.done() and not waiter.cancelled() and waiter.exception() is None
        if handed:
            self.give(waiter.result())
        waiter.cancel()
        return handed

    def leave(self, waiter: asyncio.Future[Slot]) -> None:
        """Out of the line. One that was handed a buffer is out already (`give` took it off
        the front): looking for it would scan the whole line and then build the ValueError's
        message from the future's repr, ~2% of the loop at 1,000 sites."""
        if waiter.done() and not waiter.cancelled():
            return
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def give(self, slot: Slot) -> bool:
        """To the longest waiting upload (first come, first served), else back to the pool.
        True when a waiter took it (one waiter fewer)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return True
        self._free.append(slot)
        return False
