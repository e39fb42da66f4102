"""Classification samples from a site's export, and the train / hold-out split of any samples.

Tags make classification samples; the job's label list is the global index, so every site
maps names the same way (see ``flotilla.data.site``). The export itself is read by
``flotilla.data.exports`` through ``flotilla.data.export_files``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

import torch


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # float32 [N, C, H, W] in [0, 1]
    labels: torch.Tensor  # int64 [N]
    subsets: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: Sequence[int]) -> LabelledImages:
        rows = torch.as_tensor(list(index), dtype=torch.long)
        return LabelledImages(
            self.images[rows], self.labels[rows], tuple(self.subsets[i] for i in index)
        )


class Subsetted(Protocol):
    """Samples that know their CVAT subset and can be sliced: classification or detection."""

    @property
    def subsets(self) -> tuple[str | None, ...]: ...

    def __len__(self) -> int: ...

    def select(self, index: Sequence[int]) -> Self: ...


S = TypeVar("S", bound=Subsetted)


def split_train_holdout(data: S, *, validation_fraction: float, seed: int) -> tuple[S, S]:
    """CVAT's subsets when the export has a Validation subset; a seeded split otherwise."""
    marked = [(s or "").lower() == "validation" for s in data.subsets]
    if any(marked):
        holdout = [i for i, m in enumerate(marked) if m]
        train = [i for i, m in enumerate(marked) if not m]
    else:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
        cut = round(len(data) * validation_fraction)
        holdout, train = sorted(order[:cut]), sorted(order[cut:])
    return data.select(train), data.select(holdout)
