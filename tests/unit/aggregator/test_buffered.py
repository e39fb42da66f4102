"""Buffered asynchronous aggregation (FedBuff), played whole on the fake clock.

The engine is the real one with `spec.strategy.buffered`: fake clients at its desk upload
deltas whose every value is one number, so how far the model moved says exactly how each
update was weighted. No time passes unless a test says so: a server update never waits
for a deadline, only for `size` updates.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from flotilla.fl.aggregator.errors import AlreadyFolded, BadUpdateKind, RoundClosed, TooStale
from flotilla.fl.aggregator.state import Phase
from tests.unit.aggregator.fakes import Machine

SITES = ["site-a", "site-b", "site-c"]


def _buffered(size: int, **more: Any) -> dict[str, Any]:
    strategy = {"name": "fedavg", "serverLearningRate": 1.0, "buffered": {"size": size, **more}}
    return {"strategy": strategy}


def _shift(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """How far every weight moved; the test's updates move them all alike."""
    moved = torch.cat([(after[name] - before[name]).flatten() for name in before])
    assert float(moved.max() - moved.min()) < 1e-5, "the model did not move uniformly"
    return float(moved.mean())


def _ready(machine: Machine) -> None:
    for site in machine.sites.values():
        site.report_ready()


def test_every_ready_site_trains_at_once_and_again_after_each_upload(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, rounds=3, spec=_buffered(2))
    a, b, c = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            assert a.task()["action"] == "report"
            a.report_ready()
            b.report_ready()
            await machine.waiting_for_clients()  # a job starts with its minClients present
            assert a.task()["action"] == "wait"
            c.report_ready()
            await machine.until(lambda: machine.state.phase is Phase.TRAINING)
            task = a.task()
            assert (task["action"], task["round"], task["modelVersion"]) == ("train", 1, 0)
            assert task["deadlineSeconds"] == 60  # an upload's own bound: no round deadline
            await a.upload(0.1)
            assert a.task()["action"] == "train"  # at once, on the same version: no step yet
            status = machine.engine.status()
            assert status["buffer"]["updates"] == 1
            assert (status["clients"]["sampled"], status["clients"]["answered"]) == (3, 1)

    asyncio.run(play())


def test_the_server_steps_every_size_updates_and_a_slow_site_never_holds_a_step(
    tmp_path: Path,
) -> None:
    machine = Machine(tmp_path, sites=SITES, rounds=3, spec=_buffered(2))
    a, b, c = machine.sites.values()

    async def made(count: int) -> None:
        await machine.until(lambda: machine.state.completed == count)

    async def play() -> None:
        async with machine.running():
            _ready(machine)
            await machine.until(lambda: machine.state.phase is Phase.TRAINING)
            assert c.task()["action"] == "train"  # site-c trains, slowly: never heard of again
            for fast in ((a, b), (b, a), (a, a)):  # a fast site may fill a buffer twice
                version = machine.state.completed
                for site in fast:
                    assert machine.state.completed == version  # one update: no step yet
                    await site.upload(0.1, round_number=version + 1)
                await made(version + 1)
            await machine.until(lambda: machine.state.phase is Phase.DONE)

    asyncio.run(play())
    history = machine.engine.ledger.history_json()
    assert [row["round"] for row in history] == [1, 2, 3]
    assert [[u["site"] for u in row["buffer"]["updates"]] for row in history] == [
        ["site-a", "site-b"],
        ["site-b", "site-a"],
        ["site-a", "site-a"],
    ]
    assert all(row["sampled"] == SITES for row in history)  # present, if not heard from
    assert machine.clock.now == 1000.0  # no deadline passed: nothing waited on site-c


