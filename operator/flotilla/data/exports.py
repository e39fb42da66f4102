"""Read a CVAT export on the node, "CVAT for images 1.1" (XML) or "COCO 1.0" (JSON), as frames.

Both come as a folder or as the zip CVAT produces. CVAT for images 1.1 holds tags and
rectangles per ``<image>``. A task (or job) export names its one subset in
``<meta><task><subset>`` and keeps its images in ``images/``; a project export puts
``subset`` on every ``<image>`` and its images in ``images/<subset>/``, where two tasks
may each hold a file of the same name. COCO 1.0 holds one
``annotations/instances_<subset>.json`` per subset, images under ``images/<subset>/`` (or
``images/``). CVAT's COCO 1.0 never carries tags, so a tag task's COCO export, all images
and no annotations, is refused with what to export instead; a COCO annotation without a
``bbox``, as other tools write, is still read as a tag. CVAT's subset ``default`` means
none. Polygons, points and tracks are not used.

The export is untrusted: every file is read through ``ExportFiles``, which confines and
bounds it, and every box through ``box_numbers``, which checks its numbers.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from flotilla.data.box_numbers import check_inside, coco_box, xml_box
from flotilla.data.errors import DataSourceError, shown
from flotilla.data.export_files import ANNOTATIONS, COCO_DIR, ExportFiles
from flotilla.data.frames import RawBox, RawFrame

Format = Literal["auto", "cvat-images-1.1", "coco-1.0"]
_COCO_LISTS = ("images", "annotations", "categories")
# CVAT's name for "no subset": a task's <meta> and a project's images and folders use it.
_NO_SUBSET = "default"


def read_export(source: Path, *, format: Format = "auto") -> list[RawFrame]:
    """Every frame of the export, annotated or not, in the export's order."""
    files = ExportFiles(source)
    if format == "auto":
        format = "cvat-images-1.1" if files.exists(ANNOTATIONS) else "coco-1.0"
        if format == "coco-1.0" and not _coco_files(files):
            raise DataSourceError(
                f"CVAT export {source} has neither {ANNOTATIONS} (CVAT for images 1.1) nor "
                f"{COCO_DIR}/*.json (COCO 1.0)"
            )
    if format == "cvat-images-1.1":
        return _read_cvat_xml(files)
    return _read_coco(files)


def _loader(
    files: ExportFiles, path: str, *, boxes: Sequence[RawBox], where: str
) -> Callable[[], Image.Image]:
    """Decode the image when its pixels are needed; only then is its size known to the boxes."""

    def load() -> Image.Image:
        image = files.image(path)
        check_inside(boxes, width=image.width, height=image.height, where=where)
        return image

    return load


def _image_path(files: ExportFiles, name: str, *, subset: str | None) -> str:
    """``images/<subset>/<name>`` (a project's layout), then ``images/<name>``, then ``<name>``."""
    files.confine(name)  # a name that leaves the export is refused, not looked for
    folders = (f"images/{subset}", "images") if subset else ("images",)
    candidates = (*(f"{folder}/{name}" for folder in folders), name)
    for candidate in candidates:
        if files.exists(candidate):
            return candidate
    raise DataSourceError(
        f"{files.source}: image {shown(name)} is listed but its file is missing "
        f"(looked for {', '.join(map(shown, candidates))})"
    )


def _subset(name: str | None) -> str | None:
    """The frame's subset: CVAT's ``default`` and an empty name are none."""
    name = (name or "").strip()
    return name if name and name != _NO_SUBSET else None


def _meta_subset(root: ElementTree.Element) -> str | None:
    """A task or job export's subset: CVAT writes it once in <meta>, never on its images."""
    for kind in ("task", "job"):
        if subset := _subset(root.findtext(f"meta/{kind}/subset")):
            return subset
    return None


def _annotations(files: ExportFiles) -> ElementTree.Element:
    if not files.exists(ANNOTATIONS):
        raise DataSourceError(f"CVAT export {files.source} has no {ANNOTATIONS}")
    root = files.xml(ANNOTATIONS)
    version = (root.findtext("version") or "").strip()
    if root.tag != "annotations" or version != "1.1":
        raise DataSourceError(
            f"{files.source}/{ANNOTATIONS} is not a 'CVAT for images 1.1' export "
            f"(root <{shown(root.tag)}>, version {shown(version) if version else 'missing'})"
        )
    return root


