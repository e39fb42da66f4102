"""Mutated exports, generated: whatever the bytes, the export readers raise only DataSourceError.

Hypothesis flips, inserts and deletes bytes of a valid CVAT XML, a valid COCO JSON and a
valid zip export, splices in hostile fragments (a DTD, NaN, deep brackets, names that
climb, a huge size) and replaces COCO fields with arbitrary JSON. Each input is read the
way a client reads it, every frame's pixels included; any other exception fails the test.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from flotilla.api import CvatExportSource, DataSource  # noqa: E402
from flotilla.data import DataSourceError, ImageShape, load_site_data  # noqa: E402
from flotilla.data.exports import read_export  # noqa: E402

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HOSTILE = [
    b'<!DOCTYPE a [<!ENTITY b "c">]>',
    b"NaN",
    b"-1e400",
    b"1" * 5000,
    b"[" * 300,
    b"../../etc/passwd",
    b"/etc/passwd",
    b"\x00",
    b'"1234"',
    b"\xff\xfe",
    b"\xff\xff\xff\x7f",
]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), 100, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
CVAT_XML = (
    b'<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta/>'
    b'<image id="0" name="a.png" width="4" height="4" subset="Train"><tag label="cat"/>'
    b'<box label="cat" xtl="0.5" ytl="1" xbr="3" ybr="4"/></image></annotations>'
)
COCO = {
    "categories": [{"id": 1, "name": "cat"}],
    "images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 1, 3, 2]}],
}


def _zip_export() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr("task/annotations.xml", CVAT_XML, zipfile.ZIP_DEFLATED)
        zipped.writestr("task/images/a.png", PNG, zipfile.ZIP_STORED)
    return buffer.getvalue()


ZIP = _zip_export()


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """The base with a few bytes flipped, inserted or deleted, hostile fragments spliced in."""
    edit = st.tuples(
        st.integers(0, len(base)),
        st.sampled_from(["flip", "insert", "delete", "splice", "cut"]),
        st.integers(0, 255),
        st.sampled_from(HOSTILE),
    )
    return st.lists(edit, max_size=6).map(lambda edits: _apply(base, edits))


def _apply(base: bytes, edits: list[tuple[int, str, int, bytes]]) -> bytes:
    data = bytearray(base)
    for position, kind, value, fragment in edits:
        at = min(position, len(data))
        if kind == "flip" and at < len(data):
            data[at] ^= value or 1
        elif kind == "insert":
            data[at:at] = bytes([value])
        elif kind == "delete":
            del data[at : at + 1 + value % 8]
        elif kind == "splice":
            data[at:at] = fragment
        elif kind == "cut":
            del data[at:]
    return bytes(data)


def _reads_only_data_errors(files: dict[str, bytes]) -> None:
    """Write the export, read it as a client does; only DataSourceError may escape."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        source = root / "export.zip" if "export.zip" in files else root
        with contextlib.suppress(DataSourceError):
            for frame in read_export(source):
                frame.load()
        for task in ("classification", "detection"):
            with contextlib.suppress(DataSourceError):
                load_site_data(
                    site="fuzz",
                    source=DataSource(cvat_export=CvatExportSource(path=str(source))),
                    task=task,  # type: ignore[arg-type]
                    labels=["cat"],
                    shape=ImageShape(channels=1, height=4, width=4),
                )


@FUZZ
@given(xml=_mutations(CVAT_XML))
@example(xml=CVAT_XML.replace(b'"0.5"', b'"nan"'))
@example(xml=CVAT_XML.replace(b"<annotations>", b'<!DOCTYPE a [<!ENTITY b "c">]><annotations>'))
@example(xml=CVAT_XML.replace(b'name="a.png"', b'name="../../../../etc/passwd"'))
def test_mutated_cvat_xml_raises_only_data_errors(xml: bytes) -> None:
    _reads_only_data_errors({"annotations.xml": xml, "images/a.png": PNG})


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
        ),
        max_leaves=12,
    )


@FUZZ
@given(
    raw=_mutations(json.dumps(COCO).encode()),
    key=st.sampled_from(["images", "annotations", "categories"]),
    field=st.sampled_from(["id", "name", "file_name", "image_id", "category_id", "bbox"]),
    value=_json_values(),
)
@example(raw=b"[" * 200_000, key="images", field="id", value=None)
def test_mutated_coco_json_raises_only_data_errors(
    raw: bytes, key: str, field: str, value: Any
) -> None:
    document = json.loads(json.dumps(COCO))
    document[key][0][field] = value
    replaced = json.dumps(document).encode()
    for coco in (raw, replaced):
        _reads_only_data_errors(
            {"annotations/instances_default.json": coco, "images/default/a.png": PNG}
        )


@FUZZ
@given(archive=_mutations(ZIP))
def test_mutated_zip_exports_raise_only_data_errors(archive: bytes) -> None:
    _reads_only_data_errors({"export.zip": archive})
