"""The CVAT double answers as real servers do (CVAT 2.23.1 checked), per server generation."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.unit.cvat_double import CvatDouble, FakeTask

OLD, CURRENT = "2.23.1", "2.40.1"


@pytest.fixture
def cvat() -> Iterator[CvatDouble]:
    double = CvatDouble(page_size=2)
    for task_id in (1, 2, 3):
        double.tasks[task_id] = FakeTask(
            id=task_id, labels=[(10 + task_id, f"l{task_id}")], frames=[], project_id=3
        )
    frames = [np.full((4, 4, 3), k, np.uint8) for k in range(7)]
    double.tasks[4] = FakeTask(id=4, labels=[(20, "cat")], frames=frames, chunk_size=3)
    double.tasks[5] = FakeTask(id=5, labels=[(30, "dog")], frames=frames, owner="bob")
    double.start()
    yield double
    double.stop()


def _get(cvat: CvatDouble, path: str, auth: str = "Bearer tok-789") -> tuple[int, str, bytes]:
    request = urllib.request.Request(cvat.url + path, headers={"Authorization": auth})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def _json(cvat: CvatDouble, path: str, auth: str = "Bearer tok-789") -> tuple[int, Any]:
    status, kind, body = _get(cvat, path, auth)
    assert kind == "application/vnd.cvat+json"
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("version", "accepted", "refused", "tokens_status"),
    [(OLD, "Token", "Bearer", 404), (CURRENT, "Bearer", "Token", 200)],
)
def test_each_generation_takes_its_own_key_scheme(
    cvat: CvatDouble, version: str, accepted: str, refused: str, tokens_status: int
) -> None:
    cvat.version = version

    assert _json(cvat, "/api/users/self", f"{accepted} tok-789")[1]["username"] == "alice"
    assert _json(cvat, "/api/users/self", f"{refused} tok-789")[0] == 401
    assert _json(cvat, "/api/users/self", f"{accepted} nope") == (401, {"detail": "Invalid token."})
    assert _json(cvat, "/api/auth/access_tokens", f"{accepted} tok-789")[0] == tokens_status


def test_lists_page_with_full_next_urls(cvat: CvatDouble) -> None:
    status, first = _json(cvat, "/api/tasks?project_id=3&org=")
    _, second = _json(cvat, "/api/tasks?project_id=3&org=&page=2")

    assert status == 200 and set(first) == {"count", "next", "previous", "results"}
    assert first["count"] == 3 and [t["id"] for t in first["results"]] == [3, 2]
    assert first["next"] == f"{cvat.url}/api/tasks?project_id=3&org=&page=2"
    assert first["previous"] is None and second["next"] is None
    assert second["previous"] == f"{cvat.url}/api/tasks?project_id=3&org="
    assert _json(cvat, "/api/tasks?page=9") == (404, {"detail": "Invalid page."})


def test_jobs_page_as_tasks_do_and_only_the_owner_sees_them(cvat: CvatDouble) -> None:
    # Each task's JSON points at /api/jobs?task_id=N; the list itself pages like the others.
    _, first = _json(cvat, "/api/jobs")
    _, second = _json(cvat, "/api/jobs?page=2")
    _, own = _json(cvat, "/api/jobs?task_id=4")
    _, task = _json(cvat, "/api/tasks/4")

    assert first["count"] == 4 and [j["task_id"] for j in first["results"]] == [4, 3]
    assert first["next"] == f"{cvat.url}/api/jobs?page=2"
    assert [j["task_id"] for j in second["results"]] == [2, 1] and second["next"] is None
    assert [(j["task_id"], j["stop_frame"]) for j in own["results"]] == [(4, 6)]
    assert task["jobs"]["url"] == f"{cvat.url}/api/jobs?task_id=4"
    assert _json(cvat, "/api/jobs?task_id=5")[1]["count"] == 0  # bob's task: not listed


def test_project_labels_carry_the_project_and_task_labels_the_task(cvat: CvatDouble) -> None:
    _, project = _json(cvat, "/api/labels?project_id=3&page_size=10")
    _, in_project = _json(cvat, "/api/labels?task_id=2&page_size=10")
    _, own = _json(cvat, "/api/labels?task_id=4")

    assert [label["id"] for label in project["results"]] == [11, 12, 13]
    assert all(label["project_id"] == 3 and "task_id" not in label for label in project["results"])
    assert in_project["results"] == project["results"]
    assert own["results"][0]["task_id"] == 4 and "project_id" not in own["results"][0]


@pytest.mark.parametrize(("quality", "kind"), [("original", "png"), ("compressed", "jpeg")])
def test_chunk_entries_restart_at_zero_in_each_chunk(
    cvat: CvatDouble, quality: str, kind: str
) -> None:
    status, content_type, body = _get(
        cvat, f"/api/tasks/4/data/?type=chunk&number=1&quality={quality}"
    )

    with zipfile.ZipFile(io.BytesIO(body)) as chunk:
        names = chunk.namelist()
        first = chunk.read(names[0])
    assert (status, content_type) == (200, "application/zip")
    assert names == [f"00000{i}.{kind}" for i in range(3)]  # frames 3, 4, 5
    assert first.startswith(b"\x89PNG" if kind == "png" else b"\xff\xd8")
    assert _json(cvat, "/api/tasks/4/data/?type=chunk&number=3")[0] == 404


@pytest.mark.parametrize(
    "path", ["/api/tasks/5", "/api/tasks/5/data/meta", "/api/tasks/5/annotations/"]
)
def test_a_task_of_another_user_is_forbidden(cvat: CvatDouble, path: str) -> None:
    status, body = _json(cvat, path)

    assert (status, set(body)) == (403, {"detail"})
    assert _json(cvat, "/api/tasks/99") == (404, {"detail": "Not found."})
    assert 5 not in [t["id"] for t in _json(cvat, "/api/tasks?page_size=10")[1]["results"]]


def test_anonymous_requests_get_401_and_the_about_is_public(cvat: CvatDouble) -> None:
    cvat.version = OLD

    _, about = _json(cvat, "/api/server/about", "")

    assert _json(cvat, "/api/tasks/4", "")[0] == 401
    assert about["version"] == OLD and "logo_url" not in about
