"""Aggregation rules and server optimizers against plain numpy references."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from flotilla.fl.strategies import (
    STRATEGY_NAMES,
    AggregationError,
    AggregationRule,
    CoordinateMedian,
    Krum,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSgd,
    ServerYogi,
    TrimmedMean,
    WeightedMean,
    build_strategy,
)

SHAPES = {"conv.weight": (2, 3), "conv.bias": (3,), "fc.weight": (4, 2)}
SEEDS = [0, 1, 2, 3]
NpMap = dict[str, np.ndarray]


def _random_deltas(rng: np.random.Generator, n: int) -> list[NpMap]:
    return [
        {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
        for _ in range(n)
    ]


def _int8_deltas(rng: np.random.Generator, n: int) -> tuple[list[NpMap], list[dict[str, float]]]:
    """n random int8 deltas and a float32 scale per tensor for each."""
    deltas = [
        {
            name: rng.integers(-127, 128, size=shape).astype(np.int8)
            for name, shape in SHAPES.items()
        }
        for _ in range(n)
    ]
    return deltas, [{name: float(rng.uniform(0.01, 1.0)) for name in SHAPES} for _ in deltas]


def _torch(delta: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(array)) for name, array in delta.items()}


def _aggregate(
    rule: AggregationRule,
    deltas: Sequence[Mapping[str, np.ndarray]],
    *,
    weights: Sequence[float] | None = None,
    scales: Sequence[Mapping[str, float]] | None = None,
) -> NpMap:
    out = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_ = rule.begin(out)
    for i, delta in enumerate(deltas):
        weight = 1.0 if weights is None else weights[i]
        round_.add(_torch(delta), weight=weight, scales={} if scales is None else scales[i])
    round_.finish()
    return {name: tensor.numpy() for name, tensor in out.items()}


def _dequantized(
    deltas: Sequence[Mapping[str, np.ndarray]], scales: Sequence[Mapping[str, float]]
) -> list[NpMap]:
    return [
        {name: array.astype(np.float64) * scale.get(name, 1.0) for name, array in delta.items()}
        for delta, scale in zip(deltas, scales, strict=True)
    ]


def _assert_close(actual: NpMap, expected: NpMap, *, rtol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=1e-6)


# --- references, written out longhand -------------------------------------------------


def _ref_weighted_mean(deltas: list[NpMap], weights: Sequence[float]) -> NpMap:
    total = sum(weights)
    result = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    for delta, weight in zip(deltas, weights, strict=True):
        for name in SHAPES:
            result[name] += weight * delta[name].astype(np.float64)
    return {name: value / total for name, value in result.items()}


def _ref_median(deltas: list[NpMap]) -> NpMap:
    return {name: np.median(np.stack([d[name] for d in deltas]), axis=0) for name in SHAPES}


def _ref_trimmed_mean(deltas: list[NpMap], fraction: float) -> NpMap:
    n = len(deltas)
    cut = math.floor(fraction * n)
    return {
        name: np.sort(np.stack([d[name] for d in deltas]), axis=0)[cut : n - cut].mean(axis=0)
        for name in SHAPES
    }


def _ref_mean_of_nearest(deltas: list[NpMap], centre: NpMap, keep: int) -> NpMap:
    """Per coordinate, the mean of the `keep` values nearest `centre`, one at a time.

    Ties in distance go to the lower value (a stable sort of the sorted values).
    """
    result: NpMap = {}
    for name in SHAPES:
        values = np.sort(np.stack([d[name].astype(np.float64) for d in deltas]), axis=0)
        out = np.empty(values.shape[1:])
        for index in np.ndindex(*values.shape[1:]):
            column = values[(slice(None), *index)]
            nearest = np.argsort(np.abs(column - centre[name][index]), kind="stable")[:keep]
            out[index] = column[nearest].mean()
        result[name] = out
    return result


def _ref_meamed(deltas: list[NpMap]) -> NpMap:
    n = len(deltas)
    return _ref_mean_of_nearest(deltas, _ref_median(deltas), n - (n - 1) // 2)


def _ref_phocas(deltas: list[NpMap], fraction: float) -> NpMap:
    n = len(deltas)
    return _ref_mean_of_nearest(
        deltas, _ref_trimmed_mean(deltas, fraction), n - math.floor(fraction * n)
    )


def _ref_krum(deltas: list[NpMap], f: int, m: int | None) -> tuple[NpMap, list[int]]:
    n = len(deltas)
    flat = [np.concatenate([d[name].astype(np.float64).ravel() for name in SHAPES]) for d in deltas]
    scores = []
    for i in range(n):
        distances = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(distances[: n - f - 2]))
    chosen = sorted(range(n), key=lambda i: (scores[i], i))[: (n - f if m is None else m)]
    mean = {name: np.mean([deltas[i][name] for i in chosen], axis=0) for name in SHAPES}
    return mean, chosen


# --- rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_mean_of_float32_deltas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    deltas = _random_deltas(rng, 5)
    weights = [float(w) for w in rng.integers(1, 100, size=5)]

    result = _aggregate(WeightedMean(), deltas, weights=weights)

    _assert_close(result, _ref_weighted_mean(deltas, weights))


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_mean_dequantizes_float16_and_int8_deltas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    deltas: list[NpMap] = []
    for i in range(6):
        dtype = np.int8 if i % 2 else np.float16
        deltas.append(
            {
                name: rng.integers(-127, 128, size=shape).astype(np.int8)
                if dtype is np.int8
                else rng.normal(size=shape).astype(np.float16)
                for name, shape in SHAPES.items()
            }
        )
    scales = [{name: float(rng.uniform(1e-3, 1e-1)) for name in SHAPES} for _ in deltas]
    scales[0] = {}  # no scale means 1.0
    weights = [float(w) for w in rng.integers(1, 50, size=6)]

    result = _aggregate(WeightedMean(), deltas, weights=weights, scales=scales)

    _assert_close(result, _ref_weighted_mean(_dequantized(deltas, scales), weights))


def test_weighted_mean_keeps_no_reference_to_the_delta_buffer() -> None:
    rng = np.random.default_rng(7)
    deltas = _random_deltas(rng, 3)
    receive_buffer = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    out = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_ = WeightedMean().begin(out)

    for delta in deltas:  # one reused buffer, as the aggregator's receive path does
        for name, tensor in receive_buffer.items():
            tensor.copy_(torch.from_numpy(delta[name]))
        round_.add(receive_buffer, weight=2.0, scales={})
    for tensor in receive_buffer.values():
        tensor.fill_(1000.0)
    round_.finish()

    _assert_close({n: t.numpy() for n, t in out.items()}, _ref_weighted_mean(deltas, [2.0] * 3))


@pytest.mark.parametrize(
    "rule",
    [CoordinateMedian(), TrimmedMean(trim_fraction=0.2), Krum(byzantine_clients=0)],
    ids=["median", "trimmed", "krum"],
)
def test_collecting_rules_copy_the_delta_buffer(rule: AggregationRule) -> None:
    rng = np.random.default_rng(8)
    deltas = _random_deltas(rng, 5)
    expected = _aggregate(rule, deltas)
    out = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_ = rule.begin(out)
    receive_buffer = {name: torch.zeros(shape) for name, shape in SHAPES.items()}

    for delta in deltas:
        for name, tensor in receive_buffer.items():
            tensor.copy_(torch.from_numpy(delta[name]))
        round_.add(receive_buffer, weight=1.0, scales={})
        for tensor in receive_buffer.values():
            tensor.fill_(-1000.0)
    round_.finish()

    _assert_close({n: t.numpy() for n, t in out.items()}, expected)


ALL_RULES = [
    WeightedMean(),
    CoordinateMedian(),
    TrimmedMean(trim_fraction=0.2),
    CoordinateMedian(mean_of_nearest=True),
    Krum(byzantine_clients=1),
]


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda rule: type(rule).__name__)
@pytest.mark.parametrize("seed", [0, 1])
def test_weights_against_the_global_model_aggregate_as_their_deltas(
    rule: AggregationRule, seed: int
) -> None:
    """Float32 clients send weights; the rule folds them with `minus` (the global model).
    A round mixing weights, deltas and clipping scales gives what the deltas give."""
    rng = np.random.default_rng(seed)
    deltas = _random_deltas(rng, 6)
    weights = [float(w) for w in rng.integers(1, 50, size=6)]
    scales = [
        {name: float(rng.uniform(0.2, 1.0)) for name in SHAPES} if i % 3 == 0 else {}
        for i in range(6)
    ]
    global_model = {
        name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()
    }
    minus = _torch(global_model)
    expected = _aggregate(rule, _dequantized(deltas, scales), weights=weights)

    out = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_ = rule.begin(out)
    receive_buffer = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    for i, delta in enumerate(deltas):
        sends_weights = i % 2 == 0
        for name, tensor in receive_buffer.items():
            value = delta[name] + global_model[name] if sends_weights else delta[name]
            tensor.copy_(torch.from_numpy(value))
        round_.add(
            receive_buffer,
            weight=weights[i],
            scales=scales[i],
            minus=minus if sends_weights else None,
        )
        for tensor in receive_buffer.values():
            tensor.fill_(-1000.0)  # the buffer is reused: nothing may point into it
    round_.finish()

    _assert_close({n: t.numpy() for n, t in out.items()}, expected, rtol=1e-4)
    assert all(np.array_equal(minus[n].numpy(), global_model[n]) for n in SHAPES)


def test_weighted_mean_of_weights_stays_within_float32_rounding_of_the_exact_mean() -> None:
    """Weights are folded and the global model taken off at finish: the result may differ
    from the deltas' mean by rounding only, a few ulps of the weights."""
    generator = torch.Generator().manual_seed(3)
    size, clients = 1 << 20, 8
    global_model = {"w": torch.randn(size, generator=generator) * 0.1}
    trained = [
        global_model["w"] + torch.randn(size, generator=generator) * 1e-3 for _ in range(clients)
    ]
    examples = [float(e) for e in torch.randint(100, 500, (clients,), generator=generator)]
    out = {"w": torch.zeros(size)}
    round_ = WeightedMean().begin(out)
    for count, weights in zip(examples, trained, strict=True):
        round_.add({"w": weights}, weight=count, scales={}, minus=global_model)
    round_.finish()

    exact = sum(
        count * (weights.double() - global_model["w"].double())
        for count, weights in zip(examples, trained, strict=True)
    ) / sum(examples)
    ulp = float(torch.finfo(torch.float32).eps) * float(global_model["w"].abs().max())
    error = float((out["w"].double() - exact).abs().max())
    assert error <= clients * ulp, f"{error / ulp:.1f} ulps of the largest weight"


