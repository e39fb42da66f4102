"""Hostile exports: every read stays inside the export and within its bounds, and fails as a
`DataSourceError` that names the export, the file or member and the offending value.

Each test builds its hostile input in a few kilobytes: a zip bomb is a zip whose central
directory declares a huge size, or whose stream outgrows a lowered limit; a huge image is a
PNG header that claims huge dimensions.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
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
    SiteData,
    export_files,
    load_site_data,
)

LABELS = ["cat", "dog"]
SHAPE = ImageShape(channels=1, height=8, width=8)


def _png(width: int = 20, height: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width), 100, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (absent) pixel data never delivers."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _xml(images: str, *, encoding: str = "utf-8", doctype: str = "") -> bytes:
    text = (
        f'<?xml version="1.0" encoding="{encoding}"?>{doctype}'
        f"<annotations><version>1.1</version><meta/>{images}</annotations>"
    )
    return text.encode(encoding)


def _box_xml(**corners: str) -> bytes:
    attributes = {"xtl": "2", "ytl": "2", "xbr": "10", "ybr": "10"} | corners
    shown = " ".join(f'{k}="{v}"' for k, v in attributes.items())
    return _xml(
        f'<image id="0" name="a.png" width="20" height="20"><box label="cat" {shown}/></image>'
    )


def _coco(*, bbox: Any = (2, 2, 8, 8), file_name: str = "a.png") -> bytes:
    document = {
        "categories": [{"id": 1, "name": "cat"}],
        "images": [{"id": 1, "file_name": file_name, "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}],
    }
    return json.dumps(document).encode()


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _zipped(
    archive: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(archive, "w", compression) as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return archive


def _load(path: Path, task: str = "detection") -> SiteData:
    source = DataSource(cvat_export=CvatExportSource(path=str(path)))
    return load_site_data(site="site-a", source=source, task=task, labels=LABELS, shape=SHAPE)  # type: ignore[arg-type]


def _refused(path: Path, match: str, task: str = "detection") -> str:
    with pytest.raises(DataSourceError, match=match) as caught:
        _load(path, task)
    return str(caught.value)


def _reads(mode: str) -> bool:
    return not any(flag in mode for flag in "wax+")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the code under test opens for reading, through `open` or `Path.open`."""
    paths: list[str] = []
    real_open = io.open

    def recording(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and _reads(mode):
            paths.append(os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", recording)
    monkeypatch.setattr(builtins, "open", recording)
    return paths


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A readable image beside the export: the reader must never open it."""
    path = tmp_path / "secret.png"
    path.write_bytes(_png())
    return path


# 1. Names that leave the export.


@pytest.mark.parametrize("climb", ["relative", "absolute"])
@pytest.mark.parametrize("kind", ["cvat", "coco"])
def test_an_image_name_outside_the_export_is_refused_and_never_opened(
    tmp_path: Path, secret: Path, opened: list[str], climb: str, kind: str
) -> None:
    name = "../secret.png" if climb == "relative" else str(secret)
    files = (
        {"annotations.xml": _xml(f'<image id="0" name="{name}"><tag label="cat"/></image>')}
        if kind == "cvat"
        else {"annotations/instances_default.json": _coco(file_name=name)}
    )
    export = _folder(tmp_path / "export", files | {"images/a.png": _png()})

    message = _refused(
        export, "leaves the export", task="classification" if kind == "cvat" else "detection"
    )

    assert str(export) in message and repr(name) in message
    assert not any("secret" in path for path in opened)


def test_a_project_images_subset_that_climbs_out_of_the_export_is_refused_and_never_opened(
    tmp_path: Path, secret: Path, opened: list[str]
) -> None:
    # A project export reads images/<subset>/<name>: the subset is part of the path too.
    image = '<image id="0" name="secret.png" subset="../.."><tag label="cat"/></image>'
    export = _folder(tmp_path / "export", {"annotations.xml": _xml(image)})

    message = _refused(export, "leaves the export", task="classification")

    assert "'images/../../secret.png'" in message
    assert not any("secret" in path for path in opened)


def test_a_symlink_out_of_the_export_is_refused_and_never_opened(
    tmp_path: Path, secret: Path, opened: list[str]
) -> None:
    export = _folder(
        tmp_path / "export",
        {"annotations.xml": _xml('<image id="0" name="a.png"><tag label="cat"/></image>')},
    )
    (export / "images").mkdir()
    (export / "images" / "a.png").symlink_to(secret)

    _refused(export, r"'images/a.png' leads outside the export", task="classification")

    assert not any("secret" in path for path in opened)


def test_a_zip_image_name_that_climbs_out_of_the_exports_folder_is_refused(tmp_path: Path) -> None:
    archive = _zipped(
        tmp_path / "export.zip",
        {
            "task/annotations.xml": _xml(
                '<image id="0" name="../secret.png"><tag label="cat"/></image>'
            ),
            "task/images/a.png": _png(),
            "secret.png": _png(),
        },
    )

    _refused(
        archive, r"export.zip: file name '../secret.png' leaves the export", task="classification"
    )


# 2. Pixels.


@pytest.mark.parametrize(
    "side", [20_000, 8_000]
)  # beyond Pillow's own bomb check; beyond ours only
def test_an_image_with_too_many_pixels_is_refused(tmp_path: Path, side: int) -> None:
    export = _folder(
        tmp_path / "export",
        {
            "annotations.xml": _xml('<image id="0" name="a.png"><tag label="cat"/></image>'),
            "images/a.png": _png_claiming(side, side),
        },
    )

    message = _refused(
        export,
        rf"images/a.png.*over the limit of {export_files.MAX_IMAGE_PIXELS} pixels",
        task="classification",
    )

    assert str(export) in message and str(side * side) in message


# 3. Corrupt zip members.


def _flip_a_byte_of(archive: Path, member: str) -> None:
    with zipfile.ZipFile(archive) as zipped:
        info = zipped.getinfo(member)
    data = bytearray(archive.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("member", ["annotations.xml", "images/a.png"])
def test_a_zip_member_with_corrupt_data_is_refused(
    tmp_path: Path, compression: int, member: str
) -> None:
    images = "".join(f'<image id="{i}" name="a.png"><tag label="cat"/></image>' for i in range(40))
    archive = _zipped(
        tmp_path / "export.zip",
        {"annotations.xml": _xml(images), "images/a.png": _png(64, 64)},
        compression,
    )
    _flip_a_byte_of(archive, member)

    message = _refused(archive, rf"export.zip: member '{member}' is corrupt", task="classification")

    assert str(archive) in message


# 4. Nesting.


def test_coco_json_nested_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    deep = (
        b'{"info": '
        + b"[" * 200_000
        + b"]" * 200_000
        + b', "images": [], "annotations": [], "categories": []}'
    )
    export = _folder(tmp_path / "export", {"annotations/instances_default.json": deep})

    _refused(
        export, rf"instances_default.json nests deeper than {export_files.MAX_NESTING_DEPTH} levels"
    )


def test_coco_json_at_the_depth_limit_still_reads(tmp_path: Path) -> None:
    depth = export_files.MAX_NESTING_DEPTH - 1  # the document's own object is one level
    document = json.loads(_coco())
    document["info"] = json.loads("[" * depth + "]" * depth)
    export = _folder(
        tmp_path / "export",
        {
            "annotations/instances_default.json": json.dumps(document).encode(),
            "images/a.png": _png(),
        },
    )

    assert len(_load(export).samples) == 1


def test_xml_nested_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    deep = "<meta>" * 100_000 + "</meta>" * 100_000
    export = _folder(tmp_path / "export", {"annotations.xml": _xml(deep)})

    _refused(export, rf"annotations.xml nests deeper than {export_files.MAX_NESTING_DEPTH} levels")


# 5 and 6. Box numbers.


@pytest.mark.parametrize(
    ("bbox", "shown"),
    [
        ([float("nan"), 2, 8, 8], "nan"),
        ([2, 2, float("inf"), 8], "inf"),
        ("1234", "'1234'"),
        (["2", "2", "8", "8"], "'2'"),
        ([True, 2, 8, 8], "True"),
        ([2, 2, 8], r"\[2, 2, 8\]"),
        ([-50, -50, 10, 10], "-50"),
        ([2, 2, -8, 8], "-8"),
        ([1e38, 2, 8, 8], "1e\\+38"),
        ([2, 2, 8, 1e38], "1e\\+38"),
    ],
)
def test_a_coco_bbox_that_is_not_four_finite_numbers_inside_the_image_is_refused(
    tmp_path: Path, bbox: Any, shown: str
) -> None:
    export = _folder(
        tmp_path / "export",
        {"annotations/instances_default.json": _coco(bbox=bbox), "images/a.png": _png()},
    )

    message = _refused(export, rf"instances_default.json.*{shown}")

    assert "image 'a.png'" in message


@pytest.mark.parametrize(
    ("corners", "shown"),
    [
        ({"xtl": "nan"}, "xtl='nan'"),
        ({"ybr": "inf"}, "ybr='inf'"),
        ({"xtl": "0x10"}, "xtl='0x10'"),
        ({"xtl": "-30"}, "xtl=-30"),
        ({"xbr": "1e38"}, "1e\\+38"),
        ({"xtl": "12", "xbr": "4"}, r"xbr=4.0 .*before .*xtl=12.0"),
    ],
)
def test_a_cvat_box_that_is_not_finite_numbers_inside_the_image_is_refused(
    tmp_path: Path, corners: dict[str, str], shown: str
) -> None:
    export = _folder(
        tmp_path / "export", {"annotations.xml": _box_xml(**corners), "images/a.png": _png()}
    )

    message = _refused(export, rf"annotations.xml.*{shown}")

    assert "image 'a.png'" in message


def test_a_box_that_overhangs_the_edge_by_a_rounding_error_is_clipped(tmp_path: Path) -> None:
    export = _folder(
        tmp_path / "export",
        {"annotations.xml": _box_xml(xtl="-0.4", xbr="20.3"), "images/a.png": _png()},
    )

    samples = _load(export).samples

    assert isinstance(samples, DetectionImages)
    assert samples.boxes[0].tolist() == [pytest.approx([0.0, 0.8, 8.0, 4.0])]


# 7. Sizes.


def _declare_size(archive: Path, member: str, size: int) -> None:
    """Rewrite the member's uncompressed size in the central directory, which zipfile trusts."""
    data = bytearray(archive.read_bytes())
    entry = data.index(b"PK\x01\x02")
    while True:
        name_length = struct.unpack("<H", data[entry + 28 : entry + 30])[0]
        if data[entry + 46 : entry + 46 + name_length].decode() == member:
            data[entry + 24 : entry + 28] = struct.pack("<I", size)
            break
        entry = data.index(b"PK\x01\x02", entry + 4)
    archive.write_bytes(bytes(data))


def _classification_zip(archive: Path, image: bytes = b"") -> Path:
    return _zipped(
        archive,
        {
            "annotations.xml": _xml('<image id="0" name="a.png"><tag label="cat"/></image>'),
            "images/a.png": image or _png(),
        },
    )


@pytest.fixture
def members_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    real_open: Callable[..., Any] = zipfile.ZipFile.open

    def recording(self: zipfile.ZipFile, name: Any, mode: str = "r", **kwargs: Any) -> Any:
        if _reads(mode):
            names.append(name.filename if isinstance(name, zipfile.ZipInfo) else str(name))
        return real_open(self, name, mode, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording)
    return names


def test_a_zip_member_that_declares_half_a_gigabyte_is_refused_before_it_is_read(
    tmp_path: Path, members_opened: list[str]
) -> None:
    archive = _classification_zip(tmp_path / "export.zip")
    _declare_size(archive, "images/a.png", 512 << 20)

    _refused(
        archive,
        r"export.zip: member 'images/a.png' declares 536870912 bytes, over the limit",
        task="classification",
    )

    assert "images/a.png" not in members_opened


def test_a_zip_member_over_the_member_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_files, "MAX_MEMBER_BYTES", 4096)
    archive = _classification_zip(tmp_path / "export.zip", image=_png(64, 64) + bytes(5000))

    _refused(
        archive,
        r"member 'images/a.png' declares \d+ bytes, over the limit of 4096",
        task="classification",
    )


def test_a_zip_stream_that_outgrows_its_declared_size_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_files, "MAX_MEMBER_BYTES", 1 << 20)
    archive = _classification_zip(
        tmp_path / "export.zip", image=bytes(8 << 20)
    )  # 8 MiB of zeros: 8 KiB deflated
    _declare_size(archive, "images/a.png", 1000)

    _refused(archive, r"export.zip: member 'images/a.png' is corrupt", task="classification")