def test_an_update_is_weighted_down_by_its_staleness(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, rounds=2, spec=_buffered(2))
    a, b, c = machine.sites.values()
    before = machine.model()
    after_first: dict[str, torch.Tensor] = {}

    async def play() -> None:
        async with machine.running():
            _ready(machine)
            await machine.until(lambda: machine.state.phase is Phase.TRAINING)
            assert c.task()["modelVersion"] == 0  # site-c trains on version 0 ...
            await a.upload(0.1, round_number=1)
            await b.upload(0.1, round_number=1)
            await machine.until(lambda: machine.state.completed == 1)
            after_first.update(machine.model())
            # ... and sends it one server update late: staleness 1; site-a's is fresh.
            stale = await c.upload(0.4, round_number=1)
            fresh = await a.upload(0.2, round_number=2)
            assert (stale["staleness"], fresh["staleness"]) == (1, 0)
            assert stale["serverUpdate"] == fresh["serverUpdate"] == 2
            await machine.until(lambda: machine.state.persisted == 2)

    asyncio.run(play())
    assert _shift(before, after_first) == pytest.approx(0.1, abs=1e-6)
    # Equal examples: (0.4 / sqrt(1 + 1) + 0.2 / sqrt(1 + 0)) / 2; the normaliser leaves the
    # staleness out, so a stale buffer moves the model less.
    expected = (0.4 / math.sqrt(2) + 0.2) / 2
    assert _shift(after_first, machine.model()) == pytest.approx(expected, abs=1e-6)
    row = machine.engine.ledger.history_json()[1]
    assert row["buffer"]["updates"] == [
        {"site": "site-c", "baseVersion": 0, "staleness": 1},
        {"site": "site-a", "baseVersion": 1, "staleness": 0},
    ]
    assert (row["buffer"]["stalenessMean"], row["buffer"]["stalenessMax"]) == (0.5, 1)


def test_an_update_staler_than_max_staleness_is_refused(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, rounds=5, spec=_buffered(1, maxStaleness=1))
    a, b, _ = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            _ready(machine)
            await machine.until(lambda: machine.state.phase is Phase.TRAINING)
            await a.upload(0.1, round_number=1)
            await machine.until(lambda: machine.state.completed == 1)
            await a.upload(0.1, round_number=2)
            await machine.until(lambda: machine.state.completed == 2)
            with pytest.raises(TooStale, match="2 server updates behind version 2"):
                await b.upload(0.1, round_number=1)
            assert (await b.upload(0.1, round_number=2))["staleness"] == 1
            await machine.until(lambda: machine.state.persisted == 3)
            with pytest.raises(RoundClosed, match="has not served"):
                await b.upload(0.1, round_number=9)  # a version that does not exist yet

    asyncio.run(play())
    rows = machine.engine.ledger.history_json()
    assert [len(row["buffer"]["updates"]) for row in rows] == [1, 1, 1]  # none refused counted


def test_an_update_that_finds_the_buffer_full_goes_into_the_next_server_update(
    tmp_path: Path,
) -> None:
    machine = Machine(tmp_path, sites=SITES, rounds=3, spec=_buffered(1))
    a, b, _ = machine.sites.values()

    async def play() -> list[dict[str, Any]]:
        async with machine.running():
            _ready(machine)
            await machine.until(lambda: machine.state.phase is Phase.TRAINING)
            answers = await asyncio.gather(
                a.upload(0.1, round_number=1), b.upload(0.1, round_number=1)
            )
            await machine.until(lambda: machine.state.completed == 2)
            return list(answers)

    answers = asyncio.run(play())
    # Both trained on version 0; the one folded second waited for the step, so it counts
    # as one server update stale.
    assert sorted((x["serverUpdate"], x["staleness"]) for x in answers) == [(1, 0), (2, 1)]


def test_deltas_only_and_an_upload_sent_again_is_not_folded_twice(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, rounds=2, spec=_buffered(3))
    a, _, _ = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            _ready(machine)
            await machine.until(lambda: machine.state.phase is Phase.TRAINING)
            with pytest.raises(BadUpdateKind, match="takes deltas"):
                await a.upload(0.1, weights=True)  # the model it is against may be gone
            await a.upload(0.1, upload_id="upload-a-0001")
            with pytest.raises(AlreadyFolded, match="folded already"):
                await a.upload(0.1, upload_id="upload-a-0001")  # its answer was lost
            await a.upload(0.1, upload_id="upload-a-0002")  # a new one is welcome

    asyncio.run(play())
    assert machine.engine.status()["buffer"]["updates"] == 2