def test_weighted_mean_refuses_weights_against_two_global_models() -> None:
    out = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_ = WeightedMean().begin(out)
    update = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_.add(update, weight=1.0, scales={}, minus=dict(update))
    with pytest.raises(AggregationError, match="one global model"):
        round_.add(update, weight=1.0, scales={}, minus=dict(update))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_coordinate_median_is_numpy_median(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    deltas = _random_deltas(rng, n)
    weights = [float(w) for w in rng.integers(1, 100, size=n)]

    result = _aggregate(CoordinateMedian(), deltas, weights=weights)

    _assert_close(result, _ref_median(deltas))


def test_coordinate_median_dequantizes_int8_with_scales() -> None:
    deltas, scales = _int8_deltas(np.random.default_rng(3), 4)

    result = _aggregate(CoordinateMedian(), deltas, scales=scales)

    _assert_close(result, _ref_median(_dequantized(deltas, scales)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n", "fraction"), [(5, 0.2), (7, 0.3), (4, 0.0), (10, 0.45), (3, 0.1)])
def test_trimmed_mean_drops_the_extremes(seed: int, n: int, fraction: float) -> None:
    rng = np.random.default_rng(seed)
    deltas = _random_deltas(rng, n)

    result = _aggregate(TrimmedMean(trim_fraction=fraction), deltas)

    _assert_close(result, _ref_trimmed_mean(deltas, fraction))


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7])
def test_trimmed_mean_refuses_fractions_that_could_leave_nothing(fraction: float) -> None:
    with pytest.raises(ValueError, match="trim_fraction"):
        TrimmedMean(trim_fraction=fraction)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 10])
