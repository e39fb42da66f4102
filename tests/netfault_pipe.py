"""One proxied connection for tests/netfault.py: two pumps that cap, delay, deliver, reset.

Each direction is read a piece at a time, pays a token bucket, waits in a queue for its
delay and is written on; the queue holds about what the link holds in flight. A reset is
SO_LINGER 0, then close: the kernel sends RST and the peer sees ECONNRESET.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import math
import socket
import struct
import termios
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.netfault import Cause, Direction, NetFault

PIECE = 16 << 10  # bytes read at once, and the token bucket's burst
UNCAPPED_PIECE = 256 << 10


class Bucket:
    """A token bucket of one piece's burst; the rate is passed on every take (links change)."""

    def __init__(self) -> None:
        self.tokens = float(PIECE)
        self.last = time.monotonic()

    async def take(self, count: int, rate: float | None) -> None:
        if rate is None:
            return
        now = time.monotonic()
        self.tokens = min(float(PIECE), self.tokens + (now - self.last) * rate) - count
        self.last = now
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / rate)


def reset_now(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST and drops anything unsent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def flushed(writer: asyncio.StreamWriter, *, within: float = 5.0) -> None:
    """Until the peer's kernel has every byte written (nothing left in our send queue), so
    a reset after it does not drop them."""
    await writer.drain()
    sock = writer.get_extra_info("socket")
    end = time.monotonic() + within
    while sock is not None and time.monotonic() < end:
        unsent = array.array("i", [0])
        with contextlib.suppress(OSError):
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, unsent)  # SIOCOUTQ on Linux
        if unsent[0] == 0:
            return
        await asyncio.sleep(0.001)


class Pipe:
    """One client connection and its dial to the server: two pumps, one per direction."""

    def __init__(self, proxy: NetFault, number: int, client: asyncio.StreamWriter) -> None:
        self.proxy, self.number, self.client = proxy, number, client
        self.server: asyncio.StreamWriter | None = None
        self.plan = proxy.plan_for(number)
        self.gapped = False  # a blackhole swallowed bytes: the stream can only be reset now
        self.done = False
        self.pumps: list[asyncio.Task[None]] = []

    def reset(
        self, direction: Direction | None = None, offset: int = 0, *, cause: Cause = "fault"
    ) -> None:
        if self.done:
            return
        self.done = True
        for task in self.pumps:  # a pump may wait on a full queue that nothing will empty
            if task is not asyncio.current_task():
                task.cancel()
        for writer in (self.client, self.server):
            if writer is not None:
                reset_now(writer)
        if cause == "fault":
            self.proxy.counters.resets += 1
        elif cause == "peer":
            self.proxy.counters.peer_resets += 1
        if direction is not None:
            self.proxy.counters.reset_at.append((self.number, direction, offset))

    async def pump(
        self, direction: Direction, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read, pay the bucket, hold for the delay, deliver. The queue holds about what the
        link holds in flight (rate x delay), so a sender is held back as on a real link."""
        links = self.proxy.links
        link = links[direction]
        depth = 4 + math.ceil(link.rate * link.delay / PIECE) if link.rate else 64
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=depth)
        deliver = asyncio.ensure_future(self._deliver(direction, queue, writer))
        deliver.add_done_callback(self._delivered)
        bucket = Bucket()
        try:
            while not deliver.done() and not self.done:
                rate = links[direction].rate
                piece = await reader.read(PIECE if rate else UNCAPPED_PIECE)
                if self.proxy.cut_mode == "blackhole" or self.gapped:
                    self.gapped = True  # swallowed: nothing of it is delivered, ever
                    if not piece:
                        break
                    continue
                await bucket.take(len(piece), rate)
                await queue.put((time.monotonic() + links[direction].delay, piece))
                if not piece:
                    break
            if not self.gapped:
                await deliver
        finally:
            deliver.cancel()

    def _delivered(self, deliver: asyncio.Future[None]) -> None:
        """A receiver that reset ends the pipe, even while its pump waits on a full queue."""
        if not deliver.cancelled() and deliver.exception() is not None:
            self.reset(cause="peer")

    async def _deliver(
        self,
        direction: Direction,
        queue: asyncio.Queue[tuple[float, bytes]],
        writer: asyncio.StreamWriter,
    ) -> None:
        sent = self.proxy.counters.per_connection[self.number]
        index = 0 if direction == "up" else 1
        offset = self.plan[1] if self.plan and self.plan[0] == direction else None
        if offset == 0:
            self.reset(direction, 0)
        while not self.done:
            release, piece = await queue.get()
            await asyncio.sleep(max(release - time.monotonic(), 0.0))
            if self.done or self.gapped:
                return
            if not piece:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if offset is not None:
                piece = piece[: offset - sent[index]]
            writer.write(piece)
            sent[index] += len(piece)
            self.proxy.counters.add(direction, len(piece))
            if offset is not None and sent[index] == offset:
                await flushed(writer)
                self.reset(direction, offset)
                return
            await writer.drain()
