"""Local training and evaluation of the detector on a site's boxes; mAP@0.5 as the metric.

Mirrors ``train_local`` / ``evaluate`` for classification: same config, seeded shuffling,
time budget, FedProx term. Targets are built per batch from the boxes, so memory stays
at one batch of heatmaps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flotilla.ml.average_precision import mean_average_precision
from flotilla.ml.centernet import centernet_loss, decode, make_targets
from flotilla.ml.training import (
    BaseStep,
    TrainingConfig,
    _proximal_anchors,
    local_optimizer,
    run_epochs,
)


@dataclass(frozen=True)
class DetectionTrainResult:
    loss: float  # mean loss over the last (possibly cut) epoch's samples
    examples: int  # training images: the weight of this update in FedAvg
    seconds: float
    epochs: float
    steps: int


@dataclass(frozen=True)
class DetectionEvalResult:
    loss: float
    map50: float  # mAP at IoU 0.5 over the classes present here
    per_class: dict[int, float]
    examples: int


def _check(
    images: torch.Tensor, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
) -> int:
    if images.dim() != 4 or len(boxes) != images.shape[0] or len(labels) != images.shape[0]:
        raise ValueError(
            f"need images [N, C, H, W] with N boxes and N label tensors, got "
            f"{list(images.shape)}, {len(boxes)} and {len(labels)}"
        )
    return int(images.shape[0])


def train_detection(
    model: nn.Module,
    images: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    *,
    num_classes: int,
    config: TrainingConfig,
    seed: int,
    device: torch.device,
    global_weights: Mapping[str, torch.Tensor] | None = None,
) -> DetectionTrainResult:
    """Train the detector in place; boxes per image [K, 4] in input pixels, labels [K]."""
    started = time.monotonic()
    count = _check(images, boxes, labels)
    if count == 0:
        raise ValueError("no training examples")
    model.to(device).train()
    anchors = _proximal_anchors(model, global_weights, device) if config.proximal_mu else None
    with local_optimizer(model, config) as optimizer:
        step = _Step(model, optimizer, anchors, config.proximal_mu)
        step.data(images, boxes, labels, num_classes=num_classes, device=device)
        epochs = run_epochs(step, count=count, config=config, seed=seed, started=started)
    model.zero_grad(set_to_none=True)  # a model's worth of memory, idle until next round
    seconds = time.monotonic() - started
    return DetectionTrainResult(step.loss_sum / step.seen, count, seconds, epochs, step.steps)


class _Step(BaseStep):
    """CenterNet's loss on a batch; targets are built per batch from its boxes."""

    def data(
        self,
        images: torch.Tensor,
        boxes: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        *,
        num_classes: int,
        device: torch.device,
    ) -> None:
        self.images, self.boxes, self.labels = images, boxes, labels
        self.num_classes, self.device = num_classes, device

    def __call__(self, index: torch.Tensor) -> None:
        rows = index.tolist()
        size = (int(self.images.shape[2]), int(self.images.shape[3]))
        targets = make_targets(
            [self.boxes[i] for i in rows],
            [self.labels[i] for i in rows],
            num_classes=self.num_classes,
            size=size,
        )
        output = self.model(self.images[rows].to(self.device))
        self.optimise(centernet_loss(output, targets.to(self.device)), len(rows))


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    images: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    *,
    num_classes: int,
    batch_size: int,
    device: torch.device,
) -> DetectionEvalResult:
    count = _check(images, boxes, labels)
    model.to(device).eval()
    size = (int(images.shape[2]), int(images.shape[3]))
    loss_sum = 0.0
    predictions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for start in range(0, count, batch_size):
        rows = list(range(start, min(start + batch_size, count)))
        output = model(images[rows].to(device))
        targets = make_targets(
            [boxes[i] for i in rows], [labels[i] for i in rows], num_classes=num_classes, size=size
        )
        loss_sum += float(centernet_loss(output, targets.to(device))) * len(rows)
        predictions += [
            (d.boxes.cpu(), d.scores.cpu(), d.labels.cpu())
            for d in decode(output, num_classes=num_classes)
        ]
    map50, per_class = mean_average_precision(
        predictions=predictions,
        truths=list(zip(boxes, labels, strict=True)),
        num_classes=num_classes,
    )
    return DetectionEvalResult(loss_sum / max(count, 1), map50, per_class, count)
