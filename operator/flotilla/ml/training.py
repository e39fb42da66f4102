"""Local training and evaluation: what a client does with the global model each round.

Data is small per site and already in memory as tensors, so it moves to the device once
and batches are index slices: no DataLoader worker processes on an edge node. FedProx
adds (mu / 2) * ||w - w_global||^2 to the loss when the strategy asks for it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional

OPTIMIZERS = ("sgd", "adam", "adamw")
# From this many parameters up, each parameter is stepped as soon as its gradient is
# complete and the gradient is dropped, so training holds one tensor's gradient instead
# of the whole model's (a model's worth of memory). Below it the gradients are small and
# one optimiser call per parameter would cost more time than they cost memory.
STEP_IN_BACKWARD_PARAMETERS = 1_000_000


@dataclass(frozen=True)
class TrainingConfig:
    """One round's local training, as the job's spec and the strategy ask for it."""

    local_epochs: int
    batch_size: int
    optimizer: str  # one of OPTIMIZERS; momentum applies to sgd only
    learning_rate: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_seconds: float | None = None  # wall-clock budget, checked between batches
    proximal_mu: float = 0.0  # FedProx strength; 0 is plain local SGD

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        for field, value in (("local_epochs", self.local_epochs), ("batch_size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{field} must be at least 1, not {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, not {self.learning_rate}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, not {self.max_seconds}")
        if not self.proximal_mu >= 0:
            raise ValueError(f"proximal_mu must be at least 0, not {self.proximal_mu}")


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean loss over the last (possibly cut) epoch's samples
    accuracy: float  # over the same samples, measured on the fly while training
    examples: int  # training samples: the weight of this update in FedAvg
    seconds: float
    epochs: float  # completed epochs, fractional when the time budget cut training
    steps: int


@dataclass(frozen=True)
class EvalResult:
    loss: float  # NaN when there was nothing to evaluate
    accuracy: float  # NaN when there was nothing to evaluate
    examples: int


def select_device(prefer: str = "auto") -> torch.device:
    """'auto' is the GPU when torch sees one, else the CPU; 'cuda' without a GPU is an error."""
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA GPU here")
    if prefer not in ("cpu", "cuda"):
        raise ValueError(f"device {prefer!r} is not one of auto, cpu, cuda")
    return torch.device(prefer)


def configure_threads(threads: int | None) -> None:
    """Set torch's intra-op threads for this process; None keeps torch's default."""
    # Small models on a few shared cores train several times faster with one
    # thread per process than with torch's default of one per core.
    if threads is not None:
        torch.set_num_threads(max(1, threads))


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
    """Train `model` in place on images [N, C, H, W] float32 and labels [N] int64.

    `seed` decides the shuffling (pass seed + round: rounds differ, runs repeat).
    `global_weights` are the round's starting weights, needed when proximal_mu > 0.
    """
    started = time.monotonic()
    count = _check_data(images, labels)
    if count == 0:
        raise ValueError("no training examples")
    model.to(device)
    x, y = images.to(device), labels.to(device)
    anchors = _proximal_anchors(model, global_weights, device) if config.proximal_mu else None
    model.train()
    with local_optimizer(model, config) as optimizer:
        step = _Step(model, optimizer, anchors, config.proximal_mu, x, y)
        epochs = run_epochs(step, count=count, config=config, seed=seed, started=started)
    model.zero_grad(set_to_none=True)  # a model's worth of memory, idle until next round
    return step.result(count, started, epochs)


class Optimiser(Protocol):
    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...


@contextlib.contextmanager
def local_optimizer(
    model: nn.Module, config: TrainingConfig, *, in_backward: bool | None = None
) -> Iterator[Optimiser]:
    """The round's optimiser; `in_backward` (default: by model size) steps during backward."""
    if in_backward is None:
        in_backward = sum(p.numel() for p in model.parameters()) >= STEP_IN_BACKWARD_PARAMETERS
    if not in_backward:
        yield _optimizer(model.parameters(), config)
        return
    stepped = _SteppedInBackward(model, config)
    try:
        yield stepped
    finally:
        stepped.close()


class _SteppedInBackward:
    """One optimiser per parameter, stepped by a hook the moment that parameter's gradient
    is accumulated, which then drops the gradient (PyTorch's "optimizer step in backward"
    recipe). Same arithmetic as one optimiser over all parameters: SGD, Adam and AdamW
    update each parameter from its own gradient and state only."""

    def __init__(self, model: nn.Module, config: TrainingConfig) -> None:
        self._optimizers: dict[torch.Tensor, torch.optim.Optimizer] = {
            p: _optimizer([p], config) for p in model.parameters() if p.requires_grad
        }
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._step)  # type: ignore[no-untyped-call]
            for p in self._optimizers
        ]

    def _step(self, parameter: torch.Tensor) -> None:
        optimizer = self._optimizers[parameter]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass  # no gradient outlives its own step

    def step(self) -> None:
        pass  # every parameter was stepped during backward

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


