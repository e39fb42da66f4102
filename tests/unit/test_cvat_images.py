"""CVAT-for-images 1.1 exports as a site's classification data: folders, zips, labels,
subsets, and every way they fail (through `load_site_data`, the one reader clients and the
aggregator's central evaluation use)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flotilla.data import (
    DataSourceError,
    LabelledImages,
    SiteData,
    split_train_holdout,
)
from flotilla.data.cvat_writer import write_cvat_images_export
from tests.exports import read_export

LABELS = ["cat", "dog", "bird"]


def _site(
    source: Path, *, channels: int = 1, height: int = 6, width: int = 6, **aliases: str
) -> SiteData:
    return read_export(
        source, labels=LABELS, channels=channels, height=height, width=width, aliases=aliases
    )


def load_classification(source: Path, **shape: int) -> LabelledImages:
    samples = _site(source, **shape).samples
    assert isinstance(samples, LabelledImages)
    return samples


def _pixels(value: int, size: int = 6) -> np.ndarray:
    return np.full((size, size), value, dtype=np.uint8)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    samples = [(_pixels(10 * i), LABELS[i % 3], "Train") for i in range(9)]
    return write_cvat_images_export(
        tmp_path / "site", labels=LABELS, samples=samples, task_name="t"
    )


def _xml(images: str, version: str = "1.1") -> str:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>{version}</version>'
        f"<meta/>{images}</annotations>"
    )


def _hand_written(tmp_path: Path, xml: str, files: dict[str, np.ndarray] | None = None) -> Path:
    from PIL import Image

    root = tmp_path / "hand"
    (root / "images").mkdir(parents=True)
    (root / "annotations.xml").write_text(xml)
    for name, pixels in (files or {}).items():
        Image.fromarray(pixels).save(root / "images" / name)
    return root


def test_a_folder_export_loads_as_tensors(export: Path) -> None:
    data = load_classification(export)

    assert data.images.shape == (9, 1, 6, 6) and data.images.dtype.is_floating_point
    assert data.labels.tolist() == [0, 1, 2] * 3
    assert float(data.images[1].max()) == pytest.approx(10 / 255)
    assert data.subsets == ("Train",) * 9


@pytest.mark.parametrize("nested", [False, True])
def test_a_zip_export_loads_like_the_folder(export: Path, tmp_path: Path, nested: bool) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in export.rglob("*"):
            if path.is_file():
                name = path.relative_to(export).as_posix()
                zipped.write(path, f"task_1/{name}" if nested else name)

    data = load_classification(archive)

    assert len(data) == 9 and data.labels.tolist() == [0, 1, 2] * 3


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_images_are_converted_and_resized(export: Path, channels: int) -> None:
    data = load_classification(export, channels=channels, height=3, width=4)

    assert data.images.shape == (9, channels, 3, 4)
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0


def test_aliases_unknown_unannotated_and_multi_tagged_images(tmp_path: Path) -> None:
    images = (
        '<image id="0" name="a.png"><tag label="kitty"/></image>'
        '<image id="1" name="b.png"><tag label="horse"/></image>'
        '<image id="2" name="c.png"></image>'
        '<image id="3" name="d.png"><tag label="cat"/><tag label="dog"/></image>'
        '<image id="4" name="e.png"><tag label="dog"/></image>'
    )
    files = {f"{n}.png": _pixels(1) for n in "abcde"}
    root = _hand_written(tmp_path, _xml(images), files)

    data = _site(root, kitty="cat")

    assert isinstance(data.samples, LabelledImages)
    assert data.samples.labels.tolist() == [0, 1]  # a.png (kitty = cat) and e.png (dog)
    assert dict(data.report.ignored) == {"horse": 1}
    assert data.report.unannotated == 2  # no tag, or only unknown ones
    assert data.report.ambiguous == 1  # two usable tags
    assert dict(data.report.aliased) == {"kitty": "cat"}


def test_the_validation_subset_is_the_hold_out(tmp_path: Path) -> None:
    samples = [(_pixels(i), "cat", "validation" if i < 3 else "Train") for i in range(10)]
    root = write_cvat_images_export(tmp_path / "s", labels=LABELS, samples=samples, task_name="t")
    data = load_classification(root)

    train, holdout = split_train_holdout(data, validation_fraction=0.5, seed=0)

    assert (len(train), len(holdout)) == (7, 3)
    assert set(holdout.subsets) == {"validation"}


def test_without_subsets_the_split_is_seeded(export: Path) -> None:
    data = load_classification(export)

    first = split_train_holdout(data, validation_fraction=0.34, seed=7)
    again = split_train_holdout(data, validation_fraction=0.34, seed=7)
    none = split_train_holdout(data, validation_fraction=0.0, seed=7)

    assert len(first[1]) == 3 and len(first[0]) == 6
    assert np.array_equal(first[1].images.numpy(), again[1].images.numpy())
    assert len(none[1]) == 0 and len(none[0]) == 9


def test_the_writer_leaves_no_staging_folder(export: Path) -> None:
    assert not export.with_name(export.name + ".tmp").exists()
    assert (export / "annotations.xml").exists()


def _fails(source: Path, match: str) -> None:
    with pytest.raises(DataSourceError, match=match):
        load_classification(source)


def test_errors_name_the_path_and_the_problem(tmp_path: Path, export: Path) -> None:
    _fails(tmp_path / "nowhere", "does not exist")
    (tmp_path / "file.txt").write_text("hello")
    _fails(tmp_path / "file.txt", "neither a folder nor a zip")
    (tmp_path / "empty").mkdir()
    _fails(tmp_path / "empty", "has neither annotations.xml")
    bad = _hand_written(tmp_path / "x1", "<annotations><version>1.1")
    _fails(bad, "not valid XML")
    old = _hand_written(tmp_path / "x2", _xml("", version="1.0"))
    _fails(old, "version '1.0'")
    doctype = _hand_written(tmp_path / "x3", '<!DOCTYPE a [<!ENTITY b "c">]>' + _xml(""))
    _fails(doctype, "DTDs and entities are refused")
    (export / "images" / "frame_000001.png").unlink()
    _fails(export, "'frame_000001.png' is listed but its file is missing")


def test_unreadable_images_and_empty_exports_fail_clearly(tmp_path: Path) -> None:
    root = _hand_written(
        tmp_path / "a", _xml('<image id="0" name="a.png"><tag label="cat"/></image>')
    )
    (root / "images" / "a.png").write_bytes(b"not a png")
    _fails(root, "cannot read image 'images/a.png'")
    other = _hand_written(
        tmp_path / "b",
        _xml('<image id="0" name="a.png"><tag label="fish"/></image>'),
        {"a.png": _pixels(1)},
    )
    _fails(other, r"expected some of \['cat', 'dog', 'bird'\], found others: \['fish'\]")


def test_a_broken_zip_is_refused(tmp_path: Path, export: Path) -> None:
    archive = Path(shutil.make_archive(str(tmp_path / "e"), "zip", export))
    archive.write_bytes(archive.read_bytes()[:200])

    _fails(archive, "neither a folder nor a zip|not a readable zip|no annotations.xml")
