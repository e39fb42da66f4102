"""The retired global model's buffer, zeroed off the event loop to be the next accumulator.

A round needs two model buffers: the served global model, and the accumulator that
becomes the next global model in place. Reusing the retired global model as the next
round's accumulator keeps that at two for the whole job. A fresh model-sized allocation
per round cost page faults on the round's critical path (15 ms at 10M parameters, 75 ms at
50M, while the clients waited for their task), and the old buffer stayed resident until
its last reference (a worker thread's finished call) went away: a third model at peak.
"""

from __future__ import annotations

import asyncio

import torch

from flotilla.fl.wire import Layout


class SpareModelBuffer:
    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._spare: tuple[bytearray, asyncio.Task[None]] | None = None

    def retire(self, buffer: bytearray) -> None:
        """Take back a model buffer nobody reads any more; zero its data in a worker thread."""
        data = torch.frombuffer(buffer, dtype=torch.uint8, offset=len(self._layout.header))
        self._spare = (buffer, asyncio.create_task(asyncio.to_thread(_zero, data)))

    def take(self) -> tuple[bytearray, asyncio.Task[None] | None]:
        """A buffer for the next accumulator, and the task zeroing it (None: fresh, so zero)."""
        if self._spare is None:
            return self._layout.allocate(), None
        buffer, zeroing = self._spare
        self._spare = None
        return buffer, zeroing


def _zero(data: torch.Tensor) -> None:
    data.zero_()
