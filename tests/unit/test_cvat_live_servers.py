"""The live-CVAT reader against both server generations, shaped as real servers answer:
keys sent as each generation wants, paged lists, per-chunk frame numbering, 403s; and its
frames checked as an export's are: damaged chunks, pixel and format bounds, bad boxes."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flotilla.api import CvatServerSource
from flotilla.data import DataSourceError, export_files
from flotilla.data.cvat_live import read_cvat_frames
from tests.unit.cvat_double import CvatDouble, FakeTask

OLD, CURRENT = "2.23.1", "2.40.1"
KEY = {"CVAT_ACCESS_TOKEN": "tok-789"}
PASSWORD = {"CVAT_USERNAME": "alice", "CVAT_PASSWORD": "s3cret"}


def _frames(count: int, *, first: int = 0) -> list[np.ndarray]:
    return [np.full((8, 16, 3), 3 * (first + i), np.uint8) for i in range(count)]


@pytest.fixture(params=[OLD, CURRENT])
def cvat(request: pytest.FixtureRequest) -> Iterator[CvatDouble]:
    double = CvatDouble(version=request.param, page_size=2)
    double.tasks[9] = FakeTask(
        id=9,
        labels=[(1, "cat")],
        frames=_frames(80),  # three chunks of 36, 36 and 8 frames
        tags=[(0, 1), (40, 1), (79, 1)],
        chunk_size=36,
    )
    for task_id in range(20, 25):  # a project whose tasks and labels fill three pages
        double.tasks[task_id] = FakeTask(
            id=task_id,
            labels=[(task_id, f"label-{task_id}")],
            frames=_frames(2, first=task_id),
            tags=[(0, task_id)],
            project_id=3,
        )
    double.tasks[30] = FakeTask(id=30, labels=[(2, "dog")], frames=_frames(2), owner="bob")
    double.tasks[31] = FakeTask(
        id=31, labels=[(2, "dog")], frames=_frames(2), owner="bob", project_id=4
    )
    double.start()
    yield double
    double.stop()


def _read(cvat: CvatDouble, tmp_path: Path, env: dict[str, str], **fields: Any) -> Any:
    source = CvatServerSource.model_validate({"url": cvat.url, "taskIds": [9]} | fields)
    return read_cvat_frames(site="a", source=source, cache_dir=tmp_path / "cache", environ=env)


def test_a_key_is_sent_as_each_generation_takes_it(
    cvat: CvatDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flotilla.data")
    scheme = "Bearer" if cvat.has_access_tokens else "Token"

    frames = _read(cvat, tmp_path, KEY)

    data = [a for r, a in zip(cvat.requests, cvat.authorizations, strict=True) if "/data" in r]
    assert len(frames) == 80 and set(data) == {scheme}
    assert cvat.requests.count("GET /api/users/self") == (1 if scheme == "Bearer" else 2)
    assert f"Authorization: {scheme}" in caplog.text and "tok-789" not in caplog.text


def test_a_wrong_key_is_refused_on_either_generation(cvat: CvatDouble, tmp_path: Path) -> None:
    with pytest.raises(
        DataSourceError, match=r"access token: the credentials were refused \(401\)"
    ):
        _read(cvat, tmp_path, {"CVAT_ACCESS_TOKEN": "nope"})
    assert not any("/api/tasks" in r for r in cvat.requests)


def test_a_project_is_read_across_pages_of_tasks_and_labels(
    cvat: CvatDouble, tmp_path: Path
) -> None:
    frames = _read(cvat, tmp_path, PASSWORD, taskIds=[], projectId=3)

    assert [f.name.split("/")[0] for f in frames[::2]] == [f"task-{i}" for i in range(20, 25)]
    assert [f.tags for f in frames[::2]] == [(f"label-{i}",) for i in range(20, 25)]
    assert any(r.startswith("GET /api/tasks?") and "page=3" in r for r in cvat.requests)
    assert any(r.startswith("GET /api/labels?") and "page=3" in r for r in cvat.requests)


def test_a_task_of_several_chunks_gives_each_frame_its_own_pixels(
    cvat: CvatDouble, tmp_path: Path
) -> None:
    frames = _read(cvat, tmp_path, PASSWORD)

    pixels = [int(np.asarray(f.load()).max()) for f in frames]
    chunks = sorted((tmp_path / "cache").glob("servers/*/tasks/9/chunks/*.zip"))
    with zipfile.ZipFile(chunks[1]) as second:
        names = second.namelist()
    assert pixels == [3 * k for k in range(80)]  # frame 40 is entry 4 of chunk 1
    assert [f.tags for f in frames if f.tags] == [("cat",)] * 3
    assert [c.name for c in chunks] == ["0.zip", "1.zip", "2.zip"]
    assert names[0] == "000000.png" and len(names) == 36


def test_jpeg_originals_are_read_close_to_their_pixels(cvat: CvatDouble, tmp_path: Path) -> None:
    cvat.tasks[9].original_format = "jpeg"

    frames = _read(cvat, tmp_path, PASSWORD)

    pixels = np.array([np.asarray(f.load()).mean() for f in frames])
    assert np.abs(pixels - 3 * np.arange(80)).max() <= 2


@pytest.mark.parametrize(
    ("fields", "where"), [({"taskIds": [30]}, "task 30"), ({"projectId": 4}, "project 4")]
)
def test_a_user_without_rights_is_told_it_is_forbidden(
    cvat: CvatDouble, tmp_path: Path, fields: dict[str, Any], where: str
) -> None:
    fields = {"taskIds": []} | fields

    with pytest.raises(
        DataSourceError, match=rf"^CVAT http://127\.0\.0\.1:\d+, {where}: forbidden \(403\)"
    ):
        _read(cvat, tmp_path, KEY, **fields)


# A live frame gets the checks an export's image and boxes get, and fails naming itself.


def _read_offline(cvat: CvatDouble, tmp_path: Path) -> Any:
    """Read task 9 from the cache alone, as a site does with updatePolicy never."""
    return _read(cvat, tmp_path, {}, updatePolicy="never")


def test_a_corrupt_cached_chunk_names_the_frame_and_the_folder_to_remove(
    cvat: CvatDouble, tmp_path: Path
) -> None:
    _read(cvat, tmp_path, PASSWORD)
    (task,) = (tmp_path / "cache").glob("servers/*/tasks/9")
    (task / "chunks" / "1.zip").write_bytes(b"not a zip: a disk that lost its last write")
    frames = _read_offline(cvat, tmp_path)

    with pytest.raises(DataSourceError) as refused:
        frames[40].load()  # entry 4 of chunk 1

    assert str(refused.value) == (
        f"CVAT {cvat.url}, task 9: frame 'frame_000040.png': cached chunk 1.zip, entry 4 "
        f"cannot be read (File is not a zip file); the cache may be damaged: remove {task} "
        "to fetch the task again"
    )
    assert int(np.asarray(frames[0].load()).max()) == 0  # chunk 0 is intact


def test_a_frame_over_the_pixel_bound_of_exports_is_refused_before_decoding(
    cvat: CvatDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_files, "MAX_IMAGE_PIXELS", 100)  # the frames are 16x8 = 128
    frames = _read(cvat, tmp_path, PASSWORD)

    with pytest.raises(
        DataSourceError,
        match=rf"^CVAT {cvat.url}, task 9: image 'frame_000000.png' has 16x8 = 128 pixels, "
        "over the limit of 100 pixels$",
    ):
        frames[0].load()


def test_a_frame_in_a_format_exports_refuse_is_refused(cvat: CvatDouble, tmp_path: Path) -> None:
    cvat.tasks[9].original_format = "ppm"  # Pillow reads it; no camera or CVAT export writes it
    frames = _read(cvat, tmp_path, PASSWORD)

    with pytest.raises(
        DataSourceError, match=rf"^CVAT {cvat.url}, task 9: cannot read image 'frame_000000.ppm'"
    ):
        frames[0].load()


@pytest.mark.parametrize(
    ("points", "refused"),
    [
        (
            [1.0, float("nan"), 4.0, 4.0],
            r"a rectangle of frame 'frame_000001.png': points \[1.0, nan, 4.0, 4.0\] hold a "
            "number that is not finite",
        ),
        ([4.0, 1.0, 2.0, 4.0], r"a rectangle of frame 'frame_000001.png': xbr=2.0 lies before"),
        ([2.0, 2.0, 40.0, 6.0], r"frame 'frame_000001.png': box .* reaches past the 16x8 image"),
    ],
    ids=["nan", "reversed", "past-the-edge"],
)
def test_a_box_exports_would_refuse_is_refused_naming_the_task_and_frame(
    cvat: CvatDouble, tmp_path: Path, points: list[float], refused: str
) -> None:
    # The server's JSON is decoded by a parser that takes NaN: it would reach the detector.
    cvat.tasks[40] = FakeTask(id=40, labels=[(5, "car")], frames=_frames(2), boxes=[(1, 5, points)])

    with pytest.raises(DataSourceError, match=rf"^CVAT {cvat.url}, task 40: {refused}"):
        for frame in _read(cvat, tmp_path, PASSWORD, taskIds=[40]):
            frame.load()