def test_mean_around_median_matches_the_reference(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    deltas = _random_deltas(rng, n)

    result = _aggregate(CoordinateMedian(mean_of_nearest=True), deltas)

    _assert_close(result, _ref_meamed(deltas))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("n", "fraction"), [(5, 0.2), (5, 0.4), (7, 0.3), (4, 0.0), (10, 0.45), (3, 0.1)]
)
def test_phocas_matches_the_reference(seed: int, n: int, fraction: float) -> None:
    rng = np.random.default_rng(seed)
    deltas = _random_deltas(rng, n)

    result = _aggregate(TrimmedMean(trim_fraction=fraction, mean_of_nearest=True), deltas)

    _assert_close(result, _ref_phocas(deltas, fraction))


def test_mean_of_nearest_dequantizes_int8_with_scales() -> None:
    deltas, scales = _int8_deltas(np.random.default_rng(4), 5)

    result = _aggregate(CoordinateMedian(mean_of_nearest=True), deltas, scales=scales)

    _assert_close(result, _ref_meamed(_dequantized(deltas, scales)))


@pytest.mark.parametrize(
    "rule",
    [CoordinateMedian(mean_of_nearest=True), TrimmedMean(trim_fraction=0.4, mean_of_nearest=True)],
    ids=["meamed", "phocas"],
)
@pytest.mark.parametrize("seed", SEEDS)
def test_mean_of_nearest_undoes_the_median_bias_of_one_sided_attackers(
    rule: AggregationRule, seed: int
) -> None:
    # 3 honest deltas, 2 far out on the same side of every coordinate (f = 2 of 5): the
    # median is the honest extreme next to them; the mean of the 3 nearest is the honest mean.
    rng = np.random.default_rng(seed)
    honest = _random_deltas(rng, 3)
    hostile = [{name: np.full(shape, -50.0 - i, np.float32) for name, shape in SHAPES.items()}
               for i in range(2)]  # fmt: skip

    result = _aggregate(rule, [*hostile, *honest])
    median = _aggregate(CoordinateMedian(), [*hostile, *honest])

    _assert_close(result, _ref_weighted_mean(honest, [1.0] * 3))
    honest_min = {name: np.min([h[name] for h in honest], axis=0) for name in SHAPES}
    _assert_close(median, honest_min)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n", "f"), [(5, 2), (7, 3), (6, 2), (3, 1)])