def _read_cvat_xml(files: ExportFiles) -> list[RawFrame]:
    where = f"{files.source}/{ANNOTATIONS}"
    root = _annotations(files)
    task_subset = _meta_subset(root)
    frames: list[RawFrame] = []
    for image in root.iter("image"):
        name = image.get("name")
        if not name:
            raise DataSourceError(f"{where}: an <image> (id {shown(image.get('id'))}) has no name")
        tags = tuple(t.get("label", "") for t in image.iter("tag"))
        boxes = tuple(
            xml_box(
                box.attrib,
                label=box.get("label", ""),
                where=f"{where}: a <box> of image {shown(name)}",
            )
            for box in image.iter("box")
        )
        subset = image.get("subset")  # a project export's, per image
        load = _loader(
            files,
            _image_path(files, name, subset=subset),
            boxes=boxes,
            where=f"{where}: image {shown(name)}",
        )
        frames.append(RawFrame(name, _subset(subset) or task_subset, tags, boxes, load))
    return frames


def _coco_files(files: ExportFiles) -> list[str]:
    return [n for n in files.listdir(COCO_DIR) if n.endswith(".json")]


def _read_coco(files: ExportFiles) -> list[RawFrame]:
    names = _coco_files(files)
    if not names:
        raise DataSourceError(f"COCO export {files.source} has no {COCO_DIR}/*.json")
    frames: list[RawFrame] = []
    for name in names:
        subset = name.removesuffix(".json").split("_", 1)[-1] if "_" in name else None
        frames += _coco_subset(files, f"{COCO_DIR}/{name}", subset)
    if frames and not any(frame.annotated for frame in frames):
        raise DataSourceError(
            f"COCO export {files.source} ({', '.join(f'{COCO_DIR}/{n}' for n in names)}) lists "
            f"{len(frames)} images and no annotations. CVAT's COCO 1.0 export carries no tags, "
            "so a tag (classification) task comes out empty: export the task as "
            "'CVAT for images 1.1'"
        )
    return frames


def _coco_document(files: ExportFiles, path: str) -> dict[str, list[Any]]:
    document = files.json(path)
    if not isinstance(document, dict) or not all(
        isinstance(document.get(k), list) for k in _COCO_LISTS
    ):
        raise DataSourceError(
            f"{files.source}/{path} is not a COCO 1.0 file: it needs lists 'images', "
            "'annotations' and 'categories'"
        )
    return document


def _coco_subset(files: ExportFiles, path: str, subset: str | None) -> list[RawFrame]:
    where = f"{files.source}/{path}"
    document = _coco_document(files, path)
    categories = {
        _integer(item, "id", at): _text(item, "name", at)
        for at, item in _entries(document, "categories", where)
    }
    images = [
        (_integer(item, "id", at), _text(item, "file_name", at))
        for at, item in _entries(document, "images", where)
    ]
    names = dict(images)
    tags: dict[int, list[str]] = {}
    boxes: dict[int, list[RawBox]] = {}
    for at, item in _entries(document, "annotations", where):
        category, image_id = _integer(item, "category_id", at), _integer(item, "image_id", at)
        if category not in categories:
            raise DataSourceError(f"{at}: category_id {category} is none of the categories")
        bbox = item.get("bbox")
        if bbox is None or bbox == []:
            tags.setdefault(image_id, []).append(categories[category])
        else:
            named = f"{at} of image {shown(names.get(image_id, image_id))}"
            boxes.setdefault(image_id, []).append(
                coco_box(bbox, label=categories[category], where=named)
            )
    return [
        RawFrame(
            name,
            _subset(subset),
            tuple(tags.get(image_id, ())),
            tuple(boxes.get(image_id, ())),
            _loader(
                files,
                _image_path(files, name, subset=subset),
                boxes=boxes.get(image_id, []),
                where=f"{where}: image {shown(name)}",
            ),
        )
        for image_id, name in images
    ]


def _entries(
    document: dict[str, list[Any]], key: str, where: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each entry of one of the document's lists, with where it is for messages."""
    for position, item in enumerate(document[key]):
        at = f"{where}: malformed COCO entry {key}[{position}]"
        if not isinstance(item, dict):
            raise DataSourceError(f"{at}: {shown(item)} is not an object")
        yield at, item


def _integer(item: dict[str, Any], field: str, at: str) -> int:
    value = item.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataSourceError(f"{at}: {field} is {shown(value)}, not an integer")
    return value


def _text(item: dict[str, Any], field: str, at: str) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise DataSourceError(f"{at}: {field} is {shown(value)}, not a string")
    return value
