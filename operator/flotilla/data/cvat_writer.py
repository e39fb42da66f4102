"""Write a "CVAT for images 1.1" export with tags or rectangles, the way CVAT lays one out.

Used for example and test data. The export is built beside its destination and
renamed into place, so a crash never leaves a half-written export that looks whole.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

Sample = tuple[np.ndarray, str, str | None]  # pixels (H, W) or (H, W, C) uint8, label, subset
Box = tuple[str, float, float, float, float]  # label, x0, y0, x1, y1 in pixels
BoxSample = tuple[np.ndarray, Sequence[Box], str | None]  # pixels, boxes, subset


def write_cvat_images_export(
    out_dir: Path, *, labels: Sequence[str], samples: Iterable[Sample], task_name: str
) -> Path:
    """Tags: one per image."""
    boxed = (
        (pixels, [(label, -1.0, -1.0, -1.0, -1.0)], subset) for pixels, label, subset in samples
    )
    return _write(out_dir, labels=labels, samples=boxed, task_name=task_name, kind="tag")


def write_cvat_detection_export(
    out_dir: Path, *, labels: Sequence[str], samples: Iterable[BoxSample], task_name: str
) -> Path:
    """Rectangles: any number per image."""
    return _write(out_dir, labels=labels, samples=samples, task_name=task_name, kind="rectangle")


def _write(
    out_dir: Path,
    *,
    labels: Sequence[str],
    samples: Iterable[BoxSample],
    task_name: str,
    kind: str,
) -> Path:
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    size = _meta(root, labels=labels, task_name=task_name, kind=kind)
    count = 0
    for count, (pixels, boxes, subset) in enumerate(samples, start=1):
        name = f"frame_{count - 1:06d}.png"
        Image.fromarray(pixels).save(staging / "images" / name)
        attributes = {
            "id": str(count - 1),
            "name": name,
            "width": str(pixels.shape[1]),
            "height": str(pixels.shape[0]),
        }
        if subset:
            attributes["subset"] = subset
        image = ElementTree.SubElement(root, "image", attributes)
        _annotate(image, boxes, kind=kind)
    size.text = str(count)
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(
        staging / "annotations.xml", encoding="utf-8", xml_declaration=True
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def _meta(
    root: ElementTree.Element, *, labels: Sequence[str], task_name: str, kind: str
) -> ElementTree.Element:
    meta = ElementTree.SubElement(root, "meta")
    task = ElementTree.SubElement(meta, "task")
    ElementTree.SubElement(task, "name").text = task_name
    ElementTree.SubElement(task, "mode").text = "annotation"
    size = ElementTree.SubElement(task, "size")
    label_list = ElementTree.SubElement(task, "labels")
    for name in labels:
        label = ElementTree.SubElement(label_list, "label")
        ElementTree.SubElement(label, "name").text = name
        ElementTree.SubElement(label, "type").text = kind
        ElementTree.SubElement(label, "attributes")
    return size


def _annotate(image: ElementTree.Element, boxes: Sequence[Box], *, kind: str) -> None:
    for label, *corners in boxes:
        if kind == "tag":
            ElementTree.SubElement(image, "tag", {"label": label, "source": "manual"})
            continue
        box = {k: f"{v:.2f}" for k, v in zip(("xtl", "ytl", "xbr", "ybr"), corners, strict=True)}
        attributes = {"label": label, "source": "manual", "occluded": "0", **box}
        ElementTree.SubElement(image, "box", attributes)
