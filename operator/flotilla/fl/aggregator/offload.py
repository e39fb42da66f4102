"""A pass over one update: in a worker thread, unless it is small enough to cost less here.

The event loop must not stall on a model-sized pass, so checks and folds run in worker
threads. For a small model that hand-off is most of the cost: two wake-ups, and the GIL
passed to and fro between the thread and the loop, which then waits for it in the middle
of its I/O. At 1,000 sites of a 38K-parameter CNN the folds' threads made the loop wait
while doing microseconds of work each (bench/README.md, "Small updates folded in place").

In place, torch runs on the loop's thread alone. Its operations past 32,768 elements
(torch's grain size; the CNN's flat update has 38,282) otherwise open an OpenMP parallel
region: for a pass of microseconds, waking the other threads costs more than they save,
and where another process holds the other cores (a client, the load generator) the loop
waits for them: a CNN update's check went from ~20 to 35-300 us with a busy second core.
Passes in worker threads keep torch's threads: a big model's fold is where they pay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

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
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return work(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return await asyncio.to_thread(work, *args, **kwargs)
