"""The job's model: a built-in architecture by name, or the user's `module:function`.

Built-ins train from scratch (nothing is downloaded) and carry no BatchNorm:
averaging batch statistics across non-IID sites is a known federated trap.
Every process builds the same initial weights for the same seed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

InputShape = tuple[int, int, int]


class ModelError(Exception):
    """The job's model cannot be built; the message names the model and the reason."""


def cnn_small(*, num_classes: int, input_shape: InputShape) -> nn.Module:
    """Two 3x3 convolutions, a 4x4 max-pool grid and a small head: ~38k parameters for
    8x8 grayscale input, trains in well under a second per epoch on one CPU core.
    The adaptive pool makes any input size work (larger images, more pooling)."""
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 16, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


def mlp(*, num_classes: int, input_shape: InputShape) -> nn.Module:
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * height * width, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    )


BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {"cnn-small": cnn_small, "mlp": mlp}


def build_model(
    *,
    name: str | None,
    entrypoint: str | None,
    num_classes: int,
    input_shape: InputShape,
    seed: int,
) -> nn.Module:
    if (name is None) == (entrypoint is None):
        raise ModelError("give exactly one of a built-in model name or an entrypoint")
    label = f"model {name!r}" if name is not None else f"model entrypoint {entrypoint!r}"
    factory = _builtin(name) if name is not None else _entrypoint(str(entrypoint))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(num_classes=num_classes, input_shape=input_shape)
        except Exception as error:
            raise ModelError(f"{label} failed to build: {error}") from error
    if not isinstance(model, nn.Module):
        raise ModelError(f"{label} returned {type(model).__name__}, not a torch.nn.Module")
    _check_forward(model, label, num_classes=num_classes, input_shape=input_shape)
    return model


def _builtin(name: str) -> Callable[..., nn.Module]:
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown model {name!r}; built-ins are {sorted(BUILTIN_MODELS)}")
    return BUILTIN_MODELS[name]


def _entrypoint(entrypoint: str) -> Callable[..., nn.Module]:
    module_name, _, attribute = entrypoint.partition(":")
    if not module_name or not attribute:
        raise ModelError(
            f"model entrypoint {entrypoint!r} must look like 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(
            f"model entrypoint {entrypoint!r}: cannot import {module_name!r}: {error}"
        ) from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ModelError(f"model entrypoint {entrypoint!r}: {module_name!r} has no {attribute!r}")
    if not callable(factory):
        raise ModelError(f"model entrypoint {entrypoint!r} is not callable")
    return factory  # type: ignore[no-any-return]


def _check_forward(
    model: nn.Module, label: str, *, num_classes: int, input_shape: InputShape
) -> None:
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *input_shape))
    except Exception as error:
        raise ModelError(
            f"{label} does not accept inputs of shape {list(input_shape)}: {error}"
        ) from None
    if tuple(output.shape) != (2, num_classes):
        raise ModelError(
            f"{label} outputs shape {list(output.shape)} for a batch of 2; "
            f"expected [2, {num_classes}]"
        )
