"""mAP@0.5 in plain torch: Pascal VOC's all-point interpolated AP, averaged over classes.

Per class, detections of all images are ranked by score; each matches the unmatched
ground-truth box of its image with the highest IoU >= the threshold, else it is a false
positive. AP is the area under the precision envelope. Classes without ground truth are
left out of the mean (COCO does the same); mAP is 0.0 when no class has ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[A, 4] x [B, 4] (x0, y0, x1, y1) -> [A, B] intersection over union."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def average_precision(recall: torch.Tensor, precision: torch.Tensor) -> float:
    """Area under the monotone precision envelope (VOC 2010+), points in rank order."""
    r = torch.cat([torch.zeros(1), recall, torch.ones(1)])
    p = torch.cat([torch.zeros(1), precision, torch.zeros(1)])
    p = torch.flip(torch.cummax(torch.flip(p, [0]), 0).values, [0])
    steps = torch.nonzero(r[1:] != r[:-1]).flatten()
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())


def mean_average_precision(
    *,
    predictions: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    truths: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> tuple[float, dict[int, float]]:
    """mAP and AP per class; ``predictions`` per image: (boxes, scores, labels)."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} images")
    per_class: dict[int, float] = {}
    for label in range(num_classes):
        total = sum(int((t_labels == label).sum()) for _, t_labels in truths)
        if total:
            per_class[label] = _class_ap(predictions, truths, label, total, iou_threshold)
    mean = sum(per_class.values()) / len(per_class) if per_class else 0.0
    return mean, per_class


def _class_ap(
    predictions: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    truths: Sequence[tuple[torch.Tensor, torch.Tensor]],
    label: int,
    total: int,
    threshold: float,
) -> float:
    ranked: list[tuple[float, int, torch.Tensor]] = []
    for image, (boxes, scores, labels) in enumerate(predictions):
        for box, score in zip(boxes[labels == label], scores[labels == label], strict=True):
            ranked.append((float(score), image, box))
    ranked.sort(key=lambda item: -item[0])
    used = [torch.zeros(int((t == label).sum()), dtype=torch.bool) for _, t in truths]
    hits = torch.zeros(len(ranked))
    for rank, (_, image, box) in enumerate(ranked):
        gt = truths[image][0][truths[image][1] == label]
        if not len(gt):
            continue
        iou = box_iou(box[None], gt)[0].masked_fill(used[image], -1.0)
        best = int(iou.argmax())
        if iou[best] >= threshold:
            used[image][best] = True
            hits[rank] = 1.0
    true_positives = torch.cumsum(hits, 0)
    recall = true_positives / total
    precision = true_positives / torch.arange(1, len(ranked) + 1)
    return average_precision(recall, precision)
