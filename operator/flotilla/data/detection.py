"""Detection samples: images, each with its own number of boxes and their labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DetectionImages:
    images: torch.Tensor  # float32 [N, C, H, W] in [0, 1]
    boxes: tuple[torch.Tensor, ...]  # per image float32 [K, 4]: x0, y0, x1, y1 in input pixels
    labels: tuple[torch.Tensor, ...]  # per image int64 [K]: indices into the job's labels
    subsets: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, index: Sequence[int]) -> DetectionImages:
        rows = torch.as_tensor(list(index), dtype=torch.long)
        return DetectionImages(
            images=self.images[rows],
            boxes=tuple(self.boxes[i] for i in index),
            labels=tuple(self.labels[i] for i in index),
            subsets=tuple(self.subsets[i] for i in index),
        )
