"""Update intake: an upload's bytes into a pooled buffer, checked, ready to fold.

The pool holds a fixed number of receive buffers (allocated on first use), so
memory stays flat however many clients upload at once: an upload waits for a
free buffer, and TCP backpressure holds its sender meanwhile. A payload that
fails any check raises `Rejected` and never reaches the aggregate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import aiohttp.web
import torch
from aiohttp.http_exceptions import HttpProcessingError

from flotilla.fl.codec import DecodedUpdate, decode_update
from flotilla.fl.receive import SafetensorsReceiver
from flotilla.fl.wire import Layout, WireError

RECEIVE_BUFFERS = 2


class Rejected(Exception):
    """A request refused before it touched any state; maps to an HTTP 4xx."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ReceivedUpdate:
    update: DecodedUpdate
    wire_bytes: int


class UpdateIntake:
    def __init__(self, layout: Layout, *, max_norm: float | None) -> None:
        self.layout = layout
        self._max_norm = max_norm
        self._free: asyncio.Queue[memoryview] = asyncio.Queue()
        self._made = 0

    @property
    def max_body_bytes(self) -> int:
        # zstd may grow incompressible data slightly; anything beyond that is no update.
        size = self.layout.total_size
        return size + size // 100 + 65536

    @contextlib.asynccontextmanager
    async def receive(
        self,
        body: AsyncIterator[bytes],
        *,
        zstd: bool,
        minus: Mapping[str, torch.Tensor] | None = None,
    ) -> AsyncIterator[ReceivedUpdate]:
        """Yields the checked update; its tensors are views valid inside the block only.

        `minus`: the body is trained weights; the delta is them minus this (the round's
        global model), which the update carries for the rule that folds it."""
        buffer = await self._take()
        try:
            receiver = SafetensorsReceiver(self.layout, buffer, zstd=zstd)
            try:
                async for chunk in body:
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
            views = self.layout.views(buffer, offsets=offsets, base=0)
            try:
                decoded = await asyncio.to_thread(
                    decode_update, views, max_norm=self._max_norm, minus=minus
                )
            except WireError as error:
                raise Rejected(422, "bad_values", str(error)) from None
            yield ReceivedUpdate(update=decoded, wire_bytes=receiver.wire_bytes)
        finally:
            self._free.put_nowait(buffer)

    async def _take(self) -> memoryview:
        if self._free.empty() and self._made < RECEIVE_BUFFERS:
            self._made += 1
            return memoryview(bytearray(self.layout.data_size))
        return await self._free.get()
