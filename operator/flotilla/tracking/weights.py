"""The final weights as a job logs them beside its registered model: one safetensors file.

A warm start (``spec.model.init``) reads these and never the registered model itself,
whose pt2 archive or pickle can run code when loaded: safetensors holds tensors and a
JSON header, nothing else. The header's metadata says what the weights were trained for
(labels, task, model), so a job started from them can check that they fit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

WEIGHTS_ARTIFACT = "weights"  # the run's folder: weights/round-NNNNNN.safetensors
LABELS_KEY = "flotilla.labels"  # a JSON list, in the order of the output rows
TASK_KEY = "flotilla.task"
_FILE = re.compile(r"round-(\d{6,})\.safetensors")


def weights_file(round_number: int) -> str:
    """The file name of the weights registered at the end of `round_number`."""
    return f"round-{round_number:06d}.safetensors"


def weights_round(name: str) -> int | None:
    """The round of a weights file name (a path's last part), None if it is not one."""
    match = _FILE.fullmatch(name.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def encode_weights(
    tensors: Mapping[str, torch.Tensor],
    *,
    labels: Sequence[str],
    task: str,
    info: Mapping[str, Any],
) -> bytes:
    """The floating-point tensors as a safetensors file, with what they were trained for."""
    metadata = {str(k): str(v) for k, v in info.items()}
    metadata |= {LABELS_KEY: json.dumps(list(labels)), TASK_KEY: task}
    # Copies: safetensors refuses tensors that share memory (tied weights, views).
    floats = {
        name: tensor.detach().to("cpu", torch.float32).clone().contiguous()
        for name, tensor in tensors.items()
        if tensor.is_floating_point()
    }
    return save(floats, metadata=metadata)


@dataclass(frozen=True)
class LoggedWeights:
    tensors: dict[str, torch.Tensor]
    labels: list[str]
    task: str | None
    metadata: dict[str, str]


def read_weights(path: Path) -> LoggedWeights:
    """A weights file as `encode_weights` wrote it; ValueError saying what is wrong."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path.name} is not a readable safetensors file: {error}") from None
    try:
        labels = json.loads(metadata[LABELS_KEY])
    except (KeyError, json.JSONDecodeError):
        labels = None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError(
            f"{path.name} does not record the labels its weights were trained on "
            f"(metadata {LABELS_KEY!r})"
        )
    return LoggedWeights(
        tensors=tensors, labels=labels, task=metadata.get(TASK_KEY), metadata=metadata
    )
