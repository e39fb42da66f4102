"""A site known broken (it reported a data error) holds no round until it is ready again.

Issue 18: a site that reported a data error still counted as absent, so every round waited
the full joinGraceSeconds for it (a 2 s round took 62 s).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.inprocess import Aggregator, aggregator, digits_job

SITES = ["site-a", "site-b", "site-c"]
GRACE = 60.0  # what every round would wait for site-c if it were merely absent


async def _report(running: Aggregator, site: str, report: dict[str, object]) -> None:
    status, body = await running.request(
        "POST", "/v1/site-report", site=site, data=json.dumps(report).encode()
    )
    assert status == 200, body


def test_a_site_that_cannot_read_its_data_is_not_waited_for(tmp_path: Path) -> None:
    job = digits_job(
        SITES, rounds=2, spec={"clients": {"minClients": 2, "joinGraceSeconds": GRACE}}
    )

    async def play() -> tuple[float, list[str], list[str]]:
        async with aggregator(job, tmp_path) as running:
            started = running.engine.clock()
            await _report(running, "site-c", {"ready": False, "error": "site site-c: no export"})
            for site in ("site-a", "site-b"):
                await _report(running, site, {"ready": True})
            # Connected (long-polling) like a client that retries its data.
            poll = asyncio.create_task(running.request("GET", "/v1/task?wait=30", site="site-c"))
            await running.training(1)
            opened_after = running.engine.clock() - started
            first = sorted(running.engine.state.sampled)
            # Fixed: it reports ready and counts again, so round 2 samples it. (Reported
            # while round 1 trains: once round 1's answers are in, round 2 opens at once.)
            await _report(running, "site-c", {"ready": True})
            for site in first:
                assert await running.upload(site, running.delta(0.01)) == 200
            await running.training(2)
            second = sorted(running.engine.state.sampled)
            poll.cancel()
            return opened_after, first, second

    opened_after, first, second = asyncio.run(play())
    assert opened_after < GRACE / 4, f"round 1 waited {opened_after:.1f}s for a broken site"
    assert first == ["site-a", "site-b"]
    assert second == SITES
