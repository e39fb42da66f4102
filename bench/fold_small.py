"""The aggregator's work per received update of a small model, before and after 2026-12-04:
the norm check and the weighted-mean fold tensor by tensor, each in a worker thread
(`asyncio.to_thread`, as it was), against one flat view (wire.TensorViews) in place on the
event loop (aggregator/offload.py), in this process, the same updates.

What it leaves out is what made the change worth more in the real aggregator than here: a
worker thread that holds the GIL makes the loop wait in the middle of its I/O, which only
shows with a thousand connections (bench/load_sites.py; bench/README.md).

    .venv/bin/python bench/fold_small.py [--updates 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

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


async def per_update(layout: Layout, updates: int, *, flat: bool) -> float:
    """CPU seconds of this process per update: the weights' check, then the fold."""
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

    started = time.process_time()
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
    return (time.process_time() - started) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=2000)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}; {args.updates} updates each, best of 3")
    for name, layout in layouts().items():
        before = min(asyncio.run(per_update(layout, args.updates, flat=False)) for _ in range(3))
        after = min(asyncio.run(per_update(layout, args.updates, flat=True)) for _ in range(3))
        print(
            f"{name}: tensor by tensor in threads {before * 1e6:.0f} us, flat in place "
            f"{after * 1e6:.0f} us of CPU per update: **{before / after:.1f}x**"
        )


if __name__ == "__main__":
    main()
