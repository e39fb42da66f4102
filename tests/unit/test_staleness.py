"""Staleness weighting of buffered aggregation (FedBuff), against a numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flotilla.fl.strategies.base import AggregationError
from flotilla.fl.strategies.rules import WeightedMean
from flotilla.fl.strategies.staleness import staleness_scales, staleness_weight


@pytest.mark.parametrize(
    ("staleness", "weight"), [(0, 1.0), (1, 1 / math.sqrt(2)), (3, 0.5), (8, 1 / 3), (99, 0.1)]
)
def test_staleness_weight_is_one_over_the_root_of_one_plus_staleness(
    staleness: int, weight: float
) -> None:
    assert staleness_weight(staleness) == pytest.approx(weight, rel=1e-12)


def test_a_negative_staleness_is_a_bug() -> None:
    with pytest.raises(ValueError, match="got -1"):
        staleness_weight(-1)


def test_staleness_scales_multiply_the_int8_scales_and_fill_in_the_missing_ones() -> None:
    scales = staleness_scales({"w": 0.02}, ["w", "b"], staleness=3)
    assert scales == pytest.approx({"w": 0.01, "b": 0.5})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_buffer_folds_sum_n_s_delta_over_sum_n(seed: int) -> None:
    """FedBuff's buffer with example weights: sum_k n_k s_k d_k / sum_k n_k, against numpy."""
    rng = np.random.default_rng(seed)
    deltas = [rng.standard_normal(5).astype(np.float32) for _ in range(4)]
    examples, stalenesses = [10, 30, 5, 20], [0, 2, 7, 1]
    out = {"w": torch.zeros(5)}
    aggregate = WeightedMean().begin(out)
    for delta, n, s in zip(deltas, examples, stalenesses, strict=True):
        scales = staleness_scales({}, ["w"], staleness=s)
        aggregate.add({"w": torch.from_numpy(delta)}, weight=float(n), scales=scales)
    aggregate.finish()

    weights = np.array([n / math.sqrt(1 + s) for n, s in zip(examples, stalenesses, strict=True)])
    reference = (weights[:, None] * np.stack(deltas)).sum(axis=0) / sum(examples)
    np.testing.assert_allclose(out["w"].numpy(), reference, rtol=1e-5, atol=1e-6)


def test_a_weighted_sum_resumed_from_its_parts_finishes_as_the_uninterrupted_one() -> None:
    deltas = [torch.full((3,), value) for value in (1.0, 2.0, 4.0)]
    whole = {"w": torch.zeros(3)}
    uninterrupted = WeightedMean().begin(whole)
    for delta, n in zip(deltas, (1.0, 2.0, 3.0), strict=True):
        uninterrupted.add({"w": delta}, weight=n, scales={})
    uninterrupted.finish()

    half = {"w": torch.zeros(3)}
    before = WeightedMean().begin(half)
    before.add({"w": deltas[0]}, weight=1.0, scales={})
    before.add({"w": deltas[1]}, weight=2.0, scales={})
    written = half["w"].clone()  # what a journal keeps: the sum, not divided yet
    again = {"w": written}
    resumed = WeightedMean().resume(again, total_weight=3.0, count=2)
    resumed.add({"w": deltas[2]}, weight=3.0, scales={})
    assert resumed.count == 3
    resumed.finish()
    assert torch.equal(again["w"], whole["w"])


def test_a_sum_of_impossible_weight_is_not_resumed() -> None:
    with pytest.raises(AggregationError, match="cannot resume"):
        WeightedMean().resume({"w": torch.zeros(1)}, total_weight=math.nan, count=1)