def test_uploads_after_the_last_server_update_are_refused(tmp_path: Path) -> None:
    machine = Machine(tmp_path, sites=SITES, rounds=1, spec=_buffered(1))
    a, b, _ = machine.sites.values()

    async def play() -> None:
        async with machine.running():
            _ready(machine)
            await machine.until(lambda: machine.state.phase is Phase.TRAINING)
            await a.upload(0.1)
            await machine.until(lambda: machine.state.phase is Phase.DONE)
            with pytest.raises(RoundClosed, match="no server update takes updates"):
                await b.upload(0.1, round_number=1)
            assert b.task()["action"] == "done"

    asyncio.run(play())


def test_a_restarted_aggregator_resumes_the_buffer_its_clients_were_answered_for(
    tmp_path: Path,
) -> None:
    first = Machine(tmp_path, sites=SITES, rounds=2, spec=_buffered(3))
    a, b, _ = first.sites.values()
    before = first.model()

    async def fill() -> None:
        async with first.running():
            _ready(first)
            await first.until(lambda: first.state.phase is Phase.TRAINING)
            await a.upload(0.1, upload_id="upload-a-0001")
            await b.upload(0.2, upload_id="upload-b-0001")
            # Written down before the clients heard back: the aggregator may die now.
            assert (tmp_path / "buffer" / "buffer-000001.json").exists()

    asyncio.run(fill())  # ... and it dies: its task is cancelled, nothing else is written
    second = Machine(tmp_path, sites=SITES, rounds=2, spec=_buffered(3))
    assert not second.resume()  # no checkpoint yet: version 0
    a, _, c = second.sites.values()

    async def go_on() -> None:
        async with second.running():
            await second.until(lambda: second.engine.status()["buffer"]["updates"] == 2)
            _ready(second)
            await second.until(lambda: second.state.phase is Phase.TRAINING)
            with pytest.raises(AlreadyFolded):  # site-a lost its answer and sends it again
                await a.upload(0.1, upload_id="upload-a-0001")
            await c.upload(0.3, upload_id="upload-c-0001")
            await second.until(lambda: second.state.persisted == 1)

    asyncio.run(go_on())
    assert _shift(before, second.model()) == pytest.approx(0.2, abs=1e-6)  # (0.1+0.2+0.3)/3
    (row,) = second.engine.ledger.history_json()
    assert [u["site"] for u in row["buffer"]["updates"]] == ["site-a", "site-b", "site-c"]


def test_a_server_update_not_yet_durable_is_stepped_again_from_the_journal(
    tmp_path: Path,
) -> None:
    first = Machine(tmp_path, sites=SITES, rounds=3, spec=_buffered(2))
    a, b, _ = first.sites.values()

    async def step_once() -> None:
        async with first.running():
            _ready(first)
            await first.until(lambda: first.state.phase is Phase.TRAINING)
            await a.upload(0.1)
            await b.upload(0.3)
            await first.until(lambda: first.state.persisted == 1)

    asyncio.run(step_once())
    stepped = first.model()
    # The aggregator died between the step and its checkpoint: none is on disk.
    shutil.rmtree(tmp_path / "checkpoints")
    second = Machine(tmp_path, sites=SITES, rounds=3, spec=_buffered(2))
    assert not second.resume()

    async def replay() -> None:
        async with second.running():
            await second.until(lambda: second.state.persisted == 1)  # before any client

    asyncio.run(replay())
    after = second.model()
    assert all(torch.equal(after[name], stepped[name]) for name in stepped)
    (row,) = second.engine.ledger.history_json()
    assert [u["site"] for u in row["buffer"]["updates"]] == ["site-a", "site-b"]
