"""One receive buffer, handed on as its update goes to the fold: the next body is written
only where the fold has read, and its pace does not pay for the wait (fence.py)."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator

import pytest
import torch

from flotilla.fl.aggregator.fence import ReadFence, ReadProgress
from flotilla.fl.aggregator.intake import UpdateIntake
from flotilla.fl.aggregator.pace import UploadPace
from flotilla.fl.aggregator.terms import ReceivedUpdate, UploadTerms
from flotilla.fl.receive import SafetensorsReceiver
from flotilla.fl.strategies.rules import Krum, WeightedMean
from flotilla.fl.wire import Layout, TensorSpec

LAYOUT = Layout.of(
    [TensorSpec("a", (4,), "F32"), TensorSpec("b", (2, 2), "F32"), TensorSpec("c", (3,), "F32")]
)


def _body(fill: float) -> bytes:
    buffer = LAYOUT.allocate()
    for view in LAYOUT.views(buffer).values():
        view.fill_(fill)
    return bytes(buffer)


def _spans(body: bytes) -> list[tuple[str, int, int]]:
    """(name, first, end) of each tensor's bytes in the body, in body order."""
    (size,) = struct.unpack("<Q", body[:8])
    header = json.loads(body[8 : 8 + size])
    header.pop("__metadata__", None)
    base = 8 + size
    spans = [
        (name, base + e["data_offsets"][0], base + e["data_offsets"][1])
        for name, e in header.items()
    ]
    return sorted(spans, key=lambda span: span[1])


async def _tensor_by_tensor(body: bytes, *, gap: float = 0.0) -> AsyncIterator[bytes]:
    """The header with the first tensor, then one tensor a piece, `gap` seconds apart."""
    spans = _spans(body)
    yield body[: spans[0][2]]
    for _, first, end in spans[1:]:
        await asyncio.sleep(gap)
        yield body[first:end]


def _terms(site: str, body: bytes) -> UploadTerms:
    return UploadTerms(site=site, size=len(body), seconds_left=60.0, round_number=1)


async def _until(condition: object) -> None:
    async with asyncio.timeout(5):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0)


def test_the_fence_moves_over_the_longest_run_read_from_the_start() -> None:
    async def play() -> list[int]:
        fence = ReadFence(12)
        offsets = {"x": (0, 4), "y": (4, 8), "z": (8, 12)}
        progress = ReadProgress(fence, offsets, asyncio.get_running_loop())
        seen = []
        for name in ("y", "x", "z"):  # y alone frees nothing: x, before it, is still read
            await asyncio.to_thread(progress, name)
            await asyncio.sleep(0)
            seen.append(fence.read)
        return seen

    assert asyncio.run(play()) == [0, 8, 12]


def test_progress_wakes_the_loop_once_while_a_wake_up_is_pending() -> None:
    class CountingLoop:
        def __init__(self) -> None:
            self.pending: list[object] = []

        def call_soon_threadsafe(self, callback: object, *args: object) -> None:
            self.pending.append((callback, args))

        def run(self) -> None:
            pending, self.pending = self.pending, []
            for callback, args in pending:
                callback(*args)  # type: ignore[operator]

    async def play() -> None:
        fence, loop = ReadFence(12), CountingLoop()
        progress = ReadProgress(
            fence,
            {"x": (0, 4), "y": (4, 8), "z": (8, 12)},
            loop,  # type: ignore[arg-type]
        )
        progress("x")
        progress("y")
        assert len(loop.pending) == 1 and fence.read == 0
        loop.run()
        assert fence.read == 8  # the latest end, not the one when it was scheduled
        progress("z")
        assert len(loop.pending) == 1
        loop.run()
        assert fence.read == 12

    asyncio.run(play())


def test_a_writer_waits_for_the_fence_and_a_released_one_lets_it_all() -> None:
    async def play() -> list[str]:
        fence, order = ReadFence(10), []

        async def writer() -> None:
            await fence.reach(6)
            order.append("wrote 6")
            await fence.reach(50)  # beyond the buffer: all of it
            order.append("wrote all")

        task = asyncio.create_task(writer())
        fence.advance(5)
        await asyncio.sleep(0)
        order.append("read 5")
        fence.advance(6)
        await _until(lambda: "wrote 6" in order)
        fence.release()
        await asyncio.wait_for(task, 5)
        return order

    assert asyncio.run(play()) == ["read 5", "wrote 6", "wrote all"]
    assert ReadFence.clear(7).read == 7


