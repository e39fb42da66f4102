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
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aiohttp.web
import torch
from aiohttp.http_exceptions import HttpProcessingError

from flotilla.fl.aggregator.links import LinkHealth
from flotilla.fl.aggregator.pace import Progress, UploadPace
from flotilla.fl.aggregator.parking import Parked, ParkingLot, resume_problem
from flotilla.fl.codec import DecodedUpdate, decode_update
from flotilla.fl.receive import SafetensorsReceiver
from flotilla.fl.resume import ContentRange
from flotilla.fl.wire import Layout, WireError

log = logging.getLogger(__name__)

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
class Resumable:
    """An upload its client can resume: its id, where a zstd body restarts, and for the
    rest of a broken upload, its `Content-Range` and the payload byte it resumes from."""

    upload_id: str
    frame_bytes: int = 0  # zstd: payload bytes per independent frame; 0: no frame restarts
    resume: ContentRange | None = None
    resume_from: int = 0


@dataclass(frozen=True)
class UploadTerms:
    """Who uploads, how many bytes it announced, and how long its round has left."""

    site: str
    size: int
    seconds_left: float
    round_number: int = 0
    weights: bool = False
    resumable: Resumable | None = None


@dataclass
class _Lease:
    site: str
    progress: Progress
    timer: asyncio.Timeout | None = None
    rule: str = ""
    superseded: bool = False


