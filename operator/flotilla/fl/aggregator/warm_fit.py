"""Whether a parent job's weights fit this job's model, and the model's round 0 made of them.

Pure: tensors in, tensors out. The rule for labels: the parent's labels must be the first
labels of this job's list, in the same order. Labels added at the end grow every output
tensor (a tensor whose first dimension is the number of labels) by the new labels' rows,
which keep this job's seeded initial values; every other row and tensor is the parent's.
Anything else (a label removed, renamed or moved, a tensor of another shape or name) is
refused, naming the labels or the tensor and both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

_LISTED = 5  # names listed in a message before "and N more"


class WeightsMismatch(Exception):
    """The parent's weights do not fit the job's model; the message says where."""


@dataclass(frozen=True)
class Fitted:
    tensors: dict[str, torch.Tensor]  # every tensor of the model, in the model's dtype
    added_labels: tuple[str, ...]  # labels the parent was not trained on
    grown: tuple[str, ...]  # tensors that got new rows for them


def added_labels(parent: Sequence[str], labels: Sequence[str]) -> tuple[str, ...]:
    """The labels appended after the parent's; WeightsMismatch unless the parent's are the
    first ones, in order."""
    if list(labels[: len(parent)]) == list(parent):
        return tuple(labels[len(parent) :])
    first = next(
        (i for i, (old, new) in enumerate(zip(parent, labels, strict=False)) if old != new),
        min(len(parent), len(labels)),
    )
    where = (
        f"label {first} is {labels[first]!r} here and {parent[first]!r} in the parent"
        if first < len(labels)
        else f"the parent has {len(parent)} labels and the job {len(labels)}"
    )
    raise WeightsMismatch(
        f"spec.labels must start with the parent's {len(parent)} labels in their order "
        f"(new labels go at the end): {where}; parent labels {_short(parent)}, "
        f"spec.labels {_short(labels)}"
    )


def fit_weights(
    parent: Mapping[str, torch.Tensor],
    *,
    parent_labels: Sequence[str],
    initial: Mapping[str, torch.Tensor],
    labels: Sequence[str],
) -> Fitted:
    """This job's round-0 tensors from the parent's; `initial` holds the model's own seeded
    tensors (the values of new rows) and is not changed."""
    added = added_labels(parent_labels, labels)
    _same_names(parent, initial)
    tensors: dict[str, torch.Tensor] = {}
    grown: list[str] = []
    old, new = len(parent_labels), len(labels)
    for name, target in initial.items():
        source = parent[name]
        if source.shape == target.shape:
            tensors[name] = source.to(target.dtype).clone()
        elif added and _rows_grown(source.shape, target.shape, old=old, new=new):
            fitted = target.clone()
            fitted[:old] = source.to(target.dtype)
            tensors[name] = fitted
            grown.append(name)
        else:
            raise WeightsMismatch(_shape_message(name, source.shape, target.shape, added=added))
    if added and not grown:
        raise WeightsMismatch(
            f"spec.labels adds {_short(added)} but no tensor of the model has one row per "
            f"label ({old} in the parent): the model's output does not follow the labels"
        )
    return Fitted(tensors=tensors, added_labels=added, grown=tuple(grown))


def _rows_grown(source: torch.Size, target: torch.Size, *, old: int, new: int) -> bool:
    return (
        len(source) == len(target) >= 1
        and source[0] == old
        and target[0] == new
        and source[1:] == target[1:]
    )


def _same_names(parent: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor]) -> None:
    missing = [name for name in initial if name not in parent]
    extra = [name for name in parent if name not in initial]
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"the parent has no tensor {_short(missing)}")
    if extra:
        parts.append(f"the model has no tensor {_short(extra)}")
    raise WeightsMismatch(
        f"the parent's weights are of another architecture: {'; '.join(parts)} "
        f"(model tensors {_short(list(initial))}, parent tensors {_short(list(parent))})"
    )


def _shape_message(
    name: str, source: torch.Size, target: torch.Size, *, added: tuple[str, ...]
) -> str:
    text = (
        f"tensor {name!r} is {list(source)} in the parent and {list(target)} in this job's "
        "model: the parent's weights are of another architecture or input"
    )
    if added:
        text += " (new labels only add rows to the output tensors, the first dimension)"
    return text


def _short(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"[{shown}{more}]"
