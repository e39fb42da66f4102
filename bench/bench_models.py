"""Synthetic models for the benchmarks: size set by FLOTILLA_BENCH_HIDDEN, training trivial."""

from __future__ import annotations

import math
import os

from torch import nn


def parameter_count(hidden: int, inputs: int = 64, classes: int = 10) -> int:
    return inputs * hidden + hidden + hidden * classes + classes


def wide_mlp(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    hidden = int(os.environ.get("FLOTILLA_BENCH_HIDDEN", "140000"))
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
