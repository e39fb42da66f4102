"""`flotilla data export` against the CVAT double of both server generations: the saved zip
reads as the task reads live; failures, timeouts and refusals say what and where."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flotilla.api import CvatServerSource, DataSource
from flotilla.cli import main
from flotilla.data import ImageShape, load_site_data
from flotilla.data.cvat_live import read_cvat_frames
from flotilla.data.exports import read_export
from flotilla.data.frames import RawFrame
from tests.unit.cvat_double import CvatDouble, FakeTask

OLD, CURRENT = "2.23.1", "2.40.1"
KEY = {"CVAT_ACCESS_TOKEN": "tok-789"}
PASSWORD = {"CVAT_USERNAME": "alice", "CVAT_PASSWORD": "s3cret"}
SECRETS = ("s3cret", "tok-789")


def _frames(count: int, *, first: int = 0) -> list[np.ndarray]:
    return [np.full((8, 8, 3), 20 * (first + i), np.uint8) for i in range(count)]


@pytest.fixture(params=[OLD, CURRENT])
def cvat(request: pytest.FixtureRequest) -> Iterator[CvatDouble]:
    double = CvatDouble(version=request.param)
    double.tasks[9] = FakeTask(
        id=9,
        labels=[(1, "cat"), (2, "dog")],
        frames=_frames(5),
        tags=[(0, 1), (1, 2), (3, 1), (4, 2)],
        subset="Train",
    )
    double.tasks[12] = FakeTask(
        id=12,
        labels=[(5, "square")],
        frames=_frames(3),
        boxes=[(0, 5, [1.0, 1.0, 5.0, 6.0]), (2, 5, [0.0, 2.0, 3.0, 7.0])],
    )
    for task_id, subset in ((20, "Train"), (21, "Validation")):
        double.tasks[task_id] = FakeTask(
            id=task_id,
            labels=[(7, "cat"), (8, "dog")],
            frames=_frames(2, first=task_id % 10),
            tags=[(0, 7), (1, 8)],
            subset=subset,
            project_id=3,
        )
    double.tasks[30] = FakeTask(id=30, labels=[(2, "dog")], frames=_frames(2), owner="bob")
    double.start()
    yield double
    double.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("URL", "USERNAME", "PASSWORD", "ACCESS_TOKEN"):
        monkeypatch.delenv(f"CVAT_{name}", raising=False)
    yield monkeypatch


def _export(
    capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch, secrets: dict[str, str], *argv: str
) -> tuple[int, str, str]:
    for name, value in secrets.items():
        env.setenv(name, value)
    try:
        code = main(["data", "export", *argv])
    except SystemExit as exit:  # argparse's refusals
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _live(cvat: CvatDouble, tmp_path: Path, **fields: Any) -> list[RawFrame]:
    source = CvatServerSource.model_validate({"url": cvat.url} | fields)
    return read_cvat_frames(site="a", source=source, cache_dir=tmp_path / "cache")


def _facts(frames: list[RawFrame]) -> list[tuple[Any, ...]]:
    return [(f.subset, f.tags, f.boxes, np.asarray(f.load()).tobytes()) for f in frames]


def test_a_task_s_export_reads_as_the_task_reads_live(
    cvat: CvatDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "site-a.zip"

    code, out, _ = _export(capsys, env, KEY, "--task", "9", str(saved), "--url", cvat.url)

    posts = [r for r in cvat.requests if r.startswith("POST /api/tasks/9/dataset/export")]
    polls = [r for r in cvat.requests if r.startswith("GET /api/requests/")]
    assert code == 0 and f"cvatExport: {{path: {saved}, format: cvat-images-1.1}}" in out
    assert len(posts) == 1 and "format=CVAT+for+images+1.1" in posts[0]
    assert "save_images=true" in posts[0].lower() and "location=local" in posts[0]
    assert len(polls) == cvat.export_polls and "%26target%3Dtask%26" in polls[0]
    assert _facts(read_export(saved)) == _facts(_live(cvat, tmp_path, taskIds=[9]))
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == ["site-a.zip"]


def test_load_site_data_gives_the_same_samples_from_the_saved_zip_as_live(
    cvat: CvatDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "boxes.zip"
    code, _, _ = _export(capsys, env, PASSWORD, "--task", "12", str(saved), "--url", cvat.url)
    sources = [
        DataSource.model_validate({"cvatExport": {"path": str(saved)}}),
        DataSource.model_validate({"cvat": {"url": cvat.url, "taskIds": [12]}}),
    ]

    data = [
        load_site_data(
            site="a",
            source=source,
            task="detection",
            labels=["square"],
            shape=ImageShape(3, 8, 8),
            cache_dir=tmp_path / "cache",
        ).samples
        for source in sources
    ]

    offline, live = data
    assert code == 0 and len(offline) == 2  # the frames with a box
    assert bool((offline.images == live.images).all()) and offline.subsets == live.subsets
    assert [b.tolist() for b in offline.boxes] == [b.tolist() for b in live.boxes]  # type: ignore[union-attr]


@pytest.mark.parametrize("format", ["cvat-images-1.1", "coco-1.0"])
def test_a_project_s_export_keeps_each_task_s_subset(
    cvat: CvatDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: pytest.MonkeyPatch,
    format: str,
) -> None:
    cvat.tasks[20].tags, cvat.tasks[21].tags = [], []  # COCO carries boxes only
    cvat.tasks[20].boxes = [(0, 7, [0.0, 0.0, 4.0, 4.0])]
    cvat.tasks[21].boxes = [(1, 8, [2.0, 2.0, 6.0, 5.0])]
    saved = tmp_path / "project.zip"

    code, _, err = _export(
        capsys, env, KEY, "--project", "3", str(saved), "--url", cvat.url, "--format", format
    )

    offline = sorted(_facts(read_export(saved)), key=lambda fact: fact[3])
    live = sorted(_facts(_live(cvat, tmp_path, projectId=3)), key=lambda fact: fact[3])
    assert code == 0, err
    assert any(r.startswith("POST /api/projects/3/dataset/export") for r in cvat.requests)
    assert offline == live and {fact[0] for fact in offline} == {"Train", "Validation"}


def test_a_coco_export_of_a_tag_task_warns_that_coco_has_no_tags(
    cvat: CvatDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flotilla.data")

    code, _, _ = _export(
        capsys, env, KEY, "--task", "9", str(tmp_path / "t.zip"), "--url", cvat.url,
        "--format", "coco-1.0",
    )  # fmt: skip

    assert code == 0
    assert "task 9 has 4 tags, and CVAT's COCO 1.0 carries no tags" in caplog.text


def test_a_failed_export_names_the_request_and_the_server_s_message(
    cvat: CvatDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    cvat.export_failure = "Traceback (most recent call last):\n  ...\nOSError: disk full\n"

    secrets = KEY | {"CVAT_URL": cvat.url}  # the URL from the credentials

    code, out, err = _export(capsys, env, secrets, "--task", "9", str(tmp_path / "a.zip"))

    assert code == 1 and out == ""
    assert err.startswith(f"flotilla data export: CVAT {cvat.url}, task 9, export request ")
    assert "action=export&target=task&target_id=9&" in err
    assert err.rstrip().endswith("the export failed on the server: OSError: disk full")
    assert list(tmp_path.iterdir()) == []


def test_an_export_that_does_not_finish_in_time_is_given_up_leaving_nothing(
    cvat: CvatDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    cvat.export_polls = 10**6

    code, _, err = _export(
        capsys, env, KEY, "--task", "9", str(tmp_path / "a.zip"), "--url", cvat.url,
        "--timeout", "0.7",
    )  # fmt: skip

    assert code == 1 and "export request action=export&target=task&target_id=9&" in err
    assert "the export was still started after 0.7 s" in err and "--timeout" in err
    assert list(tmp_path.iterdir()) == []


def test_an_export_already_running_is_followed_or_said_to_be_running(
    cvat: CvatDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    cvat.export_polls = 10**6
    argv = ("--task", "9", str(tmp_path / "a.zip"), "--url", cvat.url)
    assert _export(capsys, env, KEY, *argv, "--timeout", "0.1")[0] == 1
    (asked,) = cvat.exports.values()
    cvat.export_polls = asked.polls + 2  # it finishes two answers later

    code, _, err = _export(capsys, env, KEY, *argv)

    if cvat.has_access_tokens:  # current servers name the running request in their 409
        assert code == 0 and (tmp_path / "a.zip").is_file()
    else:
        assert code == 1 and "the server is already making this export (409)" in err


def test_a_result_url_on_another_host_is_fetched_from_the_server_signed_in_to(
    cvat: CvatDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    cvat.result_host = "http://cvat.internal:8080"  # as a server behind a proxy names itself

    secrets = KEY | {"CVAT_URL": cvat.url}

    code, _, err = _export(capsys, env, secrets, "--task", "9", str(tmp_path / "a.zip"))

    assert code == 0, err
    assert any(r.startswith("GET /api/tasks/9/dataset/download?rq_id=") for r in cvat.requests)


def test_an_existing_file_is_kept_unless_forced_and_the_server_is_not_asked(
    cvat: CvatDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "a.zip"
    saved.write_text("an older export")
    argv = ("--task", "9", str(saved), "--url", cvat.url)

    code, _, err = _export(capsys, env, KEY, *argv)
    kept, asked = saved.read_text(), list(cvat.requests)
    forced, _, _ = _export(capsys, env, KEY, *argv, "--force")

    assert (code, kept, asked) == (2, "an older export", [])
    assert err.endswith(f": {saved} exists: give another name, or --force to replace it\n")
    assert forced == 0 and len(read_export(saved)) == 5


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--task", "30"], "task 30: forbidden (403): this user may not export it"),
        (["--project", "99"], "project 99: not found (404)"),
        (["--task", "9", "--credentials", "{creds}"], "task 9, export request"),
    ],
)
def test_no_password_or_key_is_ever_shown(
    cvat: CvatDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    argv: list[str],
    said: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = tmp_path / "creds"
    creds.write_text(f"CVAT_URL={cvat.url}\nCVAT_USERNAME=alice\nCVAT_PASSWORD=s3cret\n")
    cvat.export_failure = "OSError: disk full"
    argv = [a.replace("{creds}", str(creds)) for a in argv]

    code, out, err = _export(capsys, env, KEY, *argv, str(tmp_path / "a.zip"), "--url", cvat.url)

    shown = out + err + caplog.text
    assert code == 1 and said in err
    assert not any(secret in shown for secret in SECRETS)


@pytest.mark.parametrize(
    ("argv", "secrets", "said"),
    [
        ([], KEY, "one of the arguments --task --project is required"),
        (["--task", "9", "--project", "3"], KEY, "not allowed with argument"),
        (["--task", "9", "--format", "yolo"], KEY, "invalid choice: 'yolo'"),
        (["--task", "9", "--timeout", "0"], KEY, "must be a positive number"),
        (["--task", "0"], KEY, "must be at least 1"),
        (["--task", "9", "--url", "http://a:s3cret@cvat"], KEY, "--url holds credentials"),
        (["--task", "9"], {}, "no CVAT credentials in the environment"),
        (["--task", "9", "--credentials", "nowhere"], KEY, "nowhere does not exist"),
    ],
)
def test_bad_arguments_exit_2_before_the_server_is_asked(
    cvat: CvatDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: pytest.MonkeyPatch,
    argv: list[str],
    secrets: dict[str, str],
    said: str,
) -> None:
    env.setenv("CVAT_URL", cvat.url)

    code, _, err = _export(capsys, env, secrets, *argv, str(tmp_path / "a.zip"))

    assert code == 2 and said in err and "s3cret" not in err
    assert cvat.requests == []


@pytest.mark.parametrize(("name", "said"), [("", "is a folder"), ("no/a.zip", "does not exist")])
def test_a_file_that_cannot_be_written_exits_2(
    cvat: CvatDouble,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: pytest.MonkeyPatch,
    name: str,
    said: str,
) -> None:
    code, _, err = _export(capsys, env, KEY, "--task", "9", str(tmp_path / name), "--url", cvat.url)

    assert code == 2 and said in err and cvat.requests == []
