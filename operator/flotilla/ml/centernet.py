"""A tiny CenterNet-style detector in plain torch: trains from scratch on CPU, nothing downloaded.

Objects as points (Zhou et al. 2019): one heatmap per class at stride 4, where each
object's box centre is a peak, plus per-cell box size and sub-cell offset. Single scale,
no anchors, no NMS (a 3x3 max-pool keeps local peaks), no BatchNorm (batch statistics do
not average well across non-IID sites). Sized for small images (64x64: ~0.1 M parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

STRIDE = 4
SIZE_WEIGHT = 0.1  # CenterNet's weight of the size term against the heatmap's focal loss
_PRIOR = 0.1  # initial heatmap probability: keeps the focal loss sane at step 0


class TinyCenterNet(nn.Module):
    def __init__(self, *, num_classes: int, channels: int, width: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=1), nn.ReLU())

        self.backbone = nn.Sequential(
            conv(channels, width // 2),
            conv(width // 2, width, 2),
            conv(width, width),
            conv(width, 2 * width, 2),
            conv(2 * width, 2 * width),
            conv(2 * width, 2 * width),
        )
        self.heatmap = nn.Sequential(conv(2 * width, width), nn.Conv2d(width, num_classes, 1))
        self.box = nn.Sequential(conv(2 * width, width), nn.Conv2d(width, 4, 1))
        last = self.heatmap[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, float(torch.logit(torch.tensor(_PRIOR))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, classes + 4, H/4, W/4]: heatmap logits, then w, h, dx, dy."""
        features = self.backbone(images)
        return torch.cat([self.heatmap(features), self.box(features)], dim=1)


