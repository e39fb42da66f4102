"""Central evaluation: the global model on a test split that only the aggregator holds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from flotilla.api import FederatedJob
from flotilla.data import load_classification
from flotilla.fl.modelstate import build_job_model, load_weights
from flotilla.ml.training import evaluate, select_device


class CentralEvaluator:
    def __init__(self, job: FederatedJob, test_path: Path, *, device: str = "cpu") -> None:
        spec = job.spec
        self._device = select_device(device)
        self._model = build_job_model(job).to(self._device)
        self._data = load_classification(
            test_path,
            labels=spec.labels,
            channels=spec.model.input.channels,
            height=spec.model.input.height,
            width=spec.model.input.width,
        )
        self._batch_size = max(spec.training.batch_size, 256)

    @property
    def examples(self) -> int:
        return len(self._data)

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        load_weights(self._model, weights)
        result = evaluate(
            self._model,
            self._data.images,
            self._data.labels,
            batch_size=self._batch_size,
            device=self._device,
        )
        return {"loss": result.loss, "accuracy": result.accuracy, "examples": result.examples}
