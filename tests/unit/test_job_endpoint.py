"""GET /v1/job: the job's spec and wire layout, with the caller's own site name."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.inprocess import aggregator, digits_job


def test_each_site_gets_the_spec_the_layout_and_its_own_name(tmp_path: Path) -> None:
    job = digits_job(["site-a", "site-b"], rounds=1)

    async def play() -> tuple[list[dict[str, Any]], str]:
        async with aggregator(job, tmp_path, run=False) as running:
            answers = []
            for site in ("site-b", "site-a", "site-b"):
                status, body = await running.request("GET", "/v1/job", site=site)
                assert status == 200, body
                answers.append(json.loads(body))
            header = running.engine.layout.header[8:].decode().rstrip()
            return answers, header

    answers, header = asyncio.run(play())
    assert [answer["site"] for answer in answers] == ["site-b", "site-a", "site-b"]
    for answer in answers:
        assert answer["spec"] == job.to_dict()
        assert answer["layoutHeader"] == header
        assert set(answer) == {"site", "spec", "layoutHeader"}