def test_mean_around_median_stays_within_the_honest_spread(seed: int, n: int, f: int) -> None:
    # Whatever f < n / 2 clients send, every value averaged is no farther from the median
    # than the farthest honest value, and the median lies within the honest range.
    rng = np.random.default_rng(seed)
    honest = _random_deltas(rng, n - f)
    hostile = [
        {name: (rng.normal(size=shape) * rng.choice([0.1, 1.0, 1e4])).astype(np.float32)
         for name, shape in SHAPES.items()}
        for _ in range(f)
    ]  # fmt: skip

    result = _aggregate(CoordinateMedian(mean_of_nearest=True), [*hostile, *honest])

    for name in SHAPES:
        low = np.min([h[name] for h in honest], axis=0)
        high = np.max([h[name] for h in honest], axis=0)
        width = high - low
        assert np.all(result[name] >= low - width - 1e-5)
        assert np.all(result[name] <= high + width + 1e-5)


def test_mean_of_nearest_breaks_ties_towards_the_lower_values() -> None:
    # Median 1.5 of [0, 1, 2, 3]; 0 and 3 are equally near it: the three kept are 0, 1, 2.
    deltas = [{name: np.full(shape, v, np.float32) for name, shape in SHAPES.items()}
              for v in (3.0, 0.0, 2.0, 1.0)]  # fmt: skip

    result = _aggregate(CoordinateMedian(mean_of_nearest=True), deltas)

    _assert_close(result, {name: np.ones(shape) for name, shape in SHAPES.items()})


