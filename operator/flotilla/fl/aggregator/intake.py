"""Update intake: an upload's bytes into a pooled buffer, checked, ready to fold.

The pool holds a fixed number of receive buffers (pool.py), so memory stays flat however
many clients upload at once: an upload waits for a free buffer, in arrival order, its body
held back at its client (`Expect: 100-continue`) beyond the first few waiting, which TCP
backpressure holds. A checked upload hands its buffer on as it goes to
the fold, and the next body is written only where the fold has read (fence.py). A buffer is
held fairly: one upload per site at a time (a second is refused at once), a body that does
not keep its pace (pace.py) is cut off and its buffer handed to the next in line, and no
upload outlives its round. A broken upload is parked for its client to resume (resuming.py).
A payload that fails any check raises a `Refused` (errors.py) and never reaches the
aggregate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import aiohttp
import aiohttp.web
import torch
from aiohttp.http_exceptions import HttpProcessingError

from flotilla.fl.aggregator.errors import (
    BadPayload,
    BadValues,
    ConnectionLost,
    RoundClosed,
    Superseded,
    TooLarge,
    UploadInProgress,
)
from flotilla.fl.aggregator.fence import ReadFence, ReadProgress
from flotilla.fl.aggregator.links import LinkHealth
from flotilla.fl.aggregator.offload import update_pass
from flotilla.fl.aggregator.pace import Progress, UploadPace
from flotilla.fl.aggregator.parking import Parked, ParkingLot
from flotilla.fl.aggregator.pool import RECEIVE_BUFFERS, ReceivePool, Slot
from flotilla.fl.aggregator.resuming import Resumes
from flotilla.fl.aggregator.terms import ReceivedUpdate, UploadTerms
from flotilla.fl.codec import decode_update
from flotilla.fl.receive import SafetensorsReceiver
from flotilla.fl.wire import Layout, WireError

log = logging.getLogger(__name__)

# Waiting uploads whose bodies are asked for before a buffer is theirs: their first bytes
# wait in socket buffers (at most a connection's read buffer here, the rest in kernels and
# on the link), so a slow link is busy while it waits. Beyond these, a waiting upload's
# client holds its body (http_continue.py): 1,000 waiting bodies in socket buffers put the
# host in TCP memory pressure. When one of them is handed a buffer, the longest waiting
# upload not yet asked takes its place, so as many bodies stay on their way.
BODIES_ASKED_AHEAD = 8


class AsksForBody(Protocol):
    """A body its client sends only when asked (HTTP's `Expect: 100-continue`)."""

    async def ask(self) -> None: ...


@dataclass
class _Lease:
    site: str
    progress: Progress
    timer: asyncio.Timeout | None = None
    rule: str = ""
    superseded: bool = False
    fenced: bool = False  # waiting for the fold to read on: the server's time, not the body's
    handed_on: bool = False  # its buffer went to the next upload with its update to the fold


@dataclass
class _Upload:
    """A site's upload here, waiting for a buffer (`waiter`) or receiving (`lease`)."""

    upload_id: str | None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    waiter: asyncio.Future[Slot] | None = None
    lease: _Lease | None = None


class _Broken(Exception):
    """The body stopped: its connection broke, or a new one took its place."""


class UpdateIntake:
    def __init__(
        self,
        layout: Layout,
        *,
        max_norm: float | None,
        pace: UploadPace | None = None,
        parking: Path | None = None,
        buffers: int = RECEIVE_BUFFERS,
    ) -> None:
        """`parking`: where broken uploads wait for their clients (None: not resumable);
        `buffers`: how many bodies may arrive at once, a model-sized buffer each."""
        self.layout = layout
        self.pace = pace or UploadPace()
        self.links = LinkHealth()
        self.resumes = Resumes(ParkingLot(parking), links=self.links)
        self._max_norm = max_norm
        self._pool = ReceivePool(layout.data_size, count=buffers)
        self._uploads: dict[str, _Upload] = {}  # one per site, waiting or receiving
        self._leases: list[_Lease] = []
        self._asked_ahead = 0  # waiting uploads whose bodies were asked for
        # Waiting uploads not asked yet, first come first: each future is set when the
        # upload is to ask. One that stopped waiting is cancelled and skipped when reached.
        self._unasked: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def buffers(self) -> int:
        """The most bodies received at once (spec.limits.receiveBuffers)."""
        return self._pool.count

    @property
    def parking(self) -> ParkingLot:
        return self.resumes.lot

    @property
    def max_body_bytes(self) -> int:
        # zstd may grow incompressible data slightly; anything beyond that is no update.
        size = self.layout.total_size
        return size + size // 100 + 65536

    def receiving(self) -> set[str]:
        """The sites whose uploads hold a receive buffer now."""
        return {lease.site for lease in self._leases}

    def open_round(self, number: int) -> None:
        self.resumes.open_round(number)

    def close_round(self) -> None:
        """Nothing half-received outlives its round."""
        self.resumes.close_round()

    async def held(self, site: str, upload_id: str, round_number: int) -> int:
        """The payload bytes of the site's broken upload that a resume builds on. Asking
        means the client's connection is gone: one still receiving here is broken off."""
        await self._supersede(site, upload_id)
        return self.resumes.held(site, upload_id, round_number)

    @contextlib.asynccontextmanager
    async def receive(
        self,
        body: AsyncIterable[bytes],
        *,
        terms: UploadTerms,
        zstd: bool,
        minus: Mapping[str, torch.Tensor] | None = None,
    ) -> AsyncIterator[ReceivedUpdate]:
        """Yields the checked update; its tensors are views valid inside the block only,
        and only until the fold calls its `release` with their names (the buffer is the
        next upload's by then).

        `minus`: the body is trained weights; the delta is them minus this (the round's
        global model), which the update carries for the rule that folds it."""
        site, tag = terms.site, terms.resumable
        await self._supersede(site, tag.upload_id if tag else None)
        if site in self._uploads:
            raise UploadInProgress(
                f"site {site!r} is already uploading an update: one upload per site at a time",
                cut=True,
            )
        upload = self._uploads[site] = _Upload(tag.upload_id if tag else None)
        try:
            parked = self.resumes.claim(terms, zstd=zstd)
            try:
                # Not isinstance(body, AsksForBody): a runtime protocol check costs more
                # than the rest of an upload's admission (~20 us on Python 3.11).
                ask = getattr(body, "ask", None)
                asks = cast(AsksForBody, body).ask if callable(ask) else None
                async with self._lease(terms, parked, upload, asks) as (lease, slot):
                    receiver = SafetensorsReceiver(self.layout, slot.buffer, zstd=zstd)
                    if parked is not None:
                        await slot.fence.reach(slot.fence.size)
                        await self.resumes.restore(parked, receiver, terms)
                    offsets = await self._read_or_park(
                        lease, body, receiver, slot, terms, zstd=zstd
                    )
                    views = slot.views(self.layout, offsets)
                    try:
                        decoded = await update_pass(
                            self.layout.data_size,
                            decode_update,
                            views,
                            max_norm=self._max_norm,
                            minus=minus,
                        )
                    except WireError as error:
                        raise BadValues(str(error)) from None
                    fence = self._hand_on(lease, slot)
                    release = ReadProgress(fence, offsets, asyncio.get_running_loop())
                    try:
                        yield ReceivedUpdate(
                            update=decoded, wire_bytes=receiver.wire_bytes, release=release
                        )
                    finally:
                        fence.release()
            finally:
                if parked is not None:
                    self.parking.forget(parked)
        finally:
            del self._uploads[site]
            upload.done.set()

    @contextlib.asynccontextmanager
    async def _lease(
        self,
        terms: UploadTerms,
        parked: Parked | None,
        upload: _Upload,
        asks: Callable[[], Awaitable[None]] | None,
    ) -> AsyncIterator[tuple[_Lease, Slot]]:
        """A receive buffer, in turn, and the pace its body must keep (a resumed upload's
        carries over from where it broke off). `asks`: asks the client for its body."""
        loop = asyncio.get_running_loop()
        until = loop.time() + terms.seconds_left
        slot = await self._take(terms.site, until, upload, asks)
        now = loop.time()
        if parked is None:
            size = terms.size or self.layout.total_size
            progress = Progress(self.pace, size=size, started=now, until=until)
        else:
            progress = Progress(
                self.pace,
                size=parked.total,
                started=parked.started,
                until=until,
                received=terms.resumed_at,
                now=now,
            )
        lease = upload.lease = _Lease(terms.site, progress)
        self._leases.append(lease)
        try:
            yield lease, slot
        finally:
            upload.lease = None
            if not lease.handed_on:
                self._leases.remove(lease)
                self._give(slot)  # with the fence it came with: its last reader may read on

    def _hand_on(self, lease: _Lease, slot: Slot) -> ReadFence:
        """The body is in and checked, and goes to the fold: its buffer goes to the next
        upload now, which writes only where the fold has read (the fence returned)."""
        fence = ReadFence(len(slot.buffer))
        lease.handed_on = True
        self._leases.remove(lease)
        self._give(slot.refenced(fence))
        return fence

    async def _read_or_park(
        self,
        lease: _Lease,
        body: AsyncIterable[bytes],
        receiver: SafetensorsReceiver,
        slot: Slot,
        terms: UploadTerms,
        *,
        zstd: bool,
    ) -> dict[str, tuple[int, int]]:
        loop = asyncio.get_running_loop()
        began, start = loop.time(), receiver.wire_bytes
        try:
            offsets = await self._read(lease, body, receiver, slot.fence)
        except _Broken as broken:
            self.links.of(terms.site).upload_resets += 1
            await self.resumes.park(terms, receiver, zstd=zstd, started=lease.progress.started)
            if lease.superseded:
                raise Superseded(str(broken), cut=True) from None
            raise ConnectionLost(str(broken)) from None
        elapsed = loop.time() - began
        if elapsed > 0:
            rate = (receiver.wire_bytes - start) / elapsed
            self.links.of(terms.site).upload_bytes_per_second = rate
        return offsets

    async def _supersede(self, site: str, upload_id: str | None) -> None:
        """The site's client opened a new connection for this upload: the old one is gone,
        whatever this end saw of it. Break it off (it parks) and wait until it has."""
        current = self._uploads.get(site)
        if current is None or upload_id is None or current.upload_id != upload_id:
            return
        lease, waiter = current.lease, current.waiter
        if lease is not None and lease.timer is not None and not lease.timer.expired():
            lease.superseded = True
            lease.timer.reschedule(asyncio.get_running_loop().time())
        elif waiter is not None and not waiter.done():
            waiter.set_exception(Superseded(f"site {site!r}: a new connection took its place"))
        await current.done.wait()

    async def _read(
        self,
        lease: _Lease,
        body: AsyncIterable[bytes],
        receiver: SafetensorsReceiver,
        fence: ReadFence,
    ) -> dict[str, tuple[int, int]]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as lease.timer:
                self._reschedule()
                try:
                    async for chunk in body:
                        lease.progress.got(len(chunk), now=loop.time())
                        self._grow_for_slow_links()
                        if receiver.wire_bytes + len(chunk) > self.max_body_bytes:
                            raise TooLarge(f"the body exceeds {self.max_body_bytes} bytes")
                        reach = receiver.reach(len(chunk))
                        if reach > fence.read:
                            await self._behind(lease, fence, reach)
                        self._reschedule()
                        receiver.feed(chunk)
                    return receiver.finish()
                except WireError as error:
                    raise BadPayload(str(error)) from None
                except (
                    OSError,
                    aiohttp.ClientError,
                    HttpProcessingError,
                    aiohttp.web.RequestPayloadError,
                ) as error:
                    raise _Broken(
                        f"the upload broke off after {receiver.wire_bytes} bytes: {error!r}"
                    ) from None
        except TimeoutError:
            if lease.superseded:
                raise _Broken(
                    f"site {lease.site!r}: a new connection took this upload's place after "
                    f"{receiver.wire_bytes} bytes"
                ) from None
            raise lease.progress.cut(lease.rule, site=lease.site, now=loop.time()) from None
        finally:
            lease.timer = None

    async def _behind(self, lease: _Lease, fence: ReadFence, reach: int) -> None:
        """Until the fold has read the buffer up to `reach`: the body's pace waits too."""
        assert lease.timer is not None
        loop = asyncio.get_running_loop()
        began = loop.time()
        lease.fenced = True
        # A timer that fired is cutting the upload (or a new connection took its place):
        # the wait below ends at once; rescheduling it would raise.
        if not lease.superseded and not lease.timer.expired():
            lease.timer.reschedule(None)
        try:
            await fence.reach(reach)
        finally:
            lease.fenced = False
            lease.progress.waited(loop.time() - began)

    def _grow_for_slow_links(self) -> None:
        """While uploads wait, another buffer when every holder is held up by its own link
        (pool.py): bodies from slow links then arrive side by side."""
        pool = self._pool
        if not pool.waiting or not pool.can_grow or not self._leases:
            return
        now = asyncio.get_running_loop().time()
        # A holder behind the fence waits for the fold, which frees it in milliseconds.
        slow = all(not lease.fenced and lease.progress.slow_link(now=now) for lease in self._leases)
        if slow and pool.grow():
            log.info(
                "receive buffer %d of at most %d made: %s upload on slow links, %d waiting",
                pool.made,
                pool.count,
                ", ".join(sorted(lease.site for lease in self._leases)),
                pool.waiting,
            )
            self._reschedule()  # one waiter fewer

    def _reschedule(self) -> None:
        """Set each reading lease's deadline. While uploads wait, the holders that fall
        behind their pace first (one per waiter) must also stay on pace or yield."""
        contended = sorted(self._leases, key=lambda lease: lease.progress.due_on_pace())
        contended = contended[: self._pool.waiting]
        for lease in self._leases:
            # A timer that fired is expiring (its upload is being cut): rescheduling it would
            # raise RuntimeError, and from _take or _give that lost or leaked a buffer.
            if (
                lease.timer is not None
                and not lease.superseded
                and not lease.fenced
                and not lease.timer.expired()
            ):
                when, rule = lease.progress.due(contended=lease in contended)
                # Every piece and every new waiter asks again; mostly nothing moved, and
                # a new timer handle each time was a tenth of the loop at 1,000 sites.
                if when != lease.timer.when() or rule != lease.rule:
                    lease.rule = rule
                    lease.timer.reschedule(when)

    async def _take(
        self,
        site: str,
        until: float,
        upload: _Upload,
        asks: Callable[[], Awaitable[None]] | None,
    ) -> Slot:
        slot = self._pool.get_nowait()
        if slot is not None:
            return slot
        waiter = upload.waiter = self._pool.queue()
        self._reschedule()
        ahead = asks is not None and self._asked_ahead < BODIES_ASKED_AHEAD
        self._asked_ahead += ahead
        turn: asyncio.Future[None] | None = None  # set when this one is to ask ahead
        if asks is not None and not ahead:
            turn = asyncio.get_running_loop().create_future()
            self._unasked.append(turn)
        # Holders are judged as their bytes come; a stalled one sends none, so look again
        # now and then while this waits.
        loop, every = asyncio.get_running_loop(), self.pace.slow_link_after_seconds
        judge: list[asyncio.TimerHandle] = []

        def look_again() -> None:
            self._grow_for_slow_links()
            if not waiter.done() and self._pool.can_grow:
                judge[:] = [loop.call_later(every, look_again)]

        judge.append(loop.call_later(every, look_again))
        try:
            if ahead and asks is not None:
                await asks()
            async with asyncio.timeout_at(until):
                if turn is not None and asks is not None:
                    await asyncio.wait((waiter, turn), return_when=asyncio.FIRST_COMPLETED)
                    if not waiter.done():
                        await asks()
                return await waiter
        except BaseException as error:
            self._pool.abandon(waiter)
            if isinstance(error, TimeoutError):
                raise RoundClosed(
                    f"site {site!r}: the round closed while its upload waited for a buffer",
                    cut=True,
                ) from None
            raise
        finally:
            promoted = turn is not None and turn.done() and not turn.cancelled()
            if turn is not None:
                turn.cancel()
            self._asked_ahead -= ahead or promoted
            self._ask_next()
            judge[0].cancel()
            upload.waiter = None
            self._pool.leave(waiter)
            self._reschedule()

    def _ask_next(self) -> None:
        """Waiting uploads not asked yet take the places of those asked ahead that left."""
        while self._asked_ahead < BODIES_ASKED_AHEAD and self._unasked:
            turn = self._unasked.popleft()
            if not turn.done():
                turn.set_result(None)
                self._asked_ahead += 1

    def _give(self, slot: Slot) -> None:
        if self._pool.give(slot):
            self._reschedule()  # one waiter fewer: a holder may no longer have to yield
