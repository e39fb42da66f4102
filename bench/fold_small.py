"""The aggregator's work per received update of a small model, before and after 2026-12-04:
the norm check and the weighted-mean fold tensor by tensor, each in a worker thread
(`asyncio.to_thread`, as it was), against one flat view (wire.TensorViews) in place on the
event loop (aggregator/offload.py), in this process, the same updates.

What it leaves out is what made the change worth more in the real aggregator than here: a
worker thread that holds the GIL makes the loop wait in the middle of its I/O, which only
shows with a thousand connections (bench/load_sites.py; bench/README.md).

With `--busy`, a spinning process holds every other core meanwhile, as the clients or the
load generator do on a small machine: then the wall time per update is what the loop waits.

    .venv/bin/python bench/fold_small.py [--updates 2000] [--busy]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import torch

from flotilla.fl.aggregator.offload import update_pass
from flotilla.fl.codec import decode_update
from flotilla.fl.strategies.rules import WeightedMean
from flotilla.fl.wire import Layout, model_layout
from flotilla.ml.models import cnn_small


def layouts() -> dict[str, Layout]:
    cnn = cnn_small(num_classes=10, input_shape=(1, 8, 8)).state_dict()
    mlp = {
        f"layer{i}.{kind}": torch.zeros(shape)
        for i in range(12)
        for kind, shape in (("weight", (96, 96)), ("bias", (96,)))
    }
    return {
        "digits CNN (38K, 8 tensors)": model_layout(cnn),
        "MLP 12 x 96 (112K, 24 tensors)": model_layout(mlp),
    }


async def per_update(layout: Layout, updates: int, *, flat: bool) -> tuple[float, float]:
    """CPU and wall seconds of this process per update: the weights' check, then the fold."""
    global_views = layout.views(layout.allocate())
    body = layout.views(layout.allocate())
    for view in body.values():
        view.normal_()
    out = layout.views(layout.allocate())
    minus = global_views if flat else dict(global_views)
    aggregate = WeightedMean().begin(out if flat else dict(out))
    update = body if flat else dict(body)

    def run(work: Callable[..., object], *args: object, **kwargs: object) -> Awaitable[object]:
        if flat:
            return update_pass(layout.data_size, work, *args, **kwargs)
        return asyncio.to_thread(work, *args, **kwargs)

    started, wall = time.process_time(), time.perf_counter()
    for _ in range(updates):
        decoded = await run(decode_update, update, max_norm=None, minus=minus)
        await run(
            aggregate.add,
            decoded.tensors,  # type: ignore[attr-defined]
            weight=1.0,
            scales={},
            minus=minus,
            release=lambda name: None,
        )
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    return cpu / updates, wall / updates


@contextlib.contextmanager
def other_cores_busy(busy: bool) -> Iterator[None]:
    """A spinning process per core but this one's, while the block runs."""
    count = (os.cpu_count() or 1) - 1 if busy else 0
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--busy", action="store_true", help="spin every other core meanwhile")
    args = parser.parse_args()
    print(
        f"torch threads {torch.get_num_threads()}; {args.updates} updates each, best of 3"
        f"{'; every other core busy' if args.busy else ''}"
    )
    with other_cores_busy(args.busy):
        for name, layout in layouts().items():
            runs = {
                flat: [asyncio.run(per_update(layout, args.updates, flat=flat)) for _ in range(3)]
                for flat in (False, True)
            }
            (before_cpu, after_cpu), (before_wall, after_wall) = (
                [min(run[i] for run in runs[flat]) for flat in (False, True)] for i in (0, 1)
            )
            print(
                f"{name}: tensor by tensor in threads {before_cpu * 1e6:.0f} us CPU, "
                f"{before_wall * 1e6:.0f} us wall; flat in place {after_cpu * 1e6:.0f} us CPU, "
                f"{after_wall * 1e6:.0f} us wall per update: **{before_cpu / after_cpu:.1f}x** CPU"
            )


if __name__ == "__main__":
    main()