def test_the_next_body_overwrites_only_the_tensors_the_fold_is_done_with() -> None:
    intake = UpdateIntake(LAYOUT, max_norm=None)  # one receive buffer, the default
    first, second = _body(3.0), _body(5.0)
    order = [name for name, _, _ in _spans(first)]
    got_second: dict[str, torch.Tensor] = {}

    async def receive_second() -> None:
        terms = _terms("b", second)
        async with intake.receive(_tensor_by_tensor(second), terms=terms, zstd=False) as got:
            got_second.update({name: t.clone() for name, t in got.update.tensors.items()})

    async def play() -> list[dict[str, float]]:
        seen: list[dict[str, float]] = []
        async with intake.receive(
            _tensor_by_tensor(first), terms=_terms("a", first), zstd=False
        ) as got:
            tensors = got.update.tensors
            assert intake.receiving() == set(), "the buffer went on with the update to the fold"
            task = asyncio.create_task(receive_second())
            await _until(lambda: "b" in intake.receiving())
            for name in order:
                await asyncio.sleep(0.01)  # room for the second body to run ahead, if it could
                seen.append(
                    {n: float(t[0] if t.dim() == 1 else t[0, 0]) for n, t in tensors.items()}
                )
                await asyncio.to_thread(_release, got, name)
            await _until(lambda: all(float(tensors[n].reshape(-1)[0]) == 5.0 for n in order))
        await asyncio.wait_for(task, 5)
        return seen

    seen = asyncio.run(play())
    # Before each release, the tensors not yet released still hold the first update's values.
    for step, values in enumerate(seen):
        for name in order[step:]:
            assert values[name] == 3.0, f"{name} overwritten before the fold was done with it"
    assert all(torch.equal(t, torch.full_like(t, 5.0)) for t in got_second.values())
    assert intake.receiving() == set()


def _release(got: ReceivedUpdate, name: str) -> None:
    assert got.release is not None
    got.release(name)


def test_time_spent_behind_the_fence_is_not_the_bodys_pace() -> None:
    # A body idle for over 300 ms is cut; the fold holds the next one back for 1 s, and
    # its pieces then come 20 ms apart (the margins: a loaded CI machine).
    intake = UpdateIntake(LAYOUT, max_norm=None, pace=UploadPace(idle_seconds=0.3))
    first, second = _body(1.0), _body(2.0)

    async def play() -> float:
        async with intake.receive(_tensor_by_tensor(first), terms=_terms("a", first), zstd=False):
            terms = _terms("b", second)

            async def receive_second() -> float:
                async with intake.receive(
                    _tensor_by_tensor(second, gap=0.02), terms=terms, zstd=False
                ) as got:
                    return float(got.update.tensors["a"][0])

            task = asyncio.create_task(receive_second())
            await asyncio.sleep(1.0)
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(play()) == 2.0


def test_a_body_refused_before_the_fold_leaves_the_fence_it_found() -> None:
    """A refused body never held the fold's reading up: the next writer still waits for
    the fold before it."""
    intake = UpdateIntake(LAYOUT, max_norm=1.0)
    good, bad, last = _body(0.1), _body(5.0), _body(0.2)

    async def play() -> list[str]:
        events: list[str] = []
        async with intake.receive(
            _tensor_by_tensor(good), terms=_terms("a", good), zstd=False
        ) as got:
            tensors = got.update.tensors

            async def refused() -> None:
                with pytest.raises(Exception, match="norm"):
                    async with intake.receive(
                        _tensor_by_tensor(bad), terms=_terms("b", bad), zstd=False
                    ):
                        pass
                events.append("b refused")

            async def third() -> None:
                async with intake.receive(
                    _tensor_by_tensor(last), terms=_terms("c", last), zstd=False
                ):
                    events.append("c in")

            tasks = [asyncio.create_task(refused()), asyncio.create_task(third())]
            await asyncio.sleep(0.05)
            events.append(f"a still {float(tensors['a'][0]):.1f}")
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return events

    events = asyncio.run(play())
    assert events[0] == "a still 0.1" and set(events[1:]) == {"b refused", "c in"}


def test_a_zstd_body_may_write_anywhere_so_it_waits_for_the_whole_buffer() -> None:
    buffer = memoryview(bytearray(LAYOUT.data_size))
    assert SafetensorsReceiver(LAYOUT, buffer, zstd=True).reach(1) == LAYOUT.data_size
    plain = SafetensorsReceiver(LAYOUT, buffer)
    assert plain.reach(3) == 3 and plain.reach(10**9) == LAYOUT.data_size


@pytest.mark.parametrize("rule", [WeightedMean(), Krum(byzantine_clients=0)], ids=["mean", "krum"])
def test_rules_release_each_tensor_once_read_in_layout_order(rule: object) -> None:
    out = LAYOUT.views(LAYOUT.allocate())
    delta = LAYOUT.views(bytearray(_body(1.0)))
    released: list[str] = []
    aggregate = rule.begin(out)  # type: ignore[attr-defined]
    aggregate.add(delta, weight=1.0, scales={}, release=released.append)
    assert released == [spec.name for spec in LAYOUT.tensors]
