"""What a job's task means for local work: how to train on a site's samples, how to score them.

The client and the aggregator's central evaluation speak of results in one shape, whatever
the task: a loss, a count of examples and named scores (`accuracy` for classification,
`map50` for detection: mAP at IoU 0.5). The round engine weighs and records those names
without knowing what a task is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

import torch
from torch import nn

from flotilla.data.cvat_images import LabelledImages
from flotilla.data.detection import DetectionImages
from flotilla.ml.detection_training import evaluate_detection, train_detection
from flotilla.ml.training import TrainingConfig, evaluate, train_local

Samples = LabelledImages | DetectionImages
_S = TypeVar("_S", LabelledImages, DetectionImages)
# Scores a client may report and the aggregator averages; every one is "higher is better".
SCORES = ("accuracy", "map50")
SCORE_OF_TASK = {"classification": "accuracy", "detection": "map50"}
SCORE_TITLES = {"accuracy": "accuracy", "map50": "mAP@0.5"}


@dataclass(frozen=True)
class LocalTraining:
    loss: float
    examples: int
    seconds: float
    epochs: float
    steps: int
    scores: Mapping[str, float] = field(default_factory=dict)  # measured while training


@dataclass(frozen=True)
class LocalEvaluation:
    loss: float  # NaN when there was nothing to evaluate
    examples: int
    scores: Mapping[str, float] = field(default_factory=dict)


class Learning(Protocol):
    score: str  # the task's headline score, one of SCORES

    def train(
        self,
        model: nn.Module,
        samples: Samples,
        *,
        config: TrainingConfig,
        seed: int,
        device: torch.device,
        global_weights: Mapping[str, torch.Tensor] | None,
    ) -> LocalTraining: ...

    def evaluate(
        self, model: nn.Module, samples: Samples, *, batch_size: int, device: torch.device
    ) -> LocalEvaluation: ...


def learning_for(task: Literal["classification", "detection"], *, num_classes: int) -> Learning:
    if task == "classification":
        return Classification()
    return Detection(num_classes=num_classes)


class Classification:
    score = "accuracy"

    def train(
        self,
        model: nn.Module,
        samples: Samples,
        *,
        config: TrainingConfig,
        seed: int,
        device: torch.device,
        global_weights: Mapping[str, torch.Tensor] | None,
    ) -> LocalTraining:
        data = _expect(samples, LabelledImages)
        result = train_local(
            model,
            data.images,
            data.labels,
            config=config,
            seed=seed,
            device=device,
            global_weights=global_weights,
        )
        return LocalTraining(
            loss=result.loss,
            examples=result.examples,
            seconds=result.seconds,
            epochs=result.epochs,
            steps=result.steps,
            scores={"accuracy": result.accuracy},
        )

    def evaluate(
        self, model: nn.Module, samples: Samples, *, batch_size: int, device: torch.device
    ) -> LocalEvaluation:
        data = _expect(samples, LabelledImages)
        result = evaluate(model, data.images, data.labels, batch_size=batch_size, device=device)
        return LocalEvaluation(result.loss, result.examples, {"accuracy": result.accuracy})


@dataclass
class Detection:
    num_classes: int
    score = "map50"

    def train(
        self,
        model: nn.Module,
        samples: Samples,
        *,
        config: TrainingConfig,
        seed: int,
        device: torch.device,
        global_weights: Mapping[str, torch.Tensor] | None,
    ) -> LocalTraining:
        data = _expect(samples, DetectionImages)
        result = train_detection(
            model,
            data.images,
            data.boxes,
            data.labels,
            num_classes=self.num_classes,
            config=config,
            seed=seed,
            device=device,
            global_weights=global_weights,
        )
        # No score while training: mAP needs a decode pass over every image, which would
        # cost more than the epoch. The hold-out evaluation gives it.
        return LocalTraining(
            loss=result.loss,
            examples=result.examples,
            seconds=result.seconds,
            epochs=result.epochs,
            steps=result.steps,
        )

    def evaluate(
        self, model: nn.Module, samples: Samples, *, batch_size: int, device: torch.device
    ) -> LocalEvaluation:
        data = _expect(samples, DetectionImages)
        if len(data) == 0:
            return LocalEvaluation(float("nan"), 0, {"map50": float("nan")})
        result = evaluate_detection(
            model,
            data.images,
            data.boxes,
            data.labels,
            num_classes=self.num_classes,
            batch_size=batch_size,
            device=device,
        )
        return LocalEvaluation(result.loss, result.examples, {"map50": result.map50})


def _expect(samples: Samples, kind: type[_S]) -> _S:
    if not isinstance(samples, kind):
        raise TypeError(f"expected {kind.__name__} for this task, got {type(samples).__name__}")
    return samples
