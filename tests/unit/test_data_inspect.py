"""`flotilla data inspect`: a site's data read exactly as its client would, counted and judged."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from flotilla.api import load_job
from flotilla.cli import main
from flotilla.data import ImageShape, LabelledImages, load_site_data, split_train_holdout
from flotilla.data.cvat_writer import write_cvat_detection_export, write_cvat_images_export
from flotilla.data.inspection_target import (
    DEFAULT_SEED,
    DEFAULT_VALIDATION_FRACTION,
    EXPORT_ONLY_SHAPE,
)
from tests.unit.cvat_double import CvatDouble, FakeTask
from tests.unit.cvat_exports_2x import (
    Task,
    frame,
    write_coco_export,
    write_project_export,
    zipped,
)

JOB_LABELS = ["cat", "dog", "bird"]


def _pixels(value: int) -> np.ndarray:
    return np.full((6, 6, 3), value, np.uint8)


def _tags(folder: Path, tags: Sequence[tuple[str, str | None]]) -> Path:
    """A CVAT for images 1.1 export with one tag per frame: (label, subset)."""
    return write_cvat_images_export(
        folder,
        labels=sorted({label for label, _ in tags}),
        samples=((_pixels(10 * i), label, subset) for i, (label, subset) in enumerate(tags)),
        task_name="inspect-test",
    )


# 10 frames: their "kitty" is the job's "cat"; "tree" is no job label; no "bird" anywhere.
SITE_A_TAGS: list[tuple[str, str | None]] = [
    *[("kitty", "Train")] * 4,
    *[("dog", "Train")] * 3,
    ("tree", "Train"),
    ("kitty", "Validation"),
    ("dog", "Validation"),
]


def _job(tmp_path: Path, **spec: Any) -> Path:
    document = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "pets"},
        "spec": {
            "rounds": 1,
            "labels": JOB_LABELS,
            "model": {"name": "cnn-small", "input": {"channels": 3, "height": 8, "width": 8}},
            "sites": [
                {
                    "name": "site-a",
                    "data": {
                        "cvatExport": {"path": "exports/site-a"},
                        "labelAliases": {"kitty": "cat"},
                    },
                },
                {"name": "site-b", "data": {"cvatExport": {"path": "exports/site-b"}}},
            ],
        }
        | spec,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def site_a(tmp_path: Path) -> Path:
    return _tags(tmp_path / "exports" / "site-a", SITE_A_TAGS)


def _inspect(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["data", "inspect", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = _inspect(capsys, *argv, "--json")
    facts: dict[str, Any] = json.loads(out)
    return code, facts


# --- a site of a job ---------------------------------------------------------------------


def test_a_site_of_a_job_is_read_with_its_aliases_and_the_mismatch_is_printed(
    tmp_path: Path, site_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path)

    code, out, _ = _inspect(capsys, "site-a", "--job", str(job))

    assert code == 0
    assert f"CVAT export {site_a}" in out
    assert "kitty -> cat" in out  # the alias used
    assert "tree (1 annotation)" in out  # a site label the job lacks
    assert "missing at this site: bird" in out  # a job label the site lacks
    assert "hold-out: the Validation subset" in out
    assert "7 train, 2 hold-out" in out
    assert "the client can train on this" in out


def test_the_numbers_are_load_site_data_s_for_the_same_source(
    tmp_path: Path, site_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = _job(tmp_path, training={"validationFraction": 0.3}, seed=5)
    job = load_job(job_file)
    data = load_site_data(
        site="site-a",
        source=job.site_data("site-a"),
        task=job.spec.task,
        labels=job.spec.labels,
        shape=ImageShape(channels=3, height=8, width=8),
    )
    train, holdout = split_train_holdout(data.samples, validation_fraction=0.3, seed=5)

    code, facts = _json(capsys, "site-a", "--job", str(job_file))

    assert code == 0
    assert facts["labelReport"] == data.report.as_metrics()
    assert facts["split"]["train"] == len(train) and facts["split"]["holdout"] == len(holdout)
    per_label = {name: counts["frames"] for name, counts in facts["labels"].items()}
    assert isinstance(data.samples, LabelledImages)
    found = np.bincount(data.samples.labels.numpy(), minlength=3).tolist()
    assert per_label == dict(zip(JOB_LABELS, found, strict=True))
    subsets = {row["subset"]: row["frames"] for row in facts["subsets"]}
    assert subsets == {s: data.samples.subsets.count(s) for s in set(data.samples.subsets)}


def test_without_a_validation_subset_the_seeded_split_is_shown_as_the_client_makes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tags(tmp_path / "exports" / "site-b", [("cat", None)] * 6 + [("dog", None)] * 6)
    job_file = _job(tmp_path, training={"validationFraction": 0.25}, seed=3)
    data = load_site_data(
        site="site-b",
        source=load_job(job_file).site_data("site-b"),
        task="classification",
        labels=JOB_LABELS,
        shape=ImageShape(channels=3, height=8, width=8),
    )
    train, holdout = split_train_holdout(data.samples, validation_fraction=0.25, seed=3)

    code, facts = _json(capsys, "site-b", "--job", str(job_file))

    assert code == 0
    assert facts["split"] == {
        "by": "seeded",
        "validationFraction": 0.25,
        "seed": 3,
        "train": len(train),
        "holdout": len(holdout),
    }
    assert isinstance(holdout, LabelledImages)
    held_out = np.bincount(holdout.labels.numpy(), minlength=3).tolist()
    assert [facts["labels"][name]["holdout"] for name in JOB_LABELS] == held_out


def test_a_path_with_a_job_and_a_site_reads_it_as_that_site_s_client_with_data_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = _tags(tmp_path / "copy", SITE_A_TAGS)
    job = _job(tmp_path)

    code, facts = _json(capsys, str(elsewhere), "--job", str(job), "--site", "site-a")

    assert code == 0
    assert facts["source"] == f"CVAT export {elsewhere}"
    assert facts["labelReport"]["aliasedLabels"] == {"kitty": "cat"}


def test_a_folder_here_named_like_a_site_is_read_as_a_path_and_said_so(
    tmp_path: Path,
    site_a: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = _job(tmp_path)
    monkeypatch.chdir(site_a.parent)

    code, facts = _json(capsys, "site-a", "--job", str(job))

    assert code == 0
    assert facts["source"] == "CVAT export site-a"
    assert facts["labelReport"]["ignoredLabels"] == {"kitty": 5, "tree": 1}  # no aliases
    assert "add --site site-a" in facts["notes"][0]


def test_a_live_cvat_site_is_read_with_the_job_s_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cvat = CvatDouble()
    cvat.tasks[7] = FakeTask(
        id=7,
        labels=[(11, "cat"), (12, "dog")],
        frames=[np.full((8, 8, 3), 30 * i, np.uint8) for i in range(4)],
        tags=[(0, 11), (1, 12), (2, 11), (3, 12)],
    )
    cvat.start()
    try:
        monkeypatch.setenv("CVAT_USERNAME", "alice")
        monkeypatch.setenv("CVAT_PASSWORD", "s3cret")
        live = {"cvat": {"url": cvat.url, "taskIds": [7], "cacheDir": str(tmp_path / "cache")}}
        job = _job(tmp_path, sites=[{"name": "site-c", "data": live}])

        code, out, err = _inspect(capsys, "site-c", "--job", str(job))
    finally:
        cvat.stop()

    assert code == 0, out + err
    assert f"CVAT {cvat.url}, tasks 7" in out
    assert "4 used" in out
    assert "s3cret" not in out + err


# --- an export on its own --------------------------------------------------------------


def test_an_export_without_a_job_is_read_with_its_own_labels(
    tmp_path: Path, site_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, facts = _json(capsys, str(site_a))

    assert code == 0
    assert facts["job"] is None
    assert facts["task"] == "classification"  # tags were found
    assert list(facts["labels"]) == ["dog", "kitty", "tree"]
    assert {n: c["frames"] for n, c in facts["labels"].items()} == {"dog": 4, "kitty": 5, "tree": 1}
    assert facts["split"]["by"] == "validationSubset"
    assert facts["labelReport"]["ignoredLabels"] == {}


def test_an_export_of_rectangles_without_a_job_is_a_detection_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boxes = [("car", 0.0, 0.0, 3.0, 3.0), ("car", 2.0, 2.0, 5.0, 5.0), ("bus", 1.0, 1.0, 4.0, 4.0)]
    export = write_cvat_detection_export(
        tmp_path / "boxes",
        labels=["car", "bus"],
        samples=[(_pixels(0), boxes, None), (_pixels(50), boxes[:1], None)],
        task_name="boxes",
    )

    code, out, _ = _inspect(capsys, str(export))

    assert code == 0
    assert "task detection (assumed: no tags, rectangles)" in out
    code, facts = _json(capsys, str(export))
    assert facts["labels"]["car"] | {"train": 0, "holdout": 0} == {
        "frames": 2,
        "annotations": 3,
        "train": 0,
        "holdout": 0,
    }


def test_the_digits_example_reads_the_same_with_and_without_its_job(
    digits_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "digits.yaml"
    example = yaml.safe_load(Path("examples/digits.yaml").read_text())
    example["spec"]["sites"] = [
        {"name": "site-a", "data": {"cvatExport": {"path": str(digits_dir / "site-a")}}}
    ]
    example["spec"].pop("evaluation")
    example["spec"]["clients"]["minClients"] = 1
    job.write_text(yaml.safe_dump(example))

    code_alone, alone = _json(capsys, str(digits_dir / "site-a"))
    code_job, with_job = _json(capsys, "site-a", "--job", str(job))

    assert code_alone == code_job == 0
    assert with_job["job"] == "digits" and with_job["input"] == {
        "channels": 1,
        "height": 8,
        "width": 8,
    }
    assert alone["split"] == with_job["split"]  # the job's split settings are the defaults
    found = {n: c["frames"] for n, c in alone["labels"].items() if c["frames"]}
    assert found == {n: c["frames"] for n, c in with_job["labels"].items() if c["frames"]}


# --- exit 1: the client could not train on it -------------------------------------------


def test_an_export_with_no_usable_frames_exits_1_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = _tags(tmp_path / "exports" / "site-b", [("horse", None)] * 3)
    job = _job(tmp_path)

    code, out, _ = _inspect(capsys, "site-b", "--job", str(job))

    assert code == 1
    assert f"CVAT export {export}" in out
    assert "no annotated frames" in out
    assert "the client cannot train on this" in out


def test_a_missing_image_exits_1_naming_the_file(
    tmp_path: Path, site_a: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site_a / "images" / "frame_000003.png").unlink()

    code, facts = _json(capsys, str(site_a))

    assert code == 1
    assert facts["ready"] is False
    assert "frame_000003.png" in facts["error"] and str(site_a) in facts["error"]


def test_a_validation_subset_holding_every_frame_leaves_nothing_to_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tags(tmp_path / "exports" / "site-b", [("cat", "Validation"), ("dog", "Validation")])
    job = _job(tmp_path)

    code, facts = _json(capsys, "site-b", "--job", str(job))

    assert code == 1
    assert facts["split"]["train"] == 0
    assert any("nothing to train on" in p["message"] for p in facts["problems"])


# --- exports as a CVAT 2.2x server writes them --------------------------------------------


def test_a_2x_project_zip_is_read_with_each_task_s_subset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = [
        Task(1, "day", "Train", [frame(0, 40, tags=["cat"]), frame(1, 60, tags=["dog"])]),
        Task(2, "night", "Validation", [frame(0, 200, tags=["dog"])]),  # a shared file name
    ]
    folder = write_project_export(
        tmp_path / "project", project_id=5, tasks=tasks, labels=["cat", "dog"]
    )
    export = zipped(folder)

    code, facts = _json(capsys, str(export))

    assert code == 0
    assert facts["task"] == "classification"
    assert facts["subsets"] == [
        {"subset": "Train", "frames": 2},
        {"subset": "Validation", "frames": 1},
    ]
    split = facts["split"]
    assert (split["by"], split["train"], split["holdout"]) == ("validationSubset", 2, 1)


def test_a_2x_coco_export_of_a_tag_task_exits_1_saying_what_to_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = Task(3, "tags", "", [frame(0, 40, tags=["cat"]), frame(1, 60, tags=["dog"])])
    export = zipped(write_coco_export(tmp_path / "coco", tasks=[task], labels=["cat", "dog"]))

    code, out, _ = _inspect(capsys, str(export))

    assert code == 1
    assert str(export) in out
    assert "export the task as 'CVAT for images 1.1'" in " ".join(out.split())


# --- a live site that fails ----------------------------------------------------------------


@pytest.mark.parametrize("failure", ["forbidden", "unreachable"])
def test_a_failing_live_site_exits_1_naming_its_server_and_task(
    failure: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cvat = CvatDouble()
    cvat.tasks[30] = FakeTask(id=30, labels=[(11, "cat")], frames=[_pixels(0)], owner="bob")
    cvat.start()
    url = cvat.url
    if failure == "unreachable":
        cvat.stop()  # nothing listens on its port any more
    monkeypatch.setenv("CVAT_USERNAME", "alice")
    monkeypatch.setenv("CVAT_PASSWORD", "s3cret")
    live = {"cvat": {"url": url, "taskIds": [30], "cacheDir": str(tmp_path / "cache")}}
    job = _job(tmp_path, sites=[{"name": "site-c", "data": live}])
    try:
        code, out, err = _inspect(capsys, "site-c", "--job", str(job))
    finally:
        if failure != "unreachable":
            cvat.stop()

    said = " ".join(out.split())
    assert code == 1, out + err
    if failure == "forbidden":
        assert f"site site-c: CVAT {url}, task 30: forbidden (403)" in said
    else:  # the server is named; no task was reached
        assert f"site site-c: CVAT {url}" in said and "unreachable" in said
    assert "the client cannot train on this" in said
    assert "s3cret" not in out + err


# --- exit 2: bad arguments ---------------------------------------------------------------


@pytest.fixture
def job_file(tmp_path: Path, site_a: Path) -> Iterator[Path]:
    yield _job(tmp_path)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["no-such-dir/export.zip"], "no-such-dir/export.zip: no such export"),
        (["site-a"], "a site name needs --job"),
        (["site-z", "--job", "{job}"], "site 'site-z' is not listed"),
        (["{export}", "--job", "{job}", "--task", "detection"], "--task"),
        (["{export}", "--site", "site-a"], "--site needs --job"),
        (["site-a", "--job", "{job}", "--site", "site-b"], "--site"),
        (["{export}", "--job", "{tmp}/absent.yaml"], "file not found"),
        (["{export}", "--job", "{tmp}/bad.yaml"], "spec.rounds"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(
    argv: list[str],
    said: str,
    tmp_path: Path,
    job_file: Path,
    site_a: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = yaml.safe_load(job_file.read_text())
    bad["spec"]["rounds"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    filled = [a.format(job=job_file, export=site_a, tmp=tmp_path) for a in argv]

    code, out, err = _inspect(capsys, *filled)

    assert code == 2
    assert said in err
    assert out == ""


def test_help_says_what_is_assumed_without_a_job(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["data", "inspect", "--help"])

    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the label names found in the export" in text
    assert "classification if any frame has a tag, else detection" in text
    assert "exit status: 0" in text
    shape = EXPORT_ONLY_SHAPE
    assert f"decoded at {shape.channels}x{shape.height}x{shape.width}" in text
    assert f"(validationFraction {DEFAULT_VALIDATION_FRACTION}, seed {DEFAULT_SEED})" in text
