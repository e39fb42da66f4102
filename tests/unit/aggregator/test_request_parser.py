"""aiohttp's request parser by update size (server.choose_request_parser): the C parser for
a small model's many small requests, the Python parser, which hands body pieces on without
copying them, for models past 1 MiB; the aggregator chooses as it starts serving a job."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import http_parser, web_protocol

from flotilla.fl.aggregator.main import AggregatorOptions, serve
from flotilla.fl.aggregator.server import PYTHON_PARSER_PAST_BYTES, choose_request_parser
from tests.inprocess import digits_job

C_PARSER = getattr(http_parser, "HttpRequestParserC", None)


@pytest.fixture(autouse=True)
def parser_restored() -> Iterator[None]:
    before = getattr(web_protocol, "HttpRequestParser")  # noqa: B009 (not exported)
    yield
    setattr(web_protocol, "HttpRequestParser", before)  # noqa: B010


def test_aiohttp_here_has_its_c_parser() -> None:
    # Installed wheels carry it; without it (AIOHTTP_NO_EXTENSIONS) the Python one serves all.
    assert C_PARSER is not None


def test_small_updates_get_the_c_parser_and_large_ones_the_python_parser() -> None:
    assert choose_request_parser(PYTHON_PARSER_PAST_BYTES) is C_PARSER
    assert getattr(web_protocol, "HttpRequestParser") is C_PARSER  # noqa: B009
    large = choose_request_parser(PYTHON_PARSER_PAST_BYTES + 1)
    assert large is http_parser.HttpRequestParserPy
    assert getattr(web_protocol, "HttpRequestParser") is large  # noqa: B009


def test_the_aggregator_chooses_for_its_job_before_it_listens(tmp_path: Path) -> None:
    choose_request_parser(PYTHON_PARSER_PAST_BYTES + 1)  # as a previous, large job left it

    async def play() -> type:
        ready = asyncio.Event()
        seen: list[type] = []

        def on_ready(url: str) -> None:
            seen.append(getattr(web_protocol, "HttpRequestParser"))  # noqa: B009
            ready.set()

        options = AggregatorOptions(
            state_dir=tmp_path / "state", host="127.0.0.1", port=0, tracking=False
        )
        job = digits_job(["a"], rounds=1)
        serving = asyncio.create_task(
            serve(job, tokens={"a": "t"}, options=options, on_ready=on_ready)
        )
        await ready.wait()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        return seen[0]

    assert asyncio.run(play()) is C_PARSER  # the digits MLP: ~0.1 MB an update