def test_mean_of_nearest_is_off_unless_asked() -> None:
    assert not CoordinateMedian().mean_of_nearest
    assert not TrimmedMean(trim_fraction=0.2).mean_of_nearest


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 1), (7, 2, 1), (7, 1, None), (9, 2, 3)])
def test_krum_and_multi_krum_match_the_reference(seed: int, n: int, f: int, m: int | None) -> None:
    rng = np.random.default_rng(seed)
    deltas = _random_deltas(rng, n)

    result = _aggregate(Krum(byzantine_clients=f, selected=m), deltas)

    expected, _ = _ref_krum(deltas, f, m)
    _assert_close(result, expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("selected", [1, None])
def test_krum_never_selects_the_outlier(seed: int, selected: int | None) -> None:
    rng = np.random.default_rng(seed)
    honest = [{k: v * 0.1 for k, v in d.items()} for d in _random_deltas(rng, 6)]
    outlier = {name: np.full(shape, 50.0, dtype=np.float32) for name, shape in SHAPES.items()}
    deltas: list[NpMap] = [*honest[:3], outlier, *honest[3:]]

    result = _aggregate(Krum(byzantine_clients=1, selected=selected), deltas)

    expected, chosen = _ref_krum(deltas, 1, selected)
    assert 3 not in chosen
    _assert_close(result, expected)
    if selected is None:  # n - f = 6: exactly the honest ones
        _assert_close(result, {k: np.mean([d[k] for d in honest], axis=0) for k in SHAPES})


@pytest.mark.parametrize("order", [(-1.0, 1.0, 0.0), (1.0, -1.0, 0.0), (0.0, 1.0, -1.0)])
def test_krum_breaks_ties_towards_the_lowest_index(order: tuple[float, ...]) -> None:
    # Each of the three is at squared distance 1 * size from its nearest neighbour:
    # every score is equal, so Krum must pick the first.
    deltas = [
        {k: np.full(shape, v, dtype=np.float32) for k, shape in SHAPES.items()} for v in order
    ]

    result = _aggregate(Krum(byzantine_clients=0, selected=1), deltas)

    _assert_close(result, deltas[0])


@pytest.mark.parametrize(("f", "m", "n", "needed"), [(1, None, 4, 5), (2, 1, 6, 7), (1, 5, 5, 6)])
def test_krum_refuses_too_few_updates(f: int, m: int | None, n: int, needed: int) -> None:
    rule = Krum(byzantine_clients=f, selected=m)
    deltas = _random_deltas(np.random.default_rng(0), n)

    with pytest.raises(AggregationError, match=rf"at least {needed} updates .* got {n}"):
        _aggregate(rule, deltas)

    assert rule.min_updates() == needed


@pytest.mark.parametrize(
    "rule",
    [WeightedMean(), CoordinateMedian(), TrimmedMean(trim_fraction=0.1), Krum(byzantine_clients=0)],
)
def test_finish_without_updates_is_an_error(rule: AggregationRule) -> None:
    with pytest.raises(AggregationError, match="no updates to aggregate"):
        _aggregate(rule, [])


def test_a_round_finishes_once() -> None:
    out = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_ = WeightedMean().begin(out)
    round_.add(_torch(_random_deltas(np.random.default_rng(0), 1)[0]), weight=1.0, scales={})
    round_.finish()

    with pytest.raises(AggregationError, match="already finished"):
        round_.finish()
    with pytest.raises(AggregationError, match="already finished"):
        round_.add(_torch(_random_deltas(np.random.default_rng(1), 1)[0]), weight=1, scales={})


@pytest.mark.parametrize("rule", [WeightedMean(), CoordinateMedian()])
def test_a_delta_with_another_layout_is_refused_before_folding(rule: AggregationRule) -> None:
    out = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    round_ = rule.begin(out)
    wrong_shape = {name: torch.ones(shape) for name, shape in SHAPES.items()}
    wrong_shape["fc.weight"] = torch.ones(1)  # add_ would broadcast this silently
    missing = {name: torch.ones(shape) for name, shape in SHAPES.items() if name != "conv.bias"}

    with pytest.raises(AggregationError, match=r"fc\.weight"):
        round_.add(wrong_shape, weight=1.0, scales={})
    with pytest.raises(AggregationError, match=r"conv\.bias"):
        round_.add(missing, weight=1.0, scales={})

    assert round_.count == 0
    assert all(not tensor.any() for tensor in out.values())


def test_weighted_mean_refuses_zero_total_weight() -> None:
    deltas = _random_deltas(np.random.default_rng(0), 2)

    with pytest.raises(AggregationError, match="total weight"):
        _aggregate(WeightedMean(), deltas, weights=[0.0, 0.0])


def test_only_the_weighted_mean_streams() -> None:
    assert WeightedMean().streaming
    assert not CoordinateMedian().streaming
    assert not TrimmedMean(trim_fraction=0.1).streaming
    assert not Krum(byzantine_clients=1).streaming


# --- server optimizers ----------------------------------------------------------------


def _ref_server_steps(
    kind: str, start: NpMap, rounds: list[NpMap], *, eta: float, b1: float, b2: float, tau: float
) -> list[NpMap]:
    weights = {k: v.astype(np.float64) for k, v in start.items()}
    m = {k: np.zeros(v.shape) for k, v in start.items()}
    v = {k: np.full(val.shape, tau**2) for k, val in start.items()}
    history = []
    for delta in rounds:
        for name in start:
            d = delta[name].astype(np.float64)
            if kind == "sgd":
                weights[name] = weights[name] + eta * d
                continue
            m[name] = b1 * m[name] + (1 - b1) * d
            if kind == "adam":
                v[name] = b2 * v[name] + (1 - b2) * d * d
            elif kind == "yogi":
                v[name] = v[name] - (1 - b2) * d * d * np.sign(v[name] - d * d)
            else:
                v[name] = v[name] + d * d
            weights[name] = weights[name] + eta * m[name] / (np.sqrt(v[name]) + tau)
        history.append({k: w.copy() for k, w in weights.items()})
    return history


def _optimizer(kind: str, *, eta: float, b1: float, b2: float, tau: float) -> ServerOptimizer:
    if kind == "sgd":
        return ServerSgd(learning_rate=eta)
    cls = {"adam": ServerAdam, "yogi": ServerYogi, "adagrad": ServerAdagrad}[kind]
    return cls(learning_rate=eta, beta1=b1, beta2=b2, tau=tau)


def _run_rounds(
    optimizer: ServerOptimizer, start: Mapping[str, torch.Tensor], rounds: list[NpMap]
) -> list[dict[str, torch.Tensor]]:
    weights = dict(start)
    history = []
    for delta in rounds:
        update = _torch(delta)
        optimizer.step(global_weights=weights, update=update)
        weights = update  # the update buffer becomes the next global model
        history.append(weights)
    return history


KINDS = ["sgd", "adam", "yogi", "adagrad"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_server_optimizers_carry_state_over_rounds(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    hyper = {"eta": float(rng.uniform(0.01, 1.0)), "b1": 0.9, "b2": 0.99, "tau": 1e-2}
    start = _random_deltas(rng, 1)[0]
    rounds = [{k: v * 0.1 for k, v in d.items()} for d in _random_deltas(rng, 5)]
    global_before = _torch(start)

    history = _run_rounds(_optimizer(kind, **hyper), global_before, rounds)

    expected = _ref_server_steps(kind, start, rounds, **hyper)
    for actual, reference in zip(history, expected, strict=True):
        _assert_close({k: t.numpy() for k, t in actual.items()}, reference, rtol=1e-4)
    _assert_close({k: t.numpy() for k, t in global_before.items()}, start)  # read only


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_optimizer_state_round_trips(kind: str) -> None:
    rng = np.random.default_rng(5)
    hyper = {"eta": 0.1, "b1": 0.9, "b2": 0.99, "tau": 1e-3}
    start = _random_deltas(rng, 1)[0]
    rounds = _random_deltas(rng, 3)
    original = _optimizer(kind, **hyper)
    weights = _run_rounds(original, _torch(start), rounds[:2])[-1]
    state = {key: tensor.clone() for key, tensor in original.state_dict().items()}

    restored = _optimizer(kind, **hyper)
    restored.load_state_dict(state)
    for tensor in state.values():
        tensor.fill_(123.0)  # the optimizer must have copied what it loaded
    [from_original] = _run_rounds(original, weights, rounds[2:])
    [from_restored] = _run_rounds(restored, weights, rounds[2:])

    assert set(original.state_dict()) == {f"{kind}/{name}" for kind in "mv" for name in SHAPES}
    for name in SHAPES:
        assert torch.equal(from_original[name], from_restored[name])


def test_optimizer_state_starts_at_zero_and_tau_squared() -> None:
    optimizer = ServerAdam(learning_rate=0.1, tau=0.5)
    start = {name: torch.zeros(shape) for name, shape in SHAPES.items()}
    update = {name: torch.zeros(shape) for name, shape in SHAPES.items()}

    optimizer.step(global_weights=start, update=update)

    state = optimizer.state_dict()
    assert all(not state[f"m/{name}"].any() for name in SHAPES)
    # A zero delta leaves Adam's v at beta2 * tau^2.
    assert torch.allclose(state["v/conv.bias"], torch.full((3,), 0.99 * 0.25))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"x/conv.bias": torch.zeros(3)}, "x/conv.bias"),
        ({"m/conv.bias": torch.zeros(3)}, "but v for"),
        ({"m/conv.bias": torch.zeros(3), "v/conv.bias": torch.zeros(2)}, "shape"),
    ],
)
def test_optimizer_load_validates_keys(state: dict[str, torch.Tensor], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerYogi(learning_rate=0.1).load_state_dict(state)


def test_optimizer_state_of_another_layout_is_refused_on_step() -> None:
    optimizer = ServerAdagrad(learning_rate=0.1)
    optimizer.load_state_dict({"m/other": torch.zeros(2), "v/other": torch.ones(2)})
    start = {name: torch.zeros(shape) for name, shape in SHAPES.items()}

    with pytest.raises(ValueError, match="other"):
        optimizer.step(global_weights=start, update={k: t.clone() for k, t in start.items()})


def test_server_sgd_is_stateless() -> None:
    optimizer = ServerSgd(learning_rate=1.0)

    assert optimizer.state_dict() == {}
    optimizer.load_state_dict({})
    with pytest.raises(ValueError, match="stateless"):
        optimizer.load_state_dict({"m/conv.bias": torch.zeros(3)})


# --- build_strategy -------------------------------------------------------------------


@dataclass(frozen=True)
class FakeParams:
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.5
    beta1: float = 0.8
    beta2: float = 0.95
    tau: float = 1e-4
    trim_fraction: float = 0.25
    byzantine_clients: int = 2
    selected: int | None = 3
    mean_of_nearest: bool = False


@dataclass(frozen=True)
class FakeSpec:
    name: str
    values: FakeParams = field(default_factory=FakeParams)

    def params(self) -> FakeParams:
        return self.values


@pytest.mark.parametrize(
    ("name", "rule_type", "optimizer_type"),
    [
        ("fedavg", WeightedMean, ServerSgd),
        ("fedprox", WeightedMean, ServerSgd),
        ("fedadam", WeightedMean, ServerAdam),
        ("fedyogi", WeightedMean, ServerYogi),
        ("fedadagrad", WeightedMean, ServerAdagrad),
        ("fedmedian", CoordinateMedian, ServerSgd),
        ("trimmedmean", TrimmedMean, ServerSgd),
        ("krum", Krum, ServerSgd),
        ("multikrum", Krum, ServerSgd),
    ],
)
def test_build_strategy_maps_each_name(name: str, rule_type: type, optimizer_type: type) -> None:
    strategy = build_strategy(FakeSpec(name))

    assert strategy.name == name
    assert type(strategy.rule) is rule_type
    assert type(strategy.optimizer) is optimizer_type
    assert strategy.proximal_mu == (0.01 if name == "fedprox" else 0.0)
    assert vars(strategy.optimizer)["learning_rate"] == 0.5


def test_build_strategy_passes_the_parameters() -> None:
    adam = build_strategy(FakeSpec("fedadam")).optimizer
    trimmed = build_strategy(FakeSpec("trimmedmean")).rule
    phocas = build_strategy(FakeSpec("trimmedmean", FakeParams(mean_of_nearest=True))).rule
    meamed = build_strategy(FakeSpec("fedmedian", FakeParams(mean_of_nearest=True))).rule
    median = build_strategy(FakeSpec("fedmedian")).rule
    krum = build_strategy(FakeSpec("krum")).rule
    multi = build_strategy(FakeSpec("multikrum")).rule
    multi_default = build_strategy(FakeSpec("multikrum", FakeParams(selected=None))).rule

    assert isinstance(adam, ServerAdam)
    assert (adam.beta1, adam.beta2, adam.tau) == (0.8, 0.95, 1e-4)
    assert isinstance(trimmed, TrimmedMean) and trimmed.trim_fraction == 0.25
    assert not trimmed.mean_of_nearest
    assert isinstance(phocas, TrimmedMean) and phocas.mean_of_nearest
    assert phocas.trim_fraction == 0.25
    assert isinstance(meamed, CoordinateMedian) and meamed.mean_of_nearest
    assert isinstance(median, CoordinateMedian) and not median.mean_of_nearest
    assert isinstance(krum, Krum) and (krum.byzantine_clients, krum.selected) == (2, 1)
    assert isinstance(multi, Krum) and (multi.byzantine_clients, multi.selected) == (2, 3)
    assert isinstance(multi_default, Krum) and multi_default.selected is None


def test_build_strategy_refuses_unknown_names() -> None:
    assert set(STRATEGY_NAMES) == {
        "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad",
        "fedmedian", "trimmedmean", "krum", "multikrum",
    }  # fmt: skip
    with pytest.raises(ValueError, match="'scaffold'"):
        build_strategy(FakeSpec("scaffold"))
