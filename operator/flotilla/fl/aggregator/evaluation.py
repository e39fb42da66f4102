"""Central evaluation: the global model on a test split that only the aggregator holds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from flotilla.api import FederatedJob
from flotilla.api.data import DataSource
from flotilla.data import ImageShape, load_site_data
from flotilla.fl.learning import learning_for
from flotilla.fl.modelstate import build_job_model, load_weights
from flotilla.ml.training import select_device


class Evaluator(Protocol):
    """Scores weights on a test split; the engine and the promotion gate call it."""

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]: ...


class CentralEvaluator:
    def __init__(self, job: FederatedJob, test_data: DataSource, *, device: str = "cpu") -> None:
        spec = job.spec
        self._device = select_device(device)
        self._model = build_job_model(job).to(self._device)
        shape = spec.model.input
        self._samples = load_site_data(
            site="the aggregator's test data",
            source=test_data,
            task=spec.task,
            labels=spec.labels,
            shape=ImageShape(channels=shape.channels, height=shape.height, width=shape.width),
        ).samples
        self._learning = learning_for(spec.task, num_classes=len(spec.labels))
        self._batch_size = max(spec.training.batch_size, 256)

    @property
    def examples(self) -> int:
        return len(self._samples)

    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        load_weights(self._model, weights)
        result = self._learning.evaluate(
            self._model, self._samples, batch_size=self._batch_size, device=self._device
        )
        return {"loss": result.loss, **result.scores, "examples": result.examples}