def tiny_centernet(*, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    channels, height, width = input_shape
    if height % STRIDE or width % STRIDE:
        raise ValueError(f"detection input must be a multiple of {STRIDE}, got {height}x{width}")
    return TinyCenterNet(num_classes=num_classes, channels=channels)


@dataclass(frozen=True)
class Targets:
    heatmap: torch.Tensor  # [N, K, h, w] Gaussian peaks, exactly 1 at each centre
    box: torch.Tensor  # [N, 4, h, w]: size (w, h) in cells and centre offset in the cell
    mask: torch.Tensor  # [N, h, w] 1 where a centre falls

    def to(self, device: torch.device) -> Targets:
        return Targets(self.heatmap.to(device), self.box.to(device), self.mask.to(device))


def make_targets(
    boxes: list[torch.Tensor],
    labels: list[torch.Tensor],
    *,
    num_classes: int,
    size: tuple[int, int],
) -> Targets:
    """Targets on the stride-4 grid of an input of ``size`` (height, width)."""
    rows, cols = size[0] // STRIDE, size[1] // STRIDE
    n = len(boxes)
    heatmap = torch.zeros(n, num_classes, rows, cols)
    box = torch.zeros(n, 4, rows, cols)
    mask = torch.zeros(n, rows, cols)
    ys = torch.arange(rows, dtype=torch.float32)[:, None]
    xs = torch.arange(cols, dtype=torch.float32)[None, :]
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        for (x0, y0, x1, y1), label in zip(
            image_boxes.tolist(), image_labels.tolist(), strict=True
        ):
            w, h = (x1 - x0) / STRIDE, (y1 - y0) / STRIDE
            if w <= 0 or h <= 0:
                continue
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            col, row = min(int(cx), cols - 1), min(int(cy), rows - 1)
            # TTFNet's elliptical Gaussian: sigma = 0.54 * side / 6, at least a third of a cell.
            sx, sy = max(0.09 * w, 0.34), max(0.09 * h, 0.34)
            peak = torch.exp(-((xs - col) ** 2) / (2 * sx**2) - ((ys - row) ** 2) / (2 * sy**2))
            heatmap[i, label] = torch.maximum(heatmap[i, label], peak)
            box[i, :, row, col] = torch.tensor([w, h, cx - col, cy - row])
            mask[i, row, col] = 1.0
    return Targets(heatmap, box, mask)


def centernet_loss(output: torch.Tensor, targets: Targets) -> torch.Tensor:
    """Penalty-reduced focal loss on the heatmap plus L1 on size and offset at centres."""
    classes = targets.heatmap.shape[1]
    logits, box = output[:, :classes], output[:, classes:]
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = targets.heatmap.eq(1).float()
    pos_loss = -(torch.log(p) * (1 - p) ** 2 * positive).sum()
    neg_weight = (1 - targets.heatmap) ** 4 * (1 - positive)
    neg_loss = -(torch.log(1 - p) * p**2 * neg_weight).sum()
    count = positive.sum().clamp(min=1.0)
    mask = targets.mask[:, None]
    size_loss = functional.l1_loss(box[:, :2] * mask, targets.box[:, :2] * mask, reduction="sum")
    offset_loss = functional.l1_loss(box[:, 2:] * mask, targets.box[:, 2:] * mask, reduction="sum")
    return (pos_loss + neg_loss + SIZE_WEIGHT * size_loss + offset_loss) / count


@dataclass(frozen=True)
class Detections:
    boxes: torch.Tensor  # [D, 4] x0, y0, x1, y1 in input pixels
    scores: torch.Tensor  # [D]
    labels: torch.Tensor  # [D] int64


class ServedDetections(nn.Module):
    """The detector as a service answers: [N, top_k, 6] rows of x0, y0, x1, y1, score, label.

    Fixed-size, tensor-only (no Python loop over images), so torch.export can trace it and
    MLflow can serve it without Flotilla installed; rows below any useful score are the
    caller's to drop (``decode`` drops them with ``min_score``).
    """

    def __init__(self, detector: nn.Module, *, num_classes: int, top_k: int = 20) -> None:
        super().__init__()
        self.detector, self.num_classes, self.top_k = detector, num_classes, top_k

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.detector(images)
        classes = self.num_classes
        heat = torch.sigmoid(output[:, :classes])
        peaks = heat * (functional.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
        rows, cols = heat.shape[2], heat.shape[3]
        scores, index = peaks.flatten(1).topk(min(self.top_k, classes * rows * cols), dim=1)
        label, cell = index // (rows * cols), index % (rows * cols)
        box = output[:, classes:].flatten(2)  # [N, 4, cells]
        w, h, dx, dy = torch.gather(box, 2, cell.unsqueeze(1).expand(-1, 4, -1)).unbind(1)
        cx = ((cell % cols).float() + dx) * STRIDE
        cy = ((cell // cols).float() + dy) * STRIDE
        half_w, half_h = w.clamp(min=0) * STRIDE / 2, h.clamp(min=0) * STRIDE / 2
        return torch.stack(
            [cx - half_w, cy - half_h, cx + half_w, cy + half_h, scores, label.float()], dim=2
        )


def decode(
    output: torch.Tensor, *, num_classes: int, top_k: int = 50, min_score: float = 0.05
) -> list[Detections]:
    """Peaks of each image's heatmap (a 3x3 max-pool stands in for NMS) as boxes."""
    heat = torch.sigmoid(output[:, :num_classes])
    peaks = heat * (functional.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    n, _, rows, cols = heat.shape
    scores, index = peaks.view(n, -1).topk(min(top_k, peaks[0].numel()))
    result = []
    for i in range(n):
        keep = scores[i] >= min_score
        flat = index[i][keep]
        label, cell = flat // (rows * cols), flat % (rows * cols)
        row, col = cell // cols, cell % cols
        w, h, dx, dy = output[i, num_classes:, row, col]
        cx, cy = (col.float() + dx) * STRIDE, (row.float() + dy) * STRIDE
        half_w, half_h = w.clamp(min=0) * STRIDE / 2, h.clamp(min=0) * STRIDE / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)
        result.append(Detections(boxes.detach(), scores[i][keep].detach(), label.long()))
    return result
