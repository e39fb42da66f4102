"""Update intake: an upload's bytes into a pooled buffer, checked, ready to fold.

The pool holds a fixed number of receive buffers (allocated on first use), so memory
stays flat however many clients upload at once: an upload waits for a free buffer, in
arrival order, and TCP backpressure holds its sender meanwhile. A buffer is held fairly:
one upload per site at a time (a second is refused at once), a body that does not keep
its pace (pace.py) is cut off and its buffer handed to the next in line, and no upload
outlives its round. A payload that fails any check raises `Rejected` and never reaches
the aggregate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import aiohttp.web
import torch
from aiohttp.http_exceptions import HttpProcessingError

from flotilla.fl.aggregator.pace import Progress, UploadPace
from flotilla.fl.codec import DecodedUpdate, decode_update
from flotilla.fl.receive import SafetensorsReceiver
from flotilla.fl.wire import Layout, WireError

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


class Rejected(Exception):
    """A request refused before it touched any state; maps to an HTTP 4xx.

    `close`: answer at once and hang up, without reading the rest of the body (a body that
    trickles, or a second upload of a site, is not worth reading)."""

    def __init__(self, status: int, reason: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.close = close


@dataclass(frozen=True)
class ReceivedUpdate:
    update: DecodedUpdate
    wire_bytes: int


@dataclass(frozen=True)
class UploadTerms:
    """Who uploads, how many bytes it announced, and how long its round has left."""

    site: str
    size: int
    seconds_left: float


@dataclass
class _Lease:
    site: str
    progress: Progress
    timer: asyncio.Timeout | None = None
    rule: str = ""


class UpdateIntake:
    def __init__(
        self, layout: Layout, *, max_norm: float | None, pace: UploadPace | None = None
    ) -> None:
        self.layout = layout
        self.pace = pace or UploadPace()
        self._max_norm = max_norm
        self._free: list[memoryview] = []
        self._waiters: deque[asyncio.Future[memoryview]] = deque()
        self._uploading: set[str] = set()  # sites with an upload here, waiting or receiving
        self._leases: list[_Lease] = []
        self._made = 0

    @property
    def max_body_bytes(self) -> int:
        # zstd may grow incompressible data slightly; anything beyond that is no update.
        size = self.layout.total_size
        return size + size // 100 + 65536

    def receiving(self) -> set[str]:
        """The sites whose uploads hold a receive buffer now."""
        return {lease.site for lease in self._leases}

    @contextlib.asynccontextmanager
    async def receive(
        self,
        body: AsyncIterator[bytes],
        *,
        terms: UploadTerms,
        zstd: bool,
        minus: Mapping[str, torch.Tensor] | None = None,
    ) -> AsyncIterator[ReceivedUpdate]:
        """Yields the checked update; its tensors are views valid inside the block only.

        `minus`: the body is trained weights; the delta is them minus this (the round's
        global model), which the update carries for the rule that folds it."""
        site = terms.site
        if site in self._uploading:
            raise Rejected(
                409,
                "duplicate",
                f"site {site!r} is already uploading an update: one upload per site at a time",
                close=True,
            )
        self._uploading.add(site)
        try:
            loop = asyncio.get_running_loop()
            until = loop.time() + terms.seconds_left
            buffer = await self._take(site, until)
            size = terms.size or self.layout.total_size
            lease = _Lease(site, Progress(self.pace, size=size, started=loop.time(), until=until))
            self._leases.append(lease)
            try:
                receiver, offsets = await self._read(lease, body, buffer, zstd=zstd)
                views = self.layout.views(buffer, offsets=offsets, base=0)
                try:
                    decoded = await asyncio.to_thread(
                        decode_update, views, max_norm=self._max_norm, minus=minus
                    )
                except WireError as error:
                    raise Rejected(422, "bad_values", str(error)) from None
                yield ReceivedUpdate(update=decoded, wire_bytes=receiver.wire_bytes)
            finally:
                self._leases.remove(lease)
                self._give(buffer)
        finally:
            self._uploading.discard(site)

    async def _read(
        self, lease: _Lease, body: AsyncIterator[bytes], buffer: memoryview, *, zstd: bool
    ) -> tuple[SafetensorsReceiver, dict[str, tuple[int, int]]]:
        loop = asyncio.get_running_loop()
        receiver = SafetensorsReceiver(self.layout, buffer, zstd=zstd)
        try:
            async with asyncio.timeout(None) as lease.timer:
                self._reschedule()
                try:
                    async for chunk in body:
                        lease.progress.got(len(chunk), now=loop.time())
                        self._reschedule()
                        if receiver.wire_bytes + len(chunk) > self.max_body_bytes:
                            raise Rejected(
                                413, "too_large", f"the body exceeds {self.max_body_bytes} bytes"
                            )
                        receiver.feed(chunk)
                    offsets = receiver.finish()
                except WireError as error:
                    raise Rejected(400, "bad_payload", str(error)) from None
                except (
                    OSError,
                    aiohttp.ClientError,
                    HttpProcessingError,
                    aiohttp.web.RequestPayloadError,
                ) as error:
                    raise Rejected(
                        400,
                        "connection_lost",
                        f"the upload broke off after {receiver.wire_bytes} bytes: {error!r}",
                    ) from None
        except TimeoutError:
            cut = lease.progress.cut(lease.rule, site=lease.site, now=loop.time())
            raise Rejected(cut.status, cut.reason, cut.message, close=True) from None
        finally:
            lease.timer = None
        return receiver, offsets

    def _reschedule(self) -> None:
        """Set each reading lease's deadline. While uploads wait, the holders that fall
        behind their pace first (one per waiter) must also stay on pace or yield."""
        contended = sorted(self._leases, key=lambda lease: lease.progress.due_on_pace())
        contended = contended[: len(self._waiters)]
        for lease in self._leases:
            if lease.timer is not None:
                when, lease.rule = lease.progress.due(contended=lease in contended)
                lease.timer.reschedule(when)

    async def _take(self, site: str, until: float) -> memoryview:
        if self._free:
            return self._free.pop()
        if self._made < RECEIVE_BUFFERS:
            self._made += 1
            return memoryview(bytearray(self.layout.data_size))
        waiter: asyncio.Future[memoryview] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._reschedule()
        try:
            async with asyncio.timeout_at(until):
                return await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._give(waiter.result())  # handed over just as this gave up: pass it on
            waiter.cancel()
            if isinstance(error, TimeoutError):
                raise Rejected(
                    409,
                    "round_closed",
                    f"site {site!r}: the round closed while its upload waited for a buffer",
                    close=True,
                ) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            self._reschedule()

    def _give(self, buffer: memoryview) -> None:
        """To the longest waiting upload (first come, first served), else back to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(buffer)
                self._reschedule()  # one waiter fewer: a holder may no longer have to yield
                return
        self._free.append(buffer)
