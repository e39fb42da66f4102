"""Synthetic models for the benchmarks: size set by FLOTILLA_BENCH_WIDTH/DEPTH, training trivial.

A stack of square layers rather than one wide hidden layer: the parameter count is the
same kind of figure, but activations stay small (batch x width), so a client's memory is
the framework's and the model's, not a benchmark artefact of 100 MB activations.
"""

from __future__ import annotations

import math
import os

from torch import nn


def parameter_count(width: int, depth: int, inputs: int = 64, classes: int = 10) -> int:
    return (inputs * width + width) + depth * (width * width + width) + (width * classes + classes)


def deep_mlp(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    width = int(os.environ.get("FLOTILLA_BENCH_WIDTH", "1024"))
    depth = int(os.environ.get("FLOTILLA_BENCH_DEPTH", "10"))
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
