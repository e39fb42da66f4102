"""Exports laid out exactly as a CVAT 2.2x server writes them, for the readers' tests.

"CVAT for images 1.1" task, job and project exports and "COCO 1.0" task and project
exports, as folders or as the zip CVAT hands out (files at the zip's root). The layouts
were taken from a CVAT 2.23.1 server: a task export keeps its subset in
``<meta><task><subset>`` and its images in ``images/``; a project export puts ``subset``
and ``task_id`` on every ``<image>`` and its images in ``images/<subset>/``, where two
tasks may hold files of the same name; COCO 1.0 never writes tags, so a tag task's
export has ``"annotations": []``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

Rectangle = tuple[str, float, float, float, float]  # label, xtl, ytl, xbr, ybr in pixels
CREATED = "2025-01-14 09:30:00.000000+00:00"
_COLOURS = ("#fa3253", "#33ddff", "#34d1b7", "#ff007c", "#ddff33")


@dataclass(frozen=True)
class Frame:
    """One image of a task: its name in CVAT, its pixels, its tags and rectangles."""

    name: str
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8
    tags: tuple[str, ...] = ()
    rectangles: tuple[Rectangle, ...] = ()


@dataclass(frozen=True)
class Task:
    id: int
    name: str
    subset: str  # "" when the task has none: CVAT then writes "default"
    frames: Sequence[Frame]


def frame(index: int, value: int, *, tags: Sequence[str] = (), size: int = 8) -> Frame:
    """A uniform grey frame named as CVAT names a task's frames."""
    pixels = np.full((size, size), value, np.uint8)
    return Frame(f"frame_{index:06d}.png", pixels, tuple(tags))


def zipped(folder: Path) -> Path:
    """The export as CVAT's zip: every file at the zip's root."""
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as export:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                export.write(path, path.relative_to(folder).as_posix())
    return archive


# CVAT for images 1.1


def write_task_export(
    folder: Path, *, task: Task, labels: Sequence[str], meta: Literal["task", "job"] = "task"
) -> Path:
    """A task (or job) export: subset in ``<meta>``, none on the images, files in ``images/``."""
    root = _annotations()
    meta_element = ElementTree.SubElement(root, "meta")
    meta_element.append(_task_meta(task, labels=labels, tag=meta))
    ElementTree.SubElement(meta_element, "dumped").text = CREATED
    for index, item in enumerate(task.frames):
        _image(root, item, id=index)
        _save(item.pixels, folder / "images" / item.name)
    _write_xml(root, folder / "annotations.xml")
    return folder


def write_project_export(
    folder: Path, *, project_id: int, tasks: Sequence[Task], labels: Sequence[str]
) -> Path:
    """A project export: ``subset`` and ``task_id`` on each image, files in ``images/<subset>/``."""
    root = _annotations()
    meta = ElementTree.SubElement(root, "meta")
    project = ElementTree.SubElement(meta, "project")
    _texts(project, id=str(project_id), name="flotilla", created=CREATED, updated=CREATED)
    project.append(_labels(labels))
    listed = ElementTree.SubElement(project, "tasks")
    for task in tasks:
        listed.append(_task_meta(task, labels=labels, tag="task"))
    subsets = dict.fromkeys(task.subset or "default" for task in tasks)
    ElementTree.SubElement(project, "subsets").text = "\n".join(subsets)
    project.append(_owner())
    ElementTree.SubElement(meta, "dumped").text = CREATED
    index = 0
    for task in tasks:
        subset = task.subset or "default"
        for item in task.frames:
            _image(root, item, id=index, subset=subset, task_id=task.id)
            _save(item.pixels, folder / "images" / subset / item.name)
            index += 1
    _write_xml(root, folder / "annotations.xml")
    return folder


def _annotations() -> ElementTree.Element:
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    return root


