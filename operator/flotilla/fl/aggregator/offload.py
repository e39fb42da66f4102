"""A pass over one update: in a worker thread, unless it is small enough to cost less here.

The event loop must not stall on a model-sized pass, so checks and folds run in worker
threads. For a small model that hand-off is most of the cost: two wake-ups, and the GIL
passed to and fro between the thread and the loop, which then waits for it in the middle
of its I/O. At 1,000 sites of a 38K-parameter CNN the folds' threads made the loop wait
while doing microseconds of work each (bench/README.md, "Small updates folded in place").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

# A pass over 1 MiB (a subtraction and a dot product, or one add) takes ~0.1 ms here:
# less than the hand-off, and short enough to hold the loop for.
IN_PLACE_BYTES = 1 << 20

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def update_pass(
    nbytes: int, work: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """`work(*args, **kwargs)`, over an update of `nbytes`: in place up to IN_PLACE_BYTES,
    else in a worker thread."""
    if nbytes <= IN_PLACE_BYTES:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)
