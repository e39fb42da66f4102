"""The final global model as MLflow serves it: images in, one probability per label out
(classification) or [top_k, 6] detection rows per image (x0, y0, x1, y1, score, label).

Saved in MLflow's pt2 (torch.export) format when the model exports, so serving needs only
torch, not Flotilla or the user's model code; a model torch.export cannot trace falls back
to pickle, which then needs its code importable where it is served.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from flotilla.ml.centernet import STRIDE, ServedDetections
from flotilla.tracking.weights import encode_weights

log = logging.getLogger(__name__)

SERVED_DETECTIONS = 20  # detection rows per image in a served detector's answer


class Probabilities(nn.Module):
    """Softmax over the classifier's logits: what a caller of /invocations wants to read."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return functional.softmax(self.classifier(images), dim=1)


@dataclass
class ServedModel:
    module: nn.Module
    input_shape: tuple[int, int, int]
    labels: list[str]
    info: Mapping[str, Any] = field(default_factory=dict)
    output_shape: tuple[int, ...] | None = None  # per image; default: one value per label
    serialization_format: str = "pt2"
    # The network's own state (no serving wrapper), logged as safetensors beside the model:
    # what a warm start reads (tracking/weights.py). Empty: nothing logged.
    weights: Mapping[str, torch.Tensor] = field(default_factory=dict)
    task: str = "classification"

    def signature(self) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        # Unnamed: a named tensor makes the serving input a dict, which the torch flavor refuses.
        inputs = TensorSpec(np.dtype(np.float32), (-1, *self.input_shape))
        per_image = self.output_shape or (len(self.labels),)
        outputs = TensorSpec(np.dtype(np.float32), (-1, *per_image))
        return ModelSignature(inputs=Schema([inputs]), outputs=Schema([outputs]))

    def input_example(self) -> np.ndarray:
        # Two images, not one: torch.export would otherwise fix the batch size to 1.
        return np.zeros((2, *self.input_shape), dtype=np.float32)

    def pip_requirements(self) -> list[str]:
        # Given, not inferred: inference imports the model in a subprocess for ~10 s.
        return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]

    def metadata(self) -> dict[str, Any]:
        return {"labels": list(self.labels), **self.info}

    def weights_bytes(self) -> bytes:
        return encode_weights(self.weights, labels=self.labels, task=self.task, info=self.info)


def served_model(
    network: nn.Module,
    *,
    task: str = "classification",
    input_shape: tuple[int, int, int],
    labels: list[str],
    info: Mapping[str, Any],
) -> ServedModel:
    output_shape: tuple[int, ...] | None = None
    if task == "detection":
        cells = (input_shape[1] // STRIDE) * (input_shape[2] // STRIDE)
        top_k = min(SERVED_DETECTIONS, len(labels) * cells)
        detections = ServedDetections(network, num_classes=len(labels), top_k=top_k).eval()
        output_shape = (detections.top_k, 6)
        module: nn.Module = detections
        info = {**info, "flotilla.output": "x0, y0, x1, y1, score, label per detection"}
    else:
        module = Probabilities(network).eval()
    model = ServedModel(
        module=module,
        input_shape=input_shape,
        labels=labels,
        info=info,
        output_shape=output_shape,
        weights=network.state_dict(),
        task=task,
    )
    try:
        example = torch.zeros(2, *input_shape)
        batch = torch.export.Dim("batch", min=1)
        torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as error:  # torch.export refuses many dynamic models; pickle still works
        log.warning("the model does not torch.export (%s); logging it pickled", error)
        model.serialization_format = "pickle"
    return model
