"""The final global model as MLflow serves it: images in, one probability per label out.

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

log = logging.getLogger(__name__)


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
    serialization_format: str = "pt2"

    def signature(self) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        # Unnamed: a named tensor makes the serving input a dict, which the torch flavor refuses.
        inputs = TensorSpec(np.dtype(np.float32), (-1, *self.input_shape))
        outputs = TensorSpec(np.dtype(np.float32), (-1, len(self.labels)))
        return ModelSignature(inputs=Schema([inputs]), outputs=Schema([outputs]))

    def input_example(self) -> np.ndarray:
        # Two images, not one: torch.export would otherwise fix the batch size to 1.
        return np.zeros((2, *self.input_shape), dtype=np.float32)

    def pip_requirements(self) -> list[str]:
        # Given, not inferred: inference imports the model in a subprocess for ~10 s.
        return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]

    def metadata(self) -> dict[str, Any]:
        return {"labels": list(self.labels), **self.info}


def served_model(
    classifier: nn.Module,
    *,
    input_shape: tuple[int, int, int],
    labels: list[str],
    info: Mapping[str, Any],
) -> ServedModel:
    module = Probabilities(classifier).eval()
    model = ServedModel(module=module, input_shape=input_shape, labels=labels, info=info)
    try:
        example = torch.zeros(2, *input_shape)
        batch = torch.export.Dim("batch", min=1)
        torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as error:  # torch.export refuses many dynamic models; pickle still works
        log.warning("the model does not torch.export (%s); logging it pickled", error)
        model.serialization_format = "pickle"
    return model
