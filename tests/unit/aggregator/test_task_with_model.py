"""A small model comes in the answer of the task that needs it (server.py, `_task`), to a
client that says which version it holds; other clients, and bigger models, get JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from flotilla.fl.aggregator import server
from tests.inprocess import aggregator, digits_job

SITES = ["site-a", "site-b"]
HELD = "X-Flotilla-Model-Held"


def _job() -> Any:
    clients = {"minClients": 2, "joinGraceSeconds": 0, "roundDeadlineSeconds": 60}
    return digits_job(SITES, rounds=1, spec={"clients": clients})


async def _task(running: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    headers = running.headers("site-a", **headers)
    async with running.client.get("/v1/task?wait=5", headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


def _answers(tmp_path: Path, *asks: dict[str, str]) -> tuple[bytes, list[Any]]:
    """The served model, and the answer to each of `asks` (headers) while round 1 trains."""

    async def play() -> tuple[bytes, list[Any]]:
        async with aggregator(_job(), tmp_path) as running:
            await running.join()
            answers = [await _task(running, **headers) for headers in asks]
            return bytes(running.engine.global_model), answers

    return asyncio.run(play())


def test_a_client_that_holds_no_model_gets_it_with_its_task(tmp_path: Path) -> None:
    model, [(status, headers, body)] = _answers(tmp_path, {HELD: "-1"})
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert body == model
    task = json.loads(headers["X-Flotilla-Task"])
    assert task["action"] == "train" and task["modelVersion"] == 0
    assert headers["X-Flotilla-Model-Version"] == "0"


def test_a_client_that_holds_the_model_or_does_not_say_gets_json(tmp_path: Path) -> None:
    _, answers = _answers(tmp_path, {HELD: "0"}, {})
    for status, headers, body in answers:
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert "X-Flotilla-Task" not in headers
        assert json.loads(body)["action"] == "train"


def test_a_model_past_the_inline_size_is_fetched_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "INLINE_MODEL_BYTES", 1000)
    _, [(status, headers, body)] = _answers(tmp_path, {HELD: "-1"})
    assert status == 200 and "X-Flotilla-Task" not in headers
    assert json.loads(body)["modelVersion"] == 0


@pytest.mark.parametrize("value", ["abc", "-2", "1.5", "²"])
def test_a_held_version_of_the_wrong_form_is_refused_naming_the_header(
    tmp_path: Path, value: str
) -> None:
    _, [(status, _, body)] = _answers(tmp_path, {HELD: value})
    refusal = json.loads(body)
    assert status == 400 and refusal["reason"] == "bad_header"
    assert HELD in refusal["error"]
