"""A pass over a small update runs in place; a large one in a worker thread (offload.py)."""

from __future__ import annotations

import asyncio
import threading

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
