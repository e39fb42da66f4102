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
