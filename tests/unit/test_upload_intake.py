"""The receive pool under slow and greedy senders: one buffer per site, a pace to keep.

A real aiohttp server in the test's loop; the slow senders are raw sockets writing their
body a few bytes at a time. Small pace values keep each test to a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.intake import _Lease
from flotilla.fl.aggregator.pace import Progress, UploadPace
from tests.inprocess import Aggregator, aggregator, digits_job

SITES = ["site-a", "site-b", "site-c"]
QUICK = UploadPace(
    idle_seconds=1.0, grace_seconds=0.5, min_bytes_per_second=1024, slow_link_after_seconds=0.5
)


def _job(*, deadline: float, min_clients: int, buffers: int | None = None) -> FederatedJob:
    # A long grace: round 1 opens once all three sites are there, so all are sampled.
    clients = {"minClients": min_clients, "joinGraceSeconds": 60, "roundDeadlineSeconds": deadline}
    spec: dict[str, Any] = {"clients": clients}
    if buffers is not None:
        spec["limits"] = {"receiveBuffers": buffers}
    return digits_job(SITES, rounds=1, spec=spec)


def test_the_aggregator_receives_as_many_bodies_at_once_as_the_spec_allows(
    tmp_path: Path,
) -> None:
    async def buffers(job: FederatedJob) -> int:
        async with aggregator(job, tmp_path / str(id(job))) as running:
            return running.engine.intake.buffers

    assert asyncio.run(buffers(_job(deadline=5, min_clients=1))) == 2, "the default"
    assert asyncio.run(buffers(_job(deadline=5, min_clients=1, buffers=1))) == 1


async def _slow_put(
    running: Aggregator,
    site: str,
    body: bytes,
    *,
    piece: int,
    every: float,
    round_number: int = 1,
) -> tuple[int, dict[str, Any]]:
    """PUT `body` `piece` bytes every `every` seconds; (status, JSON answer), or 0 on a reset."""
    server = running.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(running.raw_update_head(site, len(body), round_number=round_number))

    async def send() -> None:
        with contextlib.suppress(OSError):
            for start in range(0, len(body), piece):
                writer.write(body[start : start + piece])
                await writer.drain()
                await asyncio.sleep(every)

    sender = asyncio.create_task(send())
    try:
        answer = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in answer.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return int(answer.split()[1]), json.loads(await reader.readexactly(length))
    except (OSError, asyncio.IncompleteReadError):
        return 0, {}
    finally:
        sender.cancel()
        writer.close()


async def _holding(running: Aggregator, *sites: str) -> None:
    """Until `sites` hold receive buffers (the intake has no event for it: poll briefly)."""
    async with asyncio.timeout(5):
        while not set(sites) <= running.engine.intake.receiving():
            await asyncio.sleep(0.01)


def test_a_site_trickling_two_uploads_holds_no_round_past_its_deadline(tmp_path: Path) -> None:
    """Issue: one site's two 1-byte trickles took both buffers and failed every round."""
    deadline = 3.0

    async def play() -> tuple[list[tuple[int, dict[str, Any]]], list[int], list[str]]:
        async with aggregator(_job(deadline=deadline, min_clients=2), tmp_path) as running:
            running.engine.intake.pace = QUICK
            await running.join()
            body = bytes(running.delta(0.01))
            trickles = [
                asyncio.create_task(_slow_put(running, "site-a", body, piece=1, every=0.2))
                for _ in range(2)
            ]
            # The second upload of the same site is answered at once, not after a pace rule.
            done, _ = await asyncio.wait(
                trickles, timeout=QUICK.grace_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, "a second concurrent upload of one site was not refused at once"
            async with asyncio.timeout(deadline + 5):
                honest = await asyncio.gather(
                    running.upload("site-b", body), running.upload("site-c", body)
                )
                await running.until(lambda e: e.persisted == 1)
                answers = [await trickle for trickle in trickles]
            return answers, honest, running.engine.ledger.rounds[0].answered

    answers, honest, answered = asyncio.run(play())
    assert honest == [200, 200]
    assert answered == ["site-b", "site-c"]
    refused, cut = sorted(answers, key=lambda answer: answer[0] != 409)
    assert refused[0] == 409 and "'site-a'" in refused[1]["error"], refused
    assert cut[0] in (408, 503) and "'site-a'" in cut[1]["error"], cut


def test_slow_honest_uploads_cannot_starve_a_waiting_site(tmp_path: Path) -> None:
    """Two sites at 4 KiB/s (above the floor) could not arrive before the round closes:
    while a third waits, the one furthest off pace gives its buffer up. (Both slow sites
    hold a buffer: the second is made for site-b once site-a's link is judged slow.)"""
    deadline = 4.0

    async def play() -> tuple[list[int], int, list[str]]:
        async with aggregator(_job(deadline=deadline, min_clients=1), tmp_path) as running:
            running.engine.intake.pace = QUICK
            await running.join()
            body = bytes(running.delta(0.01))  # 77 KB: 19 s at 4 KiB/s
            slow = [
                asyncio.create_task(_slow_put(running, site, body, piece=512, every=0.125))
                for site in ("site-a", "site-b")
            ]
            await _holding(running, "site-a", "site-b")
            async with asyncio.timeout(deadline + 5):
                fast = await running.upload("site-c", body)
                await running.until(lambda e: e.persisted == 1)
                answers = [(await task)[0] for task in slow]
            return sorted(answers), fast, running.engine.ledger.rounds[0].answered

    answers, fast, answered = asyncio.run(play())
    assert fast == 200
    assert answered == ["site-c"]
    assert answers == [409, 503]  # one yielded to site-c; the other ended with its round


def test_a_refused_body_that_trickles_is_not_read_for_ever(tmp_path: Path) -> None:
    """A refused upload's body is drained (so honest clients read the answer, not a reset)
    only at the uploads' pace: a trickle gets its answer once it falls behind."""

    async def play() -> tuple[int, dict[str, Any]]:
        async with aggregator(_job(deadline=60, min_clients=3), tmp_path) as running:
            running.engine.intake.pace = QUICK
            await running.join()
            body = bytes(running.delta(0.01))
            async with asyncio.timeout(QUICK.grace_seconds + 5):
                return await _slow_put(running, "site-a", body, piece=1, every=0.2, round_number=7)

    status, answer = asyncio.run(play())
    assert (status, answer["reason"]) == (409, "round_closed")


def test_a_lease_whose_deadline_fired_is_left_alone_when_the_others_are_rescheduled(
    tmp_path: Path,
) -> None:
    """A fired timer is 'expiring' until its upload's task runs; rescheduling it then raised
    RuntimeError, which from _take or _give lost a receive buffer or answered 500 to an
    update already folded (found by bench/load_sites.py at 1,000 sites)."""

    async def play() -> bool:
        async with aggregator(_job(deadline=30, min_clients=3), tmp_path) as running:
            intake = running.engine.intake
            loop = asyncio.get_running_loop()
            fired = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None) as timer:
                    now = loop.time()
                    progress = Progress(intake.pace, size=1 << 20, started=now, until=now + 30)
                    lease = _Lease("site-a", progress, timer=timer)
                    intake._leases.append(lease)
                    timer.reschedule(loop.time())
                    try:
                        await asyncio.sleep(5)
                    except asyncio.CancelledError:
                        fired = timer.expired()
                        intake._reschedule()  # raised RuntimeError before
                        intake._leases.remove(lease)
                        raise
            return fired

    assert asyncio.run(play())
