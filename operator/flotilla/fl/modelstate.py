"""The job's model as the runtime sees it: built from the spec, moved in and out of wire buffers."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from flotilla.api import FederatedJob
from flotilla.fl.wire import Layout, model_layout
from flotilla.ml.models import build_model


def build_job_model(job: FederatedJob) -> torch.nn.Module:
    """The same initial weights in every process: the spec's seed decides them."""
    spec = job.spec
    return build_model(
        name=spec.model.name,
        entrypoint=spec.model.entrypoint,
        num_classes=len(spec.labels),
        input_shape=(spec.model.input.channels, spec.model.input.height, spec.model.input.width),
        seed=spec.seed,
        task=spec.task,
    )


def initial_global_model(job: FederatedJob) -> tuple[Layout, bytearray]:
    """The layout of the job's model and a buffer holding its initial weights."""
    model = build_job_model(job)
    layout = model_layout(model.state_dict())
    buffer = layout.allocate()
    state = model.state_dict()
    with torch.no_grad():
        for name, view in layout.views(buffer).items():
            view.copy_(state[name])
    return layout, buffer


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in weights.items():
            state[name].copy_(tensor)


def store_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """The reverse of `load_weights`: the model's floating-point state into `weights`."""
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in weights.items():
            tensor.copy_(state[name].detach())


def bind_weights(model: torch.nn.Module, views: Mapping[str, torch.Tensor]) -> bool:
    """Make the model's floating-point parameters and buffers *be* `views` (zero-copy).

    The model then trains inside the wire buffer: a download lands in its weights, and
    its trained weights are an upload as they are, with no copy in either direction and
    no second model in memory. The views' values replace the model's (a client fetches
    the global model before any use anyway), and the model's own tensors are freed.
    Returns False, changing nothing, where that cannot be done: a model on a GPU, state
    that is not float32, or tensors shared between two names (tied weights), which
    separate views would untie. Callers then copy with `load_weights`/`store_weights`.
    """
    state = model.state_dict()
    floats = {name: t for name, t in state.items() if t.is_floating_point()}
    if floats.keys() != views.keys():
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in floats.values()):
        return False
    nonempty = [t for t in floats.values() if t.numel()]
    if len({t.data_ptr() for t in nonempty}) != len(nonempty):
        return False
    # assign=True swaps the tensors themselves (keeping each parameter's requires_grad);
    # strict=False because integer buffers (batch-norm counters) stay the model's own.
    model.load_state_dict(dict(views), strict=False, assign=True)
    return True