class EpochStep(Protocol):
    """One optimiser step on a batch of sample indices; counts what the epoch has seen."""

    seen: int

    def new_epoch(self) -> None: ...

    def __call__(self, index: torch.Tensor) -> None: ...


def run_epochs(
    step: EpochStep, *, count: int, config: TrainingConfig, seed: int, started: float
) -> float:
    """Seeded shuffled batches, epoch after epoch, until done or past the time budget.

    Returns the epochs completed, fractional when the budget cut the last one.
    """
    deadline = None if config.max_seconds is None else started + config.max_seconds
    generator = torch.Generator().manual_seed(seed)
    epochs = 0.0
    for _epoch in range(config.local_epochs):
        order = torch.randperm(count, generator=generator)
        step.new_epoch()
        for start in range(0, count, config.batch_size):
            step(order[start : start + config.batch_size])
            if deadline is not None and time.monotonic() > deadline:
                return epochs + step.seen / count
        epochs += 1
    return epochs


class BaseStep:
    """Backward and step with FedProx's term; subclasses give the batch's task loss."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimiser,
        anchors: Mapping[str, torch.Tensor] | None,
        mu: float,
    ) -> None:
        self.model, self.optimizer, self.anchors, self.mu = model, optimizer, anchors, mu
        self.steps = 0
        self.new_epoch()

    def new_epoch(self) -> None:
        self.loss_sum, self.seen = 0.0, 0

    def optimise(self, loss: torch.Tensor, batch: int) -> None:
        # Report the task loss, not the proximal penalty: it is comparable across strategies.
        self.loss_sum += float(loss.detach()) * batch
        if self.anchors is not None:
            loss = loss + _proximal_term(self.model, self.anchors, self.mu)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.steps += 1
        self.seen += batch


class _Step(BaseStep):
    """Cross-entropy on a batch, keeping the epoch's running accuracy as well."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimiser,
        anchors: Mapping[str, torch.Tensor] | None,
        mu: float,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> None:
        self.x, self.y = x, y
        super().__init__(model, optimizer, anchors, mu)

    def new_epoch(self) -> None:
        super().new_epoch()
        self.correct = 0

    def __call__(self, index: torch.Tensor) -> None:
        index = index.to(self.x.device)
        logits = self.model(self.x[index])
        target = self.y[index]
        self.optimise(functional.cross_entropy(logits, target), len(index))
        self.correct += int((logits.argmax(1) == target).sum())

    def result(self, count: int, started: float, epochs: float) -> TrainResult:
        return TrainResult(
            loss=self.loss_sum / self.seen,
            accuracy=self.correct / self.seen,
            examples=count,
            seconds=time.monotonic() - started,
            epochs=epochs,
            steps=self.steps,
        )


def _check_data(images: torch.Tensor, labels: torch.Tensor) -> int:
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected images [N, C, H, W] and labels [N], got {list(images.shape)} "
            f"and {list(labels.shape)}"
        )
    return int(labels.shape[0])


def _optimizer(params: Iterable[torch.Tensor], config: TrainingConfig) -> torch.optim.Optimizer:
    lr, decay = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=decay)


def _proximal_anchors(
    model: nn.Module, global_weights: Mapping[str, torch.Tensor] | None, device: torch.device
) -> dict[str, torch.Tensor]:
    if global_weights is None:
        raise ValueError("FedProx (proximal_mu > 0) needs the round's global weights")
    missing = [name for name, _ in model.named_parameters() if name not in global_weights]
    if missing:
        raise ValueError(f"the global weights lack parameters {missing[:5]}")
    # A detached copy: the caller may reuse its tensors while the model trains.
    return {
        name: global_weights[name].detach().to(device, copy=True)
        for name, _ in model.named_parameters()
    }


def _proximal_term(
    model: nn.Module, anchors: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    squared = [((p - anchors[n]) ** 2).sum() for n, p in model.named_parameters()]
    return (mu / 2) * torch.stack(squared).sum()


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    """Mean cross-entropy and accuracy without gradients, in eval mode.

    Empty data is not an error (a site may hold no validation images):
    it gives EvalResult(nan, nan, 0), which weighs nothing in a weighted mean.
    """
    count = _check_data(images, labels)
    if count == 0:
        return EvalResult(loss=math.nan, accuracy=math.nan, examples=0)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    model.to(device)
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
