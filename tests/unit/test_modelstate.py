"""A client's model bound to its wire buffer: one copy of the weights, trained in place."""

from __future__ import annotations

import torch
from torch import nn

from flotilla.fl.modelstate import bind_weights, load_weights, store_weights
from flotilla.fl.wire import model_layout


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_a_bound_model_trains_inside_the_buffer() -> None:
    model = _net()
    layout = model_layout(model.state_dict())
    buffer = layout.allocate_mapped()
    views = layout.views(buffer)

    assert bind_weights(model, views)
    views["0.weight"].fill_(0.5)  # a download lands in the model's weights
    assert model[0].weight.eq(0.5).all()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(16, 4)).sum().backward()
    optimizer.step()
    # ...and its trained weights and batch-norm statistics are the upload, as they are.
    assert torch.equal(views["3.bias"], model[3].bias.detach())
    assert torch.equal(views["1.running_mean"], model[1].running_mean)
    assert model[1].num_batches_tracked.item() == 1  # integer state stays the model's own
    assert all(p.requires_grad and isinstance(p, nn.Parameter) for p in model.parameters())


def test_binding_is_refused_where_views_would_change_the_model() -> None:
    tied = nn.Linear(3, 3)
    shared = nn.Sequential(tied, nn.ReLU(), tied)
    half = nn.Linear(3, 3).half()

    for model in (shared, half):
        layout = model_layout(model.state_dict())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        assert not bind_weights(model, layout.views(layout.allocate()))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert shared[0] is shared[2]


def test_store_weights_is_load_weights_reversed() -> None:
    model, other = (
        _net(),
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)),
    )
    layout = model_layout(model.state_dict())
    views = layout.views(layout.allocate())

    store_weights(model, views)
    load_weights(other, views)

    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True)
    )