def _task_meta(task: Task, *, labels: Sequence[str], tag: str) -> ElementTree.Element:
    element = ElementTree.Element(tag)
    stop = str(max(len(task.frames) - 1, 0))
    _texts(
        element,
        id=str(task.id),
        name=task.name,
        size=str(len(task.frames)),
        mode="annotation",
        overlap="0",
        bugtracker="",
        created=CREATED,
        updated=CREATED,
        subset=task.subset or "default",
        start_frame="0",
        stop_frame=stop,
        frame_filter="",
    )
    segments = ElementTree.SubElement(element, "segments")
    segment = ElementTree.SubElement(segments, "segment")
    _texts(segment, id=str(task.id * 10), start="0", stop=stop, url="http://cvat/api/jobs/1")
    element.append(_owner())
    ElementTree.SubElement(element, "assignee")
    element.append(_labels(labels))
    return element


def _labels(labels: Sequence[str]) -> ElementTree.Element:
    element = ElementTree.Element("labels")
    for position, name in enumerate(labels):
        label = ElementTree.SubElement(element, "label")
        _texts(label, name=name, color=_COLOURS[position % len(_COLOURS)], type="any")
        ElementTree.SubElement(label, "attributes")
    return element


def _owner() -> ElementTree.Element:
    owner = ElementTree.Element("owner")
    _texts(owner, username="admin", email="admin@example.org")
    return owner


def _texts(parent: ElementTree.Element, **children: str) -> None:
    for tag, text in children.items():
        ElementTree.SubElement(parent, tag).text = text


def _image(root: ElementTree.Element, item: Frame, *, id: int, **project: Any) -> None:
    height, width = item.pixels.shape[:2]
    attributes = {"id": str(id), "name": item.name}
    attributes |= {key: str(value) for key, value in project.items()}
    attributes |= {"width": str(width), "height": str(height)}
    image = ElementTree.SubElement(root, "image", attributes)
    for label in item.tags:
        ElementTree.SubElement(image, "tag", {"label": label, "source": "manual"})
    for label, *corners in item.rectangles:
        box = {k: f"{v:.2f}" for k, v in zip(("xtl", "ytl", "xbr", "ybr"), corners, strict=True)}
        ElementTree.SubElement(
            image,
            "box",
            {"label": label, "source": "manual", "occluded": "0", **box, "z_order": "0"},
        )


def _write_xml(root: ElementTree.Element, path: Path) -> None:
    ElementTree.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# COCO 1.0


def write_coco_export(
    folder: Path,
    *,
    tasks: Sequence[Task],
    labels: Sequence[str],
    images_under_subset: bool = True,
) -> Path:
    """One ``annotations/instances_<subset>.json`` per subset; tags are dropped, as CVAT does.

    Images lie in ``images/<subset>/`` (a project export) or ``images/`` (some task exports).
    """
    categories = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(labels, 1)]
    by_subset: dict[str, list[Frame]] = {}
    for task in tasks:
        by_subset.setdefault(task.subset or "default", []).extend(task.frames)
    for subset, frames in by_subset.items():
        document = _coco_document(frames, categories=categories)
        path = folder / "annotations" / f"instances_{subset}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
        images = folder / "images" / subset if images_under_subset else folder / "images"
        for item in frames:
            _save(item.pixels, images / item.name)
    return folder


def _coco_document(frames: Sequence[Frame], *, categories: list[dict[str, Any]]) -> dict[str, Any]:
    category = {entry["name"]: entry["id"] for entry in categories}
    images, annotations = [], []
    for image_id, item in enumerate(frames, start=1):
        height, width = item.pixels.shape[:2]
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "file_name": item.name,
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        for label, xtl, ytl, xbr, ybr in item.rectangles:
            width_, height_ = xbr - xtl, ybr - ytl
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category[label],
                    "segmentation": [],
                    "area": width_ * height_,
                    "bbox": [xtl, ytl, width_, height_],
                    "iscrowd": 0,
                    "attributes": {"occluded": False},
                }
            )
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": categories,
        "images": images,
        "annotations": annotations,
    }
