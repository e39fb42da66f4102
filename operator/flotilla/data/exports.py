"""Read a CVAT export on the node, "CVAT for images 1.1" (XML) or "COCO 1.0" (JSON), as frames.

Both come as a folder or as the zip CVAT produces. CVAT for images 1.1 holds tags and
rectangles per ``<image>`` (its ``subset`` attribute says Train / Validation); COCO 1.0
holds one ``annotations/instances_<subset>.json`` per subset, images under
``images/<subset>/`` (or ``images/``). A COCO annotation without a ``bbox`` is read as a
tag (datumaro's label-only annotations). Polygons, points and tracks are not used.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from flotilla.data.cvat_images import ANNOTATIONS, ExportFiles, _annotations, _image_path
from flotilla.data.errors import DataSourceError
from flotilla.data.frames import RawBox, RawFrame

Format = Literal["auto", "cvat-images-1.1", "coco-1.0"]
_COCO_DIR = "annotations"


def read_export(source: Path, *, format: Format = "auto") -> list[RawFrame]:
    """Every frame of the export, annotated or not, in the export's order."""
    files = ExportFiles(source)
    if format == "auto":
        format = "cvat-images-1.1" if files.exists(ANNOTATIONS) else "coco-1.0"
        if format == "coco-1.0" and not _coco_files(files):
            raise DataSourceError(
                f"CVAT export {source} has neither {ANNOTATIONS} (CVAT for images 1.1) nor "
                f"{_COCO_DIR}/*.json (COCO 1.0)"
            )
    if format == "cvat-images-1.1":
        return _read_cvat_xml(files)
    return _read_coco(files)


def _loader(files: ExportFiles, path: str) -> Any:
    def load() -> Image.Image:
        try:
            image = Image.open(io.BytesIO(files.read(path)))
            image.load()
            return image
        except (OSError, FileNotFoundError) as error:
            raise DataSourceError(f"{files.source}: cannot read image {path!r}: {error}") from None

    return load


def _read_cvat_xml(files: ExportFiles) -> list[RawFrame]:
    frames: list[RawFrame] = []
    for image in _annotations(files).iter("image"):
        name = image.get("name")
        if not name:
            raise DataSourceError(f"{files.source}: an <image> (id {image.get('id')}) has no name")
        tags = tuple(t.get("label", "") for t in image.iter("tag"))
        boxes = tuple(_xml_box(files, name, box) for box in image.iter("box"))
        path = _image_path(files, name)
        frames.append(
            RawFrame(name, image.get("subset") or None, tags, boxes, _loader(files, path))
        )
    return frames


def _xml_box(files: ExportFiles, image: str, box: Any) -> RawBox:
    try:
        corners = [float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
    except (TypeError, ValueError):
        raise DataSourceError(
            f"{files.source}/{ANNOTATIONS}: a <box> of image {image!r} has missing or "
            f"non-numeric corners {dict(box.attrib)}"
        ) from None
    return RawBox(box.get("label", ""), *corners)


def _coco_files(files: ExportFiles) -> list[str]:
    return [n for n in files.listdir(_COCO_DIR) if n.endswith(".json")]


def _read_coco(files: ExportFiles) -> list[RawFrame]:
    names = _coco_files(files)
    if not names:
        raise DataSourceError(f"COCO export {files.source} has no {_COCO_DIR}/*.json")
    frames: list[RawFrame] = []
    for name in names:
        subset = name.removesuffix(".json").split("_", 1)[-1] if "_" in name else None
        frames += _coco_subset(files, f"{_COCO_DIR}/{name}", subset)
    return frames


def _coco_json(files: ExportFiles, path: str) -> dict[str, Any]:
    try:
        document = json.loads(files.read(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataSourceError(f"{files.source}/{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not all(
        isinstance(document.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DataSourceError(
            f"{files.source}/{path} is not a COCO 1.0 file: it needs lists 'images', "
            "'annotations' and 'categories'"
        )
    return document


def _coco_subset(files: ExportFiles, path: str, subset: str | None) -> list[RawFrame]:
    document = _coco_json(files, path)
    where = f"{files.source}/{path}"
    try:
        categories = {int(c["id"]): str(c["name"]) for c in document["categories"]}
        tags: dict[int, list[str]] = {}
        boxes: dict[int, list[RawBox]] = {}
        for item in document["annotations"]:
            label = categories[int(item["category_id"])]
            image_id = int(item["image_id"])
            bbox = item.get("bbox")
            if bbox:
                x, y, w, h = (float(v) for v in bbox)
                boxes.setdefault(image_id, []).append(RawBox(label, x, y, x + w, y + h))
            else:
                tags.setdefault(image_id, []).append(label)
        images = [(int(i["id"]), str(i["file_name"])) for i in document["images"]]
    except (KeyError, TypeError, ValueError) as error:
        raise DataSourceError(f"{where}: malformed COCO entry ({error!r})") from None
    return [
        RawFrame(
            name,
            subset if subset and subset != "default" else None,
            tuple(tags.get(image_id, ())),
            tuple(boxes.get(image_id, ())),
            _loader(files, _coco_image(files, name, subset)),
        )
        for image_id, name in images
    ]


def _coco_image(files: ExportFiles, name: str, subset: str | None) -> str:
    for candidate in (f"images/{subset}/{name}", f"images/{name}", name):
        if files.exists(candidate):
            return candidate
    raise DataSourceError(f"{files.source}: image {name!r} is listed but its file is missing")
