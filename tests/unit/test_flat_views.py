"""One flat view over a model's tensors (wire.TensorViews): the norm check and the weighted
mean take a whole update in a few operations, and give what they gave tensor by tensor."""

from __future__ import annotations

import math

import pytest
import torch

from flotilla.fl.codec import decode_update
from flotilla.fl.strategies import rules
from flotilla.fl.strategies.rules import WeightedMean
from flotilla.fl.wire import Layout, flat_pair, model_layout, update_layout

LAYOUT = model_layout(
    {"conv.weight": torch.zeros(4, 1, 3, 3), "conv.bias": torch.zeros(4), "fc": torch.zeros(10, 7)}
)


def _filled(layout: Layout, seed: int, offsets: dict[str, tuple[int, int]] | None = None):
    generator = torch.Generator().manual_seed(seed)
    views = layout.views(bytearray(layout.total_size), offsets=offsets)
    for view in views.values():
        view.copy_(torch.randn(view.shape, generator=generator).to(view.dtype))
    return views


def _reversed_offsets(layout: Layout) -> dict[str, tuple[int, int]]:
    """The layout's tensors in the opposite order, as another sender may write its body."""
    offsets, position = {}, 0
    for spec in reversed(layout.tensors):
        offsets[spec.name] = (position, position + spec.nbytes)
        position += spec.nbytes
    return offsets


def _plain(views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors without the flat view: the tensor-by-tensor path."""
    return dict(views)


def test_views_carry_one_flat_view_when_back_to_back_in_one_dtype() -> None:
    views = LAYOUT.views(LAYOUT.allocate())
    assert views.flat is not None

    views.flat.copy_(torch.arange(views.flat.numel(), dtype=torch.float32))

    assert torch.equal(torch.cat([t.reshape(-1) for t in views.values()]), views.flat)
    assert update_layout(LAYOUT, "float16").views(bytearray(10**4)).flat is not None
    # int8 tensors and their float32 scales: two dtypes, no flat view.
    assert update_layout(LAYOUT, "int8").views(bytearray(10**4)).flat is None
    assert LAYOUT.views(bytearray(10**4), offsets=_reversed_offsets(LAYOUT)).flat is None


def test_flat_pair_needs_the_same_names_in_the_same_order_and_shapes() -> None:
    a, b = _filled(LAYOUT, 0), _filled(LAYOUT, 1)
    pair = flat_pair(a, b)
    assert pair is not None and pair[0] is a.flat and pair[1] is b.flat

    assert flat_pair(a, _plain(b)) is None
    other = model_layout({"fc": torch.zeros(10, 7), "conv.bias": torch.zeros(40)})
    assert flat_pair(a, other.views(other.allocate())) is None


@pytest.mark.parametrize("weights", [False, True], ids=["delta", "weights"])
def test_the_norm_is_the_tensor_by_tensor_norm(weights: bool) -> None:
    update, minus = _filled(LAYOUT, 2), (_filled(LAYOUT, 3) if weights else None)

    whole = decode_update(update, max_norm=None, minus=minus)
    by_tensor = decode_update(_plain(update), max_norm=None, minus=minus)
    reordered = _filled(LAYOUT, 2, offsets=_reversed_offsets(LAYOUT))

    assert whole.norm == pytest.approx(by_tensor.norm, rel=1e-6)
    assert decode_update(reordered, max_norm=None, minus=minus).norm == pytest.approx(
        whole.norm, rel=1e-6
    )
    assert whole.tensors is update  # its flat view goes on to the fold


def test_a_whole_beyond_float32_is_judged_tensor_by_tensor() -> None:
    # Each tensor's squared norm fits float32 (2.9e38); their sum does not: accepted
    # as it was tensor by tensor, where the sum is kept in float64.
    layout = model_layout({"a": torch.zeros(1), "b": torch.zeros(1)})
    views = layout.views(layout.allocate())
    views["a"].fill_(1.7e19)
    views["b"].fill_(1.7e19)

    decoded = decode_update(views, max_norm=None)

    assert decoded.norm == pytest.approx(math.sqrt(2) * 1.7e19, rel=1e-6)
    views["b"].fill_(float("inf"))
    with pytest.raises(ValueError, match="'b' holds NaN or infinite"):
        decode_update(views, max_norm=None)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("weights", [False, True], ids=["delta", "weights"])
def test_the_weighted_mean_folds_the_flat_view_as_it_folds_tensors(
    dtype: str, weights: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules, "FOLD_PIECE", 50)  # several pieces, ends inside tensors
    layout = update_layout(LAYOUT, "float32" if weights else dtype)  # type: ignore[arg-type]
    updates = [_filled(layout, seed) for seed in range(3)]
    minus = _filled(LAYOUT, 9) if weights else None
    results = []
    for flat in (True, False):
        out = LAYOUT.views(LAYOUT.allocate())
        aggregate = WeightedMean().begin(out if flat else _plain(out))
        for count, update in enumerate(updates, start=1):
            aggregate.add(update if flat else _plain(update), weight=count, scales={}, minus=minus)
        aggregate.finish()
        results.append(out)

    for name in LAYOUT.offsets:
        assert torch.equal(results[0][name], results[1][name]), name


def test_a_flat_fold_releases_each_tensor_once_its_values_are_folded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rules, "FOLD_PIECE", 50)
    out = LAYOUT.views(LAYOUT.allocate())
    update = LAYOUT.views(LAYOUT.allocate())
    update.flat.fill_(1.0)  # type: ignore[union-attr]
    released: list[str] = []

    def release(name: str) -> None:
        assert out[name].eq(2.0).all(), f"{name} released before it was folded"
        released.append(name)

    WeightedMean().begin(out).add(update, weight=2.0, scales={}, release=release)

    assert released == [spec.name for spec in LAYOUT.tensors]


def test_per_tensor_scales_fold_tensor_by_tensor() -> None:
    layout = update_layout(LAYOUT, "int8")
    update = layout.views(bytearray(layout.total_size))
    out = LAYOUT.views(LAYOUT.allocate())
    for name in LAYOUT.offsets:
        update[name].fill_(2)
    scales = {name: float(i + 1) for i, name in enumerate(LAYOUT.offsets)}
    tensors = {name: update[name] for name in LAYOUT.offsets}

    aggregate = WeightedMean().begin(out)
    aggregate.add(tensors, weight=1.0, scales=scales)
    aggregate.finish()

    for name, scale in scales.items():
        assert out[name].eq(2 * scale).all()
