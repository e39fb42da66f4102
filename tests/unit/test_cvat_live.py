"""The live-CVAT path through the real cvat-sdk, against an HTTP double of CVAT's REST API."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flotilla.api import CvatServerSource, DataSource
from flotilla.data import DataSourceError, ImageShape, load_site_data
from flotilla.data.cvat_credentials import find_credentials
from flotilla.data.cvat_live import read_cvat_frames
from tests.unit.cvat_double import CvatDouble, FakeTask

LABELS = ["cat", "dog", "bird"]
PASSWORD_ENV = {"CVAT_USERNAME": "alice", "CVAT_PASSWORD": "s3cret"}


def _frames(count: int) -> list[np.ndarray]:
    return [np.full((8, 16, 3), 20 * i, np.uint8) for i in range(count)]


@pytest.fixture
def cvat() -> Iterator[CvatDouble]:
    double = CvatDouble()
    double.tasks[7] = FakeTask(
        id=7,
        labels=[(11, "cat"), (12, "hund"), (13, "tree")],
        frames=_frames(5),  # chunk size 2: three chunks
        tags=[(0, 11), (1, 12), (2, 13), (4, 11)],
        boxes=[(0, 12, [2.0, 2.0, 10.0, 6.0]), (3, 11, [0.0, 0.0, 16.0, 8.0])],
        subset="Validation",
        project_id=3,
    )
    double.tasks[8] = FakeTask(id=8, labels=[(11, "cat")], frames=_frames(2), project_id=3)
    double.start()
    yield double
    double.stop()


def _source(cvat: CvatDouble, **fields: Any) -> CvatServerSource:
    values: dict[str, Any] = {"url": cvat.url, "taskIds": [7]} | fields
    return CvatServerSource.model_validate(values)


def _read(
    cvat: CvatDouble, tmp_path: Path, env: dict[str, str] | None = None, **fields: Any
) -> Any:
    return read_cvat_frames(
        site="site-a",
        source=_source(cvat, **fields),
        cache_dir=tmp_path / "cache",
        environ=PASSWORD_ENV if env is None else env,
    )


def test_a_task_is_read_through_the_sdk_with_tags_boxes_and_subset(
    cvat: CvatDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flotilla.data.cvat_live")

    frames = _read(cvat, tmp_path)

    assert [f.tags for f in frames] == [("cat",), ("hund",), ("tree",), (), ("cat",)]
    assert [b.label for b in frames[0].boxes] == ["hund"]
    assert frames[3].boxes[0].xbr == 16.0 and frames[0].subset == "Validation"
    assert np.asarray(frames[2].load()).max() == 40  # pixels of frame 2 from chunk 1
    assert "runs server version 2.40.1" in caplog.text
    assert "s3cret" not in caplog.text
    assert "POST /api/auth/login" in cvat.requests
    assert any(r.startswith("GET /api/tasks/7/data/?") and "type=chunk" in r for r in cvat.requests)


def test_a_restarted_client_reads_from_its_cache(cvat: CvatDouble, tmp_path: Path) -> None:
    _read(cvat, tmp_path)
    cvat.requests.clear()

    again = _read(cvat, tmp_path)
    downloads = [r for r in cvat.requests if "/data" in r or "/annotations" in r]
    cvat.requests.clear()
    offline = _read(cvat, tmp_path, env={}, updatePolicy="never")

    assert len(again) == len(offline) == 5
    assert downloads == [] and cvat.requests == []  # "never": no network at all
    with pytest.raises(DataSourceError, match=r"task 7: not in the cache at .*updatePolicy"):
        _read(cvat, tmp_path, env={}, updatePolicy="never", url="http://127.0.0.1:9")


def test_a_changed_task_is_downloaded_again(cvat: CvatDouble, tmp_path: Path) -> None:
    _read(cvat, tmp_path)
    cvat.tasks[7].updated = "2024-06-01T10:00:00.000000Z"
    cvat.tasks[7].tags = [(0, 12)]
    cvat.requests.clear()

    frames = _read(cvat, tmp_path)

    assert frames[0].tags == ("hund",) and frames[4].tags == ()
    assert any("/annotations" in r for r in cvat.requests)


def test_site_data_from_cvat_maps_aliases_and_reports(
    cvat: CvatDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in PASSWORD_ENV.items():
        monkeypatch.setenv(key, value)
    source = DataSource(cvat=_source(cvat), label_aliases={"hund": "dog"})

    data = load_site_data(
        site="site-a",
        source=source,
        task="classification",
        labels=LABELS,
        shape=ImageShape(channels=3, height=4, width=8),
        cache_dir=tmp_path / "cache",
    )

    assert data.samples.labels.tolist() == [0, 1, 0]
    assert data.report.ignored == {"tree": 1}
    assert data.report.aliased == {"hund": "dog"} and data.report.missing == ("bird",)


def test_a_project_reads_all_its_tasks(cvat: CvatDouble, tmp_path: Path) -> None:
    frames = _read(cvat, tmp_path, taskIds=[], projectId=3)

    assert len(frames) == 7 and frames[-1].name.startswith("task-8/")


def test_an_access_token_works_and_an_old_server_is_accepted(
    cvat: CvatDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cvat.version = "2.21.2"  # its About lacks fields today's SDK requires
    caplog.set_level(logging.INFO, logger="flotilla.data.cvat_live")

    frames = _read(cvat, tmp_path, env={"CVAT_ACCESS_TOKEN": "tok-789"})

    assert len(frames) == 5
    assert "runs server version 2.21.2" in caplog.text
    assert "tok-789" not in caplog.text
    assert "POST /api/auth/login" not in cvat.requests


@pytest.mark.parametrize(
    ("env", "fields", "match"),
    [
        (
            {"CVAT_USERNAME": "alice", "CVAT_PASSWORD": "wrong"},
            {},
            r"signing in as user 'alice': the credentials were refused \(400\)",
        ),
        (
            {"CVAT_ACCESS_TOKEN": "nope"},
            {},
            r"signing in as access token: the credentials were refused \(401\)",
        ),
        (PASSWORD_ENV, {"taskIds": [99]}, r"task 99: not found \(404\)"),
        (PASSWORD_ENV, {"taskIds": [], "projectId": 5}, r"project 5: not found \(404\)"),
        (PASSWORD_ENV, {"taskIds": [8]}, r"task 8: The task has no data|task 8: .*no data"),
        ({}, {}, r"no CVAT credentials in the environment \(CVAT_URL"),
    ],
)
def test_failures_name_the_server_the_task_and_the_problem(
    cvat: CvatDouble, tmp_path: Path, env: dict[str, str], fields: dict[str, Any], match: str
) -> None:
    cvat.tasks[8].frames = []
    with pytest.raises(DataSourceError, match=match) as raised:
        _read(cvat, tmp_path, env=env, **fields)
    assert "wrong" not in str(raised.value) and "nope" not in str(raised.value)


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    source = CvatServerSource.model_validate({"url": "http://127.0.0.1:9", "taskIds": [1]})
    with pytest.raises(DataSourceError, match=r"CVAT http://127.0.0.1:9.*unreachable"):
        read_cvat_frames(site="a", source=source, cache_dir=tmp_path, environ=PASSWORD_ENV)


def test_an_unannotated_task_is_an_error_for_the_site(cvat: CvatDouble, tmp_path: Path) -> None:
    source = DataSource(cvat=_source(cvat, taskIds=[8], credentials={"path": str(tmp_path / "s")}))
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "username").write_text("alice\n")
    (tmp_path / "s" / "password").write_text("s3cret\n")

    with pytest.raises(DataSourceError, match=r"site site-a: no annotated frames \(tags\)"):
        load_site_data(
            site="site-a",
            source=source,
            task="classification",
            labels=LABELS,
            shape=ImageShape(channels=1, height=4, width=4),
            cache_dir=tmp_path,
        )


def test_credentials_from_a_key_value_file_and_their_repr_hides_secrets(tmp_path: Path) -> None:
    env_file = tmp_path / "cvat.env"
    env_file.write_text("# site A\nCVAT_URL=http://cvat:8080\nCVAT_ACCESS_TOKEN='abc'\n")
    spec = CvatServerSource.model_validate({"taskIds": [1], "credentials": {"path": str(env_file)}})

    found = find_credentials(spec.credentials, url=None, environ={})

    assert (found.url, found.access_token) == ("http://cvat:8080", "abc")
    assert "abc" not in repr(found)


def test_credentials_from_a_mounted_secret_or_a_custom_env_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mount = tmp_path / "secret"
    mount.mkdir()
    (mount / "url").write_text("https://cvat.site-a\n")
    (mount / "accessToken").write_text("t0k\n")
    monkeypatch.setattr("flotilla.data.cvat_credentials.CVAT_SECRET_MOUNT", str(mount))
    secret = CvatServerSource.model_validate(
        {"taskIds": [1], "credentials": {"secretName": "cvat-site-a"}}
    )
    prefixed = CvatServerSource.model_validate(
        {"url": "http://x", "taskIds": [1], "credentials": {"envPrefix": "SITE_A_CVAT_"}}
    )

    from_secret = find_credentials(secret.credentials, url=None, environ={})
    from_env = find_credentials(
        prefixed.credentials,
        url=prefixed.url,
        environ={"SITE_A_CVAT_USERNAME": "bob", "SITE_A_CVAT_PASSWORD": "pw"},
    )

    assert (from_secret.url, from_secret.access_token) == ("https://cvat.site-a", "t0k")
    assert "folder" in from_secret.origin
    assert (from_env.url, from_env.username, from_env.kind) == ("http://x", "bob", "user 'bob'")
    with pytest.raises(DataSourceError, match=r"credentials path .*nowhere does not exist"):
        find_credentials(
            CvatServerSource.model_validate(
                {"taskIds": [1], "credentials": {"path": str(tmp_path / "nowhere")}}
            ).credentials,
            url=None,
            environ={},
        )