def test_a_zip_declaring_gigabytes_in_all_is_refused_before_any_member_is_read(
    tmp_path: Path, members_opened: list[str]
) -> None:
    archive = _classification_zip(tmp_path / "export.zip")
    _declare_size(archive, "images/a.png", 0xF000_0000)

    _refused(archive, r"export.zip declares \d+ bytes uncompressed in all, over the limit")

    assert members_opened == []


def test_a_folder_file_over_the_member_limit_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[str]
) -> None:
    monkeypatch.setattr(export_files, "MAX_MEMBER_BYTES", 4096)
    export = _folder(
        tmp_path / "export",
        {
            "annotations.xml": _xml('<image id="0" name="a.png"><tag label="cat"/></image>'),
            "images/a.png": bytes(5000),
        },
    )

    _refused(
        export, r"'images/a.png' holds 5000 bytes, over the limit of 4096", task="classification"
    )

    assert not any(path.endswith("a.png") for path in opened)


# 8. DTDs, in any encoding.


@pytest.mark.parametrize(
    ("codec", "declared"),
    [
        ("utf-8", "UTF-8"),
        ("utf-16", "UTF-16"),
        ("utf-16-be", "UTF-16BE"),
        ("latin-1", "ISO-8859-1"),
    ],
)
def test_a_dtd_is_refused_in_any_encoding(tmp_path: Path, codec: str, declared: str) -> None:
    doctype = '<!DOCTYPE annotations [<!ENTITY pet "cat">]>'
    images = '<image id="0" name="a.png"><tag label="&pet;"/></image>'
    raw = _xml(images, encoding=declared, doctype=doctype).decode(declared).encode(codec)
    export = _folder(tmp_path / "export", {"annotations.xml": raw, "images/a.png": _png()})

    _refused(export, r"annotations.xml: DTDs and entities are refused", task="classification")


def test_a_utf16_export_without_a_dtd_reads(tmp_path: Path) -> None:
    raw = _xml('<image id="0" name="a.png"><tag label="cat"/></image>', encoding="utf-16")
    export = _folder(tmp_path / "export", {"annotations.xml": raw, "images/a.png": _png()})

    assert len(_load(export, task="classification").samples) == 1
