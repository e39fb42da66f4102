"""Local training and evaluation: what a client does with the global model each round.

Data is small per site and already in memory as tensors, so batches are index
slices on the device: no DataLoader worker processes on an edge node. FedProx
adds (mu / 2) * ||w - w_global||^2 to the loss when the strategy asks for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional


@dataclass(frozen=True)
class TrainingConfig:
    local_epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_seconds: float | None = None
    proximal_mu: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean loss over the last epoch's samples
    accuracy: float
    examples: int  # training samples: the weight of this update in FedAvg
    seconds: float
    epochs: float  # completed epochs, fractional when the time budget cut training
    steps: int


@dataclass(frozen=True)
class EvalResult:
    loss: float  # NaN when there was nothing to evaluate
    accuracy: float
    examples: int


def select_device(prefer: str = "auto") -> torch.device:
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA GPU here")
    if prefer not in ("cpu", "cuda"):
        raise ValueError(f"device {prefer!r} is not one of auto, cpu, cuda")
    return torch.device(prefer)


def configure_threads(threads: int | None) -> None:
    # Small models on a few shared cores train several times faster with one
    # thread per process than with torch's default of one per core.
    if threads is not None:
        torch.set_num_threads(max(1, threads))


def _optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer {config.optimizer!r} is not one of sgd, adam, adamw")


def train_local(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: TrainingConfig,
    seed: int,
    device: torch.device,
    global_weights: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    started = time.monotonic()
    count = len(labels)
    if count == 0:
        raise ValueError("no training examples")
    x, y = images.to(device), labels.to(device)
    anchors = _proximal_anchors(model, global_weights, device) if config.proximal_mu else {}
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    steps, seen, epochs = 0, 0, 0.0
    loss_sum, correct = 0.0, 0
    for _epoch in range(config.local_epochs):
        order = torch.randperm(count, generator=generator).to(device)
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, count, config.batch_size):
            index = order[start : start + config.batch_size]
            logits = model(x[index])
            loss = functional.cross_entropy(logits, y[index])
            batch_loss = float(loss.detach())
            if anchors:
                loss = loss + _proximal_term(model, anchors, config.proximal_mu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            steps += 1
            seen += len(index)
            loss_sum += batch_loss * len(index)
            correct += int((logits.argmax(1) == y[index]).sum())
            if config.max_seconds is not None and time.monotonic() - started > config.max_seconds:
                epochs += seen / count
                return _result(loss_sum, correct, seen, count, started, epochs, steps)
        epochs += 1
    return _result(loss_sum, correct, seen, count, started, epochs, steps)


def _result(
    loss_sum: float, correct: int, seen: int, count: int, started: float, epochs: float, steps: int
) -> TrainResult:
    return TrainResult(
        loss=loss_sum / max(seen, 1),
        accuracy=correct / max(seen, 1),
        examples=count,
        seconds=time.monotonic() - started,
        epochs=epochs,
        steps=steps,
    )


def _proximal_anchors(
    model: nn.Module, global_weights: Mapping[str, torch.Tensor] | None, device: torch.device
) -> dict[str, torch.Tensor]:
    if global_weights is None:
        raise ValueError("FedProx needs the round's global weights")
    return {
        name: global_weights[name].detach().to(device, copy=True)
        for name, _ in model.named_parameters()
    }


def _proximal_term(
    model: nn.Module, anchors: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    total = sum(((p - anchors[n]) ** 2).sum() for n, p in model.named_parameters())
    return (mu / 2) * total  # type: ignore[return-value]


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    count = len(labels)
    if count == 0:
        return EvalResult(loss=math.nan, accuracy=math.nan, examples=0)
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, count, batch_size):
            x = images[start : start + batch_size].to(device)
            y = labels[start : start + batch_size].to(device)
            logits = model(x)
            loss_sum += float(functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return EvalResult(loss=loss_sum / count, accuracy=correct / count, examples=count)
