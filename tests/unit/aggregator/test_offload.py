"""A pass over a small update runs in place; a large one in a worker thread (offload.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from flotilla.fl.aggregator.offload import IN_PLACE_BYTES, update_pass


def test_small_updates_pass_in_place_and_large_ones_in_a_thread() -> None:
    async def play() -> list[bool]:
        here = threading.get_ident()

        def work(tag: str, *, suffix: str) -> tuple[str, bool]:
            return tag + suffix, threading.get_ident() == here

        small = await update_pass(IN_PLACE_BYTES, work, "small", suffix="!")
        large = await update_pass(IN_PLACE_BYTES + 1, work, "large", suffix="?")
        assert (small[0], large[0]) == ("small!", "large?")
        return [small[1], large[1]]

    assert asyncio.run(play()) == [True, False]


def test_in_place_torch_runs_on_the_loops_thread_alone_and_its_threads_come_back() -> None:
    before = torch.get_num_threads()

    async def play() -> tuple[int, int]:
        def threads() -> int:
            return torch.get_num_threads()

        def fails() -> None:
            raise RuntimeError("a bad update")

        with pytest.raises(RuntimeError, match="a bad update"):
            await update_pass(IN_PLACE_BYTES, fails)
        assert torch.get_num_threads() == before
        return await update_pass(IN_PLACE_BYTES, threads), await update_pass(
            IN_PLACE_BYTES + 1, threads
        )

    in_place, in_thread = asyncio.run(play())
    assert in_place == 1
    assert in_thread == before  # a big model's fold keeps torch's threads
    assert torch.get_num_threads() == before
