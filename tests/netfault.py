"""A TCP proxy that makes one link slow, far or broken, for tests and benches.

Put it between a client and the aggregator (`NetFault(upstream_port)`, then dial its
`port`) and it shapes each connection in each direction: a rate cap (a token bucket per
direction per connection), a one-way delay (a round trip pays both directions' delays),
and resets (SO_LINGER 0, then close: the peer sees ECONNRESET) at a chosen byte offset
of a chosen direction and connection, or at random from a seed. `cut("reset")` resets
every connection, live or new, until `heal()`; `cut("blackhole")` swallows them instead.
Bytes are opaque, so TLS passes through. The proxy runs its own event loop in a thread,
so blocking tests use it directly; `close()` resets whatever is still open and returns
within seconds, and the counters say what crossed and what was reset. One connection's
pumps are in netfault_pipe.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from tests.netfault_pipe import UNCAPPED_PIECE, Pipe

T = TypeVar("T")
Direction = Literal["up", "down"]  # up: client to server; down: server to client
Cause = Literal["fault", "peer", "close"]


@dataclass(frozen=True)
class Link:
    """One direction of every connection: at most `rate` bytes/s, `delay` seconds late."""

    rate: float | None = None  # None: as fast as the host moves bytes
    delay: float = 0.0

    @classmethod
    def of(cls, *, mbit: float | None = None, rtt_ms: float = 0.0) -> Link:
        """A link of `mbit` Mbit/s whose round trip (both directions) is `rtt_ms`."""
        return cls(rate=None if mbit is None else mbit * 1e6 / 8, delay=rtt_ms / 2000)


@dataclass(frozen=True)
class ResetAt:
    """Reset connection `connection` (0-based, accept order; None: every one) once exactly
    `offset` bytes of `direction` were delivered to its receiver."""

    offset: int
    direction: Direction = "up"
    connection: int | None = None


@dataclass(frozen=True)
class RandomResets:
    """Each connection is reset with `probability`, in a random direction at a random offset
    below `max_offset`. Drawn from the seed and the connection's number, not the clock, so
    the same seed resets the same connections at the same offsets whatever the timing."""

    seed: int
    probability: float = 1.0
    max_offset: int = 1 << 20

    def plan(self, connection: int) -> tuple[Direction, int] | None:
        draw = random.Random(f"{self.seed}/{connection}")
        if draw.random() >= self.probability:
            return None
        direction: Direction = "up" if draw.random() < 0.5 else "down"
        return direction, draw.randrange(self.max_offset)


@dataclass
class Counters:
    """What crossed the proxy: bytes delivered each way, connections, resets done."""

    connections: int = 0
    up: int = 0
    down: int = 0
    resets: int = 0  # done by this proxy: planned, random or a cut
    peer_resets: int = 0  # one end reset (or could not be dialled): passed on to the other
    # (up, down) bytes delivered per connection, in accept order; and the resets' offsets
    per_connection: list[list[int]] = field(default_factory=list)
    reset_at: list[tuple[int, Direction, int]] = field(default_factory=list)

    def add(self, direction: Direction, count: int) -> None:
        if direction == "up":
            self.up += count
        else:
            self.down += count

    def snapshot(self) -> Counters:
        return replace(
            self,
            per_connection=[list(c) for c in self.per_connection],
            reset_at=list(self.reset_at),
        )


class NetFault:
    """The proxy: `with NetFault(port, up=Link.of(mbit=20, rtt_ms=100)) as proxy:` dial
    `proxy.port`. Links and cuts may change while it runs; they apply from the next piece."""

    def __init__(
        self,
        upstream_port: int,
        *,
        up: Link | None = None,
        down: Link | None = None,
        resets: ResetAt | RandomResets | None = None,
        upstream_host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.links: dict[Direction, Link] = {"up": up or Link(), "down": down or Link()}
        self.resets = resets
        self.counters = Counters()
        self.cut_mode: Literal["reset", "blackhole"] | None = None
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[Pipe] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    def __enter__(self) -> NetFault:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NetFault:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def set_links(self, *, up: Link | None = None, down: Link | None = None) -> None:
        # In place: live connections read this very dict for every piece.
        self.links.update({"up": up or self.links["up"], "down": down or self.links["down"]})

    def cut(self, mode: Literal["reset", "blackhole"] = "reset") -> None:
        """From now on until `heal`: reset every connection, live or new, or (blackhole)
        swallow every byte both ways and answer nothing."""
        self._call(self._set_cut(mode))

    def heal(self) -> None:
        """Back to the links; a connection a blackhole swallowed bytes of is reset."""
        self._call(self._set_cut(None))

    def stats(self) -> Counters:
        return self._call(self._snapshot())

    def close(self, within: float = 10.0) -> None:
        """Reset what is open and stop; returns within about `within` seconds."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            self._call(self._shutdown(), within=within)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(within)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coroutine: Coroutine[object, object, T], within: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(within)

    def plan_for(self, number: int) -> tuple[Direction, int] | None:
        if isinstance(self.resets, RandomResets):
            return self.resets.plan(number)
        if self.resets is not None and self.resets.connection in (None, number):
            return self.resets.direction, self.resets.offset
        return None

    async def _snapshot(self) -> Counters:
        return self.counters.snapshot()

    async def _set_cut(self, mode: Literal["reset", "blackhole"] | None) -> None:
        self.cut_mode = mode
        for connection in list(self._connections):
            if mode == "reset" or (mode is None and connection.gapped):
                connection.reset()

    async def _shutdown(self) -> None:
        # A connection the loop accepted but has not served yet is reset as it is served.
        # Only then close the listener: Python 3.11 leaks a connection whose transport it
        # makes after the server closed (`Server._attach` asserts), and its client hangs.
        self._closing = True
        self.cut_mode = "reset"
        await asyncio.sleep(0.05)
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.reset(cause="close")
        if self._tasks:  # reset connections end by themselves; cancel what does not
            await asyncio.wait(list(self._tasks), timeout=2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=3)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        counters = self.counters
        connection = Pipe(self, counters.connections, writer)
        counters.connections += 1
        counters.per_connection.append([0, 0])
        self._connections.add(connection)
        try:
            await self._carry(connection, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            connection.reset(cause="peer")  # one end reset: so does the other, as on a path
        except asyncio.CancelledError:
            # close() ends this task; nobody awaits it, and Python 3.11's streams call
            # `exception()` on it, which raises for a cancelled task: end it quietly.
            connection.reset(cause="close")
        finally:
            self._connections.discard(connection)
            self._tasks.discard(task)
            if not connection.done:
                connection.done = True
                for end in (writer, connection.server):
                    if end is not None:
                        end.close()

    async def _carry(
        self,
        connection: Pipe,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if self.cut_mode == "reset":
            connection.reset(cause="close" if self._closing else "fault")
            return
        if self.cut_mode == "blackhole":
            connection.gapped = True
            while not connection.done and await reader.read(UNCAPPED_PIECE):
                pass
            return
        try:
            server_reader, server = await asyncio.open_connection(*self.upstream)
        except OSError:
            connection.reset(cause="peer")
            return
        connection.server = server
        try:
            async with asyncio.TaskGroup() as group:
                connection.pumps = [
                    group.create_task(connection.pump("up", reader, server)),
                    group.create_task(connection.pump("down", server_reader, writer)),
                ]
        except* (OSError, asyncio.IncompleteReadError):
            connection.reset(cause="peer")
