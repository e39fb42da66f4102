"""Write a "CVAT for images 1.1" export with tags, the way CVAT lays one out.

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


def write_cvat_images_export(
    out_dir: Path, *, labels: Sequence[str], samples: Iterable[Sample], task_name: str
) -> Path:
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    meta = ElementTree.SubElement(root, "meta")
    task = ElementTree.SubElement(meta, "task")
    ElementTree.SubElement(task, "name").text = task_name
    ElementTree.SubElement(task, "mode").text = "annotation"
    size = ElementTree.SubElement(task, "size")
    label_list = ElementTree.SubElement(task, "labels")
    for name in labels:
        label = ElementTree.SubElement(label_list, "label")
        ElementTree.SubElement(label, "name").text = name
        ElementTree.SubElement(label, "type").text = "tag"
        ElementTree.SubElement(label, "attributes")
    count = 0
    for count, (pixels, label_name, subset) in enumerate(samples, start=1):
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
        ElementTree.SubElement(image, "tag", {"label": label_name, "source": "manual"})
    size.text = str(count)
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(
        staging / "annotations.xml", encoding="utf-8", xml_declaration=True
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir
