"""Exports on the node: COCO 1.0 and CVAT for images 1.1 with rectangles, folders and zips,
labels through aliases with their report, and every way a malformed export fails."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flotilla.api import CvatExportSource, DataSource
from flotilla.data import (
    DataSourceError,
    DetectionImages,
    ImageShape,
    LabelledImages,
    load_site_data,
    split_train_holdout,
)
from flotilla.data.exports import read_export

LABELS = ["cat", "dog", "bird"]
SHAPE = ImageShape(channels=1, height=10, width=10)


def _image(path: Path, size: tuple[int, int] = (20, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), 100, np.uint8)).save(path)


def _coco(root: Path, subset: str = "default", **override: Any) -> Path:
    document = {
        "licenses": [],
        "info": {},
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "x"}],
        "images": [
            {"id": 1, "file_name": "a.png", "width": 20, "height": 20},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 20},
            {"id": 3, "file_name": "c.png", "width": 20, "height": 20},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 4, 6, 8], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 0},
        ],
    } | override
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{subset}.json").write_text(json.dumps(document))
    for name in ("a.png", "b.png", "c.png"):
        _image(root / "images" / subset / name)
    return root


def _zip(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in folder.rglob("*"):
            if path.is_file():
                zipped.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def _load(path: Path, *, task: str = "detection", aliases: dict[str, str] | None = None) -> Any:
    source = DataSource(cvat_export=CvatExportSource(path=str(path)), label_aliases=aliases or {})
    return load_site_data(site="site-a", source=source, task=task, labels=LABELS, shape=SHAPE)  # type: ignore[arg-type]


def test_coco_rectangles_become_scaled_boxes_and_unknown_labels_are_reported(
    tmp_path: Path,
) -> None:
    data = _load(_coco(tmp_path / "coco"))

    assert isinstance(data.samples, DetectionImages) and len(data.samples) == 1  # b: label x only
    assert data.samples.images.shape == (1, 1, 10, 10)
    # 20x20 images resized to 10x10: every coordinate halves; bbox is x, y, w, h.
    assert data.samples.boxes[0].tolist() == [[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 5.0, 5.0]]
    assert data.samples.labels[0].tolist() == [0, 1]
    assert data.report.ignored == {"x": 1}
    assert data.report.missing == ("bird",)
    assert (data.report.frames, data.report.used, data.report.unannotated) == (3, 1, 2)
    assert data.report.as_metrics()["ignoredLabels"] == {"x": 1}


@pytest.mark.parametrize("prefix", ["", "export/"])
def test_a_coco_zip_reads_like_its_folder(tmp_path: Path, prefix: str) -> None:
    archive = _zip(_coco(tmp_path / "coco"), tmp_path / "coco.zip", prefix)

    data = _load(archive)

    assert data.samples.boxes[0].shape == (2, 4)


def test_coco_subsets_map_to_train_and_holdout(tmp_path: Path) -> None:
    root = _coco(tmp_path / "coco", "Train")
    _coco(root, "Validation")

    data = _load(root)
    train, holdout = split_train_holdout(data.samples, validation_fraction=0.5, seed=0)

    assert data.samples.subsets == ("Train", "Validation")
    assert (len(train), len(holdout)) == (1, 1)


def test_an_alias_maps_a_site_label_to_the_jobs(tmp_path: Path) -> None:
    data = _load(_coco(tmp_path / "coco"), aliases={"x": "bird"})

    assert len(data.samples) == 2 and data.samples.labels[1].tolist() == [2]
    assert data.report.aliased == {"x": "bird"} and data.report.ignored == {}


def test_an_alias_to_an_unknown_job_label_is_an_error(tmp_path: Path) -> None:
    export = _coco(tmp_path / "coco")

    with pytest.raises(
        DataSourceError, match=rf"site site-a: CVAT export {export}: labelAliases\['x'\] maps to"
    ):
        _load(export, aliases={"x": "fish"})


def test_coco_annotations_without_a_bbox_are_tags(tmp_path: Path) -> None:
    tags = [{"id": 1, "image_id": 1, "category_id": 2}, {"id": 2, "image_id": 3, "category_id": 1}]
    data = _load(_coco(tmp_path / "coco", annotations=tags), task="classification")

    assert isinstance(data.samples, LabelledImages)
    assert data.samples.labels.tolist() == [1, 0]


def _cvat_xml(root: Path, images: str) -> Path:
    root.mkdir(parents=True)
    xml = f'<?xml version="1.0"?><annotations><version>1.1</version><meta/>{images}</annotations>'
    (root / "annotations.xml").write_text(xml)
    for name in ("a.png", "b.png"):
        _image(root / "images" / name, (40, 20))
    return root


def test_cvat_xml_rectangles_become_boxes(tmp_path: Path) -> None:
    images = (
        '<image id="0" name="a.png" width="40" height="20" subset="Train">'
        '<box label="dog" xtl="4" ytl="2" xbr="20" ybr="10" occluded="0"/>'
        '<tag label="cat"/></image><image id="1" name="b.png" width="40" height="20"/>'
    )
    root = _cvat_xml(tmp_path / "xml", images)

    detection = _load(root)
    classification = _load(root, task="classification")

    assert detection.samples.boxes[0].tolist() == [[1.0, 1.0, 5.0, 5.0]]  # x/4, y/2
    assert detection.samples.labels[0].tolist() == [1]
    assert detection.samples.subsets == ("Train",)
    assert classification.samples.labels.tolist() == [0]
    assert classification.report.unannotated == 1


def _fails(path: Path, match: str, task: str = "detection") -> None:
    with pytest.raises(DataSourceError, match=match):
        _load(path, task=task)


def test_malformed_exports_fail_naming_the_site_the_file_and_the_problem(tmp_path: Path) -> None:
    _fails(tmp_path / "nowhere", "site site-a: CVAT export .*nowhere does not exist")
    (tmp_path / "empty").mkdir()
    _fails(tmp_path / "empty", "has neither annotations.xml .* nor annotations/\\*.json")
    bad = _coco(tmp_path / "bad")
    (bad / "annotations" / "instances_default.json").write_text("{not json")
    _fails(bad, r"instances_default.json is not valid JSON")
    (bad / "annotations" / "instances_default.json").write_text('{"images": []}')
    _fails(bad, r"is not a COCO 1.0 file: it needs lists")
    _fails(
        _coco(tmp_path / "dangling", annotations=[{"image_id": 1, "category_id": 9}]),
        r"malformed COCO entry",
    )
    missing = _coco(tmp_path / "missing")
    (missing / "images" / "default" / "c.png").unlink()
    _fails(missing, r"image 'c.png' is listed but its file is missing")
    _fails(
        _coco(tmp_path / "untagged"),
        r"no annotated frames \(tags\) with the job's labels among 3 frames of CVAT export "
        r".*untagged; .* \(the frames hold rectangles, which a classification job does not use\)",
        task="classification",
    )
    broken = _cvat_xml(tmp_path / "xml", '<image id="0" name="a.png"><box label="cat"/></image>')
    _fails(broken, r"a <box> of image 'a.png': xtl=None is missing or not a number")
    (broken / "annotations.xml").write_text("<annotations><version>1.1")
    _fails(broken, r"annotations.xml is not valid XML")
    corrupt = _coco(tmp_path / "corrupt")
    (corrupt / "images" / "default" / "a.png").write_bytes(b"not a png")
    _fails(corrupt, r"cannot read image 'images/default/a.png'")


def test_read_export_keeps_every_frame_in_order(tmp_path: Path) -> None:
    frames = read_export(_coco(tmp_path / "coco"), format="coco-1.0")

    assert [f.name for f in frames] == ["a.png", "b.png", "c.png"]
    assert [f.annotated for f in frames] == [True, True, False]
    assert frames[0].load().size == (20, 20)