@dataclass
class _Upload:
    """A site's upload here, waiting for a buffer (`waiter`) or receiving (`lease`)."""

    upload_id: str | None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    waiter: asyncio.Future[memoryview] | None = None
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
    ) -> None:
        """`parking`: where broken uploads wait for their clients (None: not resumable)."""
        self.layout = layout
        self.pace = pace or UploadPace()
        self.parking = ParkingLot(parking)
        self.links = LinkHealth()
        self._max_norm = max_norm
        self._free: list[memoryview] = []
        self._waiters: deque[asyncio.Future[memoryview]] = deque()
        self._uploads: dict[str, _Upload] = {}  # one per site, waiting or receiving
        self._leases: list[_Lease] = []
        self._made = 0
        self._round: int | None = None  # the round uploads may be parked for

    @property
    def max_body_bytes(self) -> int:
        # zstd may grow incompressible data slightly; anything beyond that is no update.
        size = self.layout.total_size
        return size + size // 100 + 65536

    def receiving(self) -> set[str]:
        """The sites whose uploads hold a receive buffer now."""
        return {lease.site for lease in self._leases}

    def open_round(self, number: int) -> None:
        self._round = number

    def close_round(self) -> None:
        """Nothing half-received outlives its round."""
        self._round = None
        self.parking.clear()

    async def held(self, site: str, upload_id: str, round_number: int) -> int:
        """The payload bytes of the site's broken upload that a resume builds on. Asking
        means the client's connection is gone: one still receiving here is broken off."""
        await self._supersede(site, upload_id)
        parked = self.parking.find(site, upload_id, round_number)
        if parked is None:
            raise _unknown(site, upload_id, round_number)
        return parked.payload

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
        site, tag = terms.site, terms.resumable
        await self._supersede(site, tag.upload_id if tag else None)
        if site in self._uploads:
            raise Rejected(
                409,
                "duplicate",
                f"site {site!r} is already uploading an update: one upload per site at a time",
                close=True,
            )
        upload = self._uploads[site] = _Upload(tag.upload_id if tag else None)
        try:
            parked = self._claim(terms, zstd=zstd)
            try:
                async with self._lease(terms, parked, upload) as (lease, buffer):
                    receiver = SafetensorsReceiver(self.layout, buffer, zstd=zstd)
                    if parked is not None:
                        await self._restore(parked, receiver, terms)
                    offsets = await self._read_or_park(lease, body, receiver, terms, zstd=zstd)
                    views = self.layout.views(buffer, offsets=offsets, base=0)
                    try:
                        decoded = await asyncio.to_thread(
                            decode_update, views, max_norm=self._max_norm, minus=minus
                        )
                    except WireError as error:
                        raise Rejected(422, "bad_values", str(error)) from None
                    yield ReceivedUpdate(update=decoded, wire_bytes=receiver.wire_bytes)
            finally:
                if parked is not None:
                    self.parking.forget(parked)
        finally:
            del self._uploads[site]
            upload.done.set()

    @contextlib.asynccontextmanager
    async def _lease(
        self, terms: UploadTerms, parked: Parked | None, upload: _Upload
    ) -> AsyncIterator[tuple[_Lease, memoryview]]:
        """A receive buffer, in turn, and the pace its body must keep (a resumed upload's
        carries over from where it broke off)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + terms.seconds_left
        buffer = await self._take(terms.site, until, upload)
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
                received=_resumed_at(terms),
                now=now,
            )
        lease = upload.lease = _Lease(terms.site, progress)
        self._leases.append(lease)
        try:
            yield lease, buffer
        finally:
            self._leases.remove(lease)
            upload.lease = None
            self._give(buffer)

    def _claim(self, terms: UploadTerms, *, zstd: bool) -> Parked | None:
        """The parked upload this request resumes, checked; any other the site had goes."""
        site, tag = terms.site, terms.resumable
        if tag is None or tag.resume is None:
            self.parking.discard(site)  # a new upload of the site: what it had parked is moot
            return None
        parked = self.parking.find(site, tag.upload_id, terms.round_number)
        if parked is None:
            self.parking.discard(site)
            raise _unknown(site, tag.upload_id, terms.round_number)
        self.parking.claim(site)
        problem = resume_problem(
            parked,
            start=tag.resume.start,
            total=tag.resume.total,
            resume_from=tag.resume_from,
            rest=terms.size,
            zstd=zstd,
            frame_bytes=tag.frame_bytes,
            weights=terms.weights,
        )
        if problem:
            self.parking.forget(parked)
            raise Rejected(416, "bad_range", f"site {site!r}: {problem}; send it again from byte 0")
        return parked

    async def _restore(
        self, parked: Parked, receiver: SafetensorsReceiver, terms: UploadTerms
    ) -> None:
        try:
            await asyncio.to_thread(ParkingLot.read_into, parked, receiver)
        except WireError as error:
            raise Rejected(400, "bad_payload", str(error)) from None
        except OSError as error:
            raise Rejected(
                416, "bad_range", f"site {terms.site!r}: its parked upload is unreadable: {error}"
            ) from None
        start = receiver.wire_bytes = _resumed_at(terms)
        link = self.links.of(terms.site)
        link.resumed_uploads += 1
        link.resumed_bytes += start
        log.info(
            "site %s: upload %s resumes at byte %d of %d",
            terms.site,
            parked.upload_id,
            start,
            parked.total,
        )

    async def _read_or_park(
        self,
        lease: _Lease,
        body: AsyncIterator[bytes],
        receiver: SafetensorsReceiver,
        terms: UploadTerms,
        *,
        zstd: bool,
    ) -> dict[str, tuple[int, int]]:
        loop = asyncio.get_running_loop()
        began, start = loop.time(), receiver.wire_bytes
        try:
            offsets = await self._read(lease, body, receiver)
        except _Broken as broken:
            self.links.of(terms.site).upload_resets += 1
            await self._park(terms, lease, receiver, zstd=zstd)
            if lease.superseded:
                raise Rejected(409, "superseded", str(broken), close=True) from None
            raise Rejected(400, "connection_lost", str(broken)) from None
        elapsed = loop.time() - began
        if elapsed > 0:
            rate = (receiver.wire_bytes - start) / elapsed
            self.links.of(terms.site).upload_bytes_per_second = rate
        return offsets

    async def _park(
        self, terms: UploadTerms, lease: _Lease, receiver: SafetensorsReceiver, *, zstd: bool
    ) -> None:
        """Keep a broken upload's payload on disk, off the pool, for its client to resume."""
        tag = terms.resumable
        if tag is None or not self.parking.enabled or terms.round_number != self._round:
            return
        total = tag.resume.total if tag.resume else terms.size
        payload = receiver.resume_point(tag.frame_bytes if zstd else 0)
        if not total or not payload:
            return
        parked = Parked(
            site=terms.site,
            upload_id=tag.upload_id,
            round_number=terms.round_number,
            total=total,
            wire=receiver.wire_bytes,
            payload=payload,
            zstd=zstd,
            frame_bytes=tag.frame_bytes,
            weights=terms.weights,
            started=lease.progress.started,
            path=self.parking.new_path(terms.site),
        )
        try:
            await asyncio.to_thread(ParkingLot.write, parked, receiver.prefix(payload))
        except OSError as error:
            log.warning("site %s: cannot park its broken upload: %s", terms.site, error)
            self.parking.forget(parked)
            return
        if terms.round_number != self._round:  # the round closed meanwhile
            self.parking.forget(parked)
            return
        self.parking.add(parked)
        log.info(
            "site %s: upload %s broke off after %d of %d bytes; %d payload bytes parked",
            terms.site,
            tag.upload_id,
            receiver.wire_bytes,
            total,
            payload,
        )

    async def _supersede(self, site: str, upload_id: str | None) -> None:
        """The site's client opened a new connection for this upload: the old one is gone,
        whatever this end saw of it. Break it off (it parks) and wait until it has."""
        current = self._uploads.get(site)
        if current is None or upload_id is None or current.upload_id != upload_id:
            return
        lease, waiter = current.lease, current.waiter
        if lease is not None and lease.timer is not None:
            lease.superseded = True
            lease.timer.reschedule(asyncio.get_running_loop().time())
        elif waiter is not None and not waiter.done():
            waiter.set_exception(
                Rejected(409, "superseded", f"site {site!r}: a new connection took its place")
            )
        await current.done.wait()

    async def _read(
        self, lease: _Lease, body: AsyncIterator[bytes], receiver: SafetensorsReceiver
    ) -> dict[str, tuple[int, int]]:
        loop = asyncio.get_running_loop()
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
                    return receiver.finish()
                except WireError as error:
                    raise Rejected(400, "bad_payload", str(error)) from None
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
            cut = lease.progress.cut(lease.rule, site=lease.site, now=loop.time())
            raise Rejected(cut.status, cut.reason, cut.message, close=True) from None
        finally:
            lease.timer = None

    def _reschedule(self) -> None:
        """Set each reading lease's deadline. While uploads wait, the holders that fall
        behind their pace first (one per waiter) must also stay on pace or yield."""
        contended = sorted(self._leases, key=lambda lease: lease.progress.due_on_pace())
        contended = contended[: len(self._waiters)]
        for lease in self._leases:
            if lease.timer is not None and not lease.superseded:
                when, lease.rule = lease.progress.due(contended=lease in contended)
                lease.timer.reschedule(when)

    async def _take(self, site: str, until: float, upload: _Upload) -> memoryview:
        if self._free:
            return self._free.pop()
        if self._made < RECEIVE_BUFFERS:
            self._made += 1
            return memoryview(bytearray(self.layout.data_size))
        waiter: asyncio.Future[memoryview] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        upload.waiter = waiter
        self._reschedule()
        try:
            async with asyncio.timeout_at(until):
                return await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
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
            upload.waiter = None
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


def _resumed_at(terms: UploadTerms) -> int:
    """The wire byte a resumed body starts at (0 for a whole one)."""
    tag = terms.resumable
    return tag.resume.start if tag is not None and tag.resume is not None else 0


def _unknown(site: str, upload_id: str, round_number: int) -> Rejected:
    return Rejected(
        404,
        "unknown_upload",
        f"site {site!r} has no broken upload {upload_id!r} of round {round_number} here to "
        "resume: send it again from byte 0",
    )
