"""The exports a CVAT 2.2x server really writes, read as a client reads them: a project
export's per-subset images, a task export's subset in its <meta>, COCO 1.0 without tags,
and label errors that name the source they came from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flotilla.api import CvatExportSource, CvatServerSource, DataSource
from flotilla.data import (
    DataSourceError,
    DetectionImages,
    ImageShape,
    LabelledImages,
    SiteData,
    load_site_data,
    split_train_holdout,
)
from flotilla.data.site import describe_source
from tests.unit.cvat_double import CvatDouble, FakeTask
from tests.unit.cvat_exports_2x import (
    Frame,
    Task,
    frame,
    write_coco_export,
    write_project_export,
    write_task_export,
    zipped,
)

LABELS = ["cat", "dog"]
SHAPE = ImageShape(channels=1, height=8, width=8)


def as_folder(folder: Path) -> Path:
    return folder


PACKAGINGS = pytest.mark.parametrize("packed", [as_folder, zipped], ids=["folder", "zip"])


def _load(path: Path, *, task: str = "classification") -> SiteData:
    source = DataSource(cvat_export=CvatExportSource(path=str(path)))
    return load_site_data(site="site-a", source=source, task=task, labels=LABELS, shape=SHAPE)  # type: ignore[arg-type]


def _classification(path: Path) -> LabelledImages:
    samples = _load(path).samples
    assert isinstance(samples, LabelledImages)
    return samples


# CVAT for images 1.1: a project export.


@PACKAGINGS
def test_a_project_export_reads_each_subsets_own_image_under_a_shared_name(
    tmp_path: Path, packed: Callable[[Path], Path]
) -> None:
    tasks = [
        Task(1, "train", "Train", [frame(0, 40, tags=["cat"]), frame(1, 60, tags=["cat"])]),
        Task(2, "check", "Validation", [frame(0, 200, tags=["dog"])]),  # frame_000000.png again
    ]
    export = packed(
        write_project_export(tmp_path / "project", project_id=5, tasks=tasks, labels=LABELS)
    )

    data = _classification(export)
    train, holdout = split_train_holdout(data, validation_fraction=0.5, seed=0)

    assert data.subsets == ("Train", "Train", "Validation")
    assert data.labels.tolist() == [0, 0, 1]
    # Each frame_000000.png is its own task's image: 40 in Train, 200 in Validation.
    assert [round(float(v) * 255) for v in data.images.amax(dim=(1, 2, 3))] == [40, 60, 200]
    assert holdout.labels.tolist() == [1]
    assert round(float(holdout.images.max()) * 255) == 200
    assert len(train) == 2


def test_a_project_task_without_a_subset_is_read_from_images_default(tmp_path: Path) -> None:
    tasks = [
        Task(1, "plain", "", [frame(0, 90, tags=["cat"])]),
        Task(2, "check", "Validation", [frame(0, 10, tags=["dog"])]),
    ]
    export = write_project_export(tmp_path / "project", project_id=5, tasks=tasks, labels=LABELS)

    data = _classification(export)

    assert (export / "images" / "default" / "frame_000000.png").is_file()
    assert data.subsets == (None, "Validation")  # CVAT's "default" is no subset
    assert round(float(data.images[0].max()) * 255) == 90


def test_a_project_image_missing_from_its_subset_folder_names_where_it_was_looked_for(
    tmp_path: Path,
) -> None:
    tasks = [Task(1, "train", "Train", [frame(0, 40, tags=["cat"])])]
    export = write_project_export(tmp_path / "project", project_id=5, tasks=tasks, labels=LABELS)
    (export / "images" / "Train" / "frame_000000.png").unlink()

    with pytest.raises(DataSourceError, match=r"image 'frame_000000.png' is listed but its file"):
        _load(export)

    with pytest.raises(DataSourceError) as refused:
        _load(export)
    looked = "'images/Train/frame_000000.png', 'images/frame_000000.png', 'frame_000000.png'"
    assert f"(looked for {looked})" in str(refused.value)


# CVAT for images 1.1: a task (or job) export.


@PACKAGINGS
@pytest.mark.parametrize("meta", ["task", "job"])
def test_a_task_exports_subset_in_its_meta_is_every_frames_subset_and_the_hold_out(
    tmp_path: Path, packed: Callable[[Path], Path], meta: Any
) -> None:
    task = Task(
        3, "check", "Validation", [frame(i, 20 * i, tags=[LABELS[i % 2]]) for i in range(3)]
    )
    export = packed(write_task_export(tmp_path / "task", task=task, labels=LABELS, meta=meta))

    data = _classification(export)
    train, holdout = split_train_holdout(data, validation_fraction=0.5, seed=0)

    assert data.subsets == ("Validation",) * 3
    assert (len(train), len(holdout)) == (0, 3)  # CVAT's subset, not a seeded split
    assert holdout.labels.tolist() == [0, 1, 0]


def test_a_task_export_without_a_subset_is_split_by_seed(tmp_path: Path) -> None:
    task = Task(3, "plain", "", [frame(i, 20 * i, tags=["cat"]) for i in range(4)])
    export = write_task_export(tmp_path / "task", task=task, labels=LABELS)

    data = _classification(export)
    train, holdout = split_train_holdout(data, validation_fraction=0.5, seed=0)

    assert "<subset>default</subset>" in (export / "annotations.xml").read_text()
    assert data.subsets == (None,) * 4
    assert (len(train), len(holdout)) == (2, 2)


# COCO 1.0.


@PACKAGINGS
@pytest.mark.parametrize("under_subset", [True, False], ids=["images-default", "images"])
def test_cvats_coco_export_of_a_tag_task_is_refused_saying_why_and_what_to_export(
    tmp_path: Path, packed: Callable[[Path], Path], under_subset: bool
) -> None:
    task = Task(3, "tags", "", [frame(i, 50, tags=["cat"]) for i in range(2)])
    folder = write_coco_export(
        tmp_path / "coco", tasks=[task], labels=LABELS, images_under_subset=under_subset
    )
    export = packed(folder)

    with pytest.raises(DataSourceError) as refused:
        _load(export)

    message = str(refused.value)
    assert message.startswith(f"site site-a: COCO export {export}")
    assert "annotations/instances_default.json" in message
    assert "CVAT's COCO 1.0 export carries no tags" in message
    assert "'CVAT for images 1.1'" in message


@PACKAGINGS
@pytest.mark.parametrize("under_subset", [True, False], ids=["images-default", "images"])
def test_cvats_coco_detection_export_reads_its_boxes(
    tmp_path: Path, packed: Callable[[Path], Path], under_subset: bool
) -> None:
    pixels = np.full((16, 16), 70, np.uint8)
    boxed = Frame("frame_000000.png", pixels, rectangles=(("dog", 2.0, 4.0, 10.0, 12.0),))
    empty = Frame("frame_000001.png", pixels)
    folder = write_coco_export(
        tmp_path / "coco",
        tasks=[Task(3, "boxes", "", [boxed, empty])],
        labels=LABELS,
        images_under_subset=under_subset,
    )

    data = _load(packed(folder), task="detection")

    assert isinstance(data.samples, DetectionImages)
    assert data.samples.boxes[0].tolist() == [[1.0, 2.0, 5.0, 6.0]]  # 16 px to 8: halved
    assert data.samples.labels[0].tolist() == [1]
    assert data.samples.subsets == (None,)
    assert data.report.unannotated == 1


@PACKAGINGS
def test_a_coco_project_export_reads_each_subsets_own_image_under_a_shared_name(
    tmp_path: Path, packed: Callable[[Path], Path]
) -> None:
    def boxed(value: int, label: str) -> Frame:
        pixels = np.full((8, 8), value, np.uint8)
        return Frame("frame_000000.png", pixels, rectangles=((label, 1.0, 1.0, 6.0, 6.0),))

    tasks = [
        Task(1, "a", "Train", [boxed(40, "cat")]),
        Task(2, "b", "Validation", [boxed(200, "dog")]),
    ]
    export = packed(write_coco_export(tmp_path / "coco", tasks=tasks, labels=LABELS))

    data = _load(export, task="detection")

    assert isinstance(data.samples, DetectionImages)
    assert data.samples.subsets == ("Train", "Validation")
    assert [t.tolist() for t in data.samples.labels] == [[0], [1]]
    assert [round(float(i.max()) * 255) for i in data.samples.images] == [40, 200]


# Errors name the source.


def test_a_label_mismatch_names_the_export(tmp_path: Path) -> None:
    task = Task(3, "fish", "", [frame(0, 50, tags=["fish"])])
    export = zipped(write_task_export(tmp_path / "task", task=task, labels=["fish"]))

    with pytest.raises(DataSourceError) as refused:
        _load(export)

    assert str(refused.value) == (
        f"site site-a: no annotated frames (tags) with the job's labels among 1 frames of "
        f"CVAT export {export}; expected some of ['cat', 'dog'], found others: ['fish']"
    )


def test_an_alias_to_no_job_label_names_the_export(tmp_path: Path) -> None:
    export = write_task_export(
        tmp_path / "task", task=Task(3, "t", "", [frame(0, 50, tags=["cat"])]), labels=LABELS
    )
    source = DataSource(
        cvat_export=CvatExportSource(path=str(export)), label_aliases={"kitty": "lion"}
    )

    with pytest.raises(DataSourceError, match=rf"^site site-a: CVAT export {export}: labelAliases"):
        load_site_data(
            site="site-a", source=source, task="classification", labels=LABELS, shape=SHAPE
        )


@pytest.mark.parametrize("url_in", ["spec", "credentials"])
def test_a_label_mismatch_names_the_cvat_server_and_task(tmp_path: Path, url_in: str) -> None:
    pixels = np.full((8, 8, 3), 50, np.uint8)
    cvat = CvatDouble()
    cvat.tasks[8] = FakeTask(id=8, labels=[(21, "cat")], frames=[pixels], tags=[(0, 21)])
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "username").write_text("alice")
    (secrets / "password").write_text("s3cret")
    cvat.start()
    try:
        server = {"taskIds": [8], "credentials": {"path": str(secrets)}}
        if url_in == "spec":
            server["url"] = cvat.url
        else:  # the message names the server the reader found in the credentials
            (secrets / "url").write_text(cvat.url)
        source = DataSource(cvat=CvatServerSource.model_validate(server))
        with pytest.raises(DataSourceError) as refused:
            load_site_data(
                site="site-a",
                source=source,
                task="classification",
                labels=["dog"],
                shape=SHAPE,
                cache_dir=tmp_path / "cache",
            )
    finally:
        cvat.stop()

    assert f"among 1 frames of CVAT {cvat.url}, task 8; " in str(refused.value)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (
            {"url": "https://cvat.a.internal", "taskIds": [7]},
            "CVAT https://cvat.a.internal, task 7",
        ),
        (
            {"url": "https://cvat.a.internal", "taskIds": [7, 8]},
            "CVAT https://cvat.a.internal, tasks 7, 8",
        ),
        ({"url": "http://cvat:8080/", "projectId": 12}, "CVAT http://cvat:8080/, project 12"),
        ({"taskIds": [7]}, "CVAT https://cvat.b.internal, task 7"),
    ],
)
def test_a_live_cvat_source_is_named_by_its_server_and_tasks(
    fields: dict[str, Any], named: str
) -> None:
    source = DataSource(cvat=CvatServerSource.model_validate(fields))
    # Where the reader found the URL: the spec's, else the credentials' (here cvat.b).
    read_at = fields.get("url", "https://cvat.b.internal")

    assert describe_source(source, server=read_at) == named


def test_a_live_cvat_source_never_shows_credentials_in_its_name() -> None:
    server = CvatServerSource.model_validate({"taskIds": [7]})
    # The spec refuses user:password@ in url; one that got past it is still redacted.
    leaked = server.model_copy(update={"url": "https://bob:pw@cvat.a.internal"})

    named = describe_source(DataSource(cvat=server).model_copy(update={"cvat": leaked}))
    # The credentials' url is not checked by the spec: the one read there is redacted too.
    from_credentials = describe_source(DataSource(cvat=server), server="https://bob:pw@cvat.b")

    assert named == "CVAT https://***@cvat.a.internal, task 7"
    assert from_credentials == "CVAT https://***@cvat.b, task 7"
