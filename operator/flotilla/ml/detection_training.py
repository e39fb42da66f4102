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
    TrainingConfig,
    _optimizer,
    _proximal_anchors,
    _proximal_term,
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
    step = _Step(model, _optimizer(model, config), anchors, config.proximal_mu, num_classes, device)
    deadline = None if config.max_seconds is None else started + config.max_seconds
    generator = torch.Generator().manual_seed(seed)
    epochs = 0.0
    for _epoch in range(config.local_epochs):
        order = torch.randperm(count, generator=generator).tolist()
        step.new_epoch()
        for start in range(0, count, config.batch_size):
            rows = order[start : start + config.batch_size]
            step(images[rows], [boxes[i] for i in rows], [labels[i] for i in rows])
            if deadline is not None and time.monotonic() > deadline:
                return step.result(count, started, epochs + step.seen / count)
        epochs += 1
    return step.result(count, started, epochs)


class _Step:
    """One optimiser step on one batch, keeping the running loss of the current epoch."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        anchors: Mapping[str, torch.Tensor] | None,
        mu: float,
        num_classes: int,
        device: torch.device,
    ) -> None:
        self.model, self.optimizer, self.anchors, self.mu = model, optimizer, anchors, mu
        self.num_classes, self.device = num_classes, device
        self.steps = 0
        self.new_epoch()

    def new_epoch(self) -> None:
        self.loss_sum, self.seen = 0.0, 0

    def __call__(
        self, images: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> None:
        size = (int(images.shape[2]), int(images.shape[3]))
        targets = make_targets(boxes, labels, num_classes=self.num_classes, size=size)
        loss = centernet_loss(self.model(images.to(self.device)), targets.to(self.device))
        # Report the task loss, not the proximal penalty: it is comparable across strategies.
        self.loss_sum += float(loss.detach()) * len(boxes)
        if self.anchors is not None:
            loss = loss + _proximal_term(self.model, self.anchors, self.mu)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.steps += 1
        self.seen += len(boxes)

    def result(self, count: int, started: float, epochs: float) -> DetectionTrainResult:
        seconds = time.monotonic() - started
        return DetectionTrainResult(self.loss_sum / self.seen, count, seconds, epochs, self.steps)


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
