"""How many receive buffers the intake makes: one, and another for a waiting upload only
while every holder is held up by its own (slow) link (pool.py, pace.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from flotilla.api import load_job
from flotilla.cli import build_parser
from flotilla.fl.aggregator.intake import UpdateIntake
from flotilla.fl.aggregator.main import AggregatorOptions, build_engine
from flotilla.fl.aggregator.pace import Progress, UploadPace
from flotilla.fl.aggregator.pool import ReceivePool
from flotilla.fl.aggregator.terms import UploadTerms
from flotilla.fl.wire import Layout, TensorSpec

JOB = Path(__file__).resolve().parents[3] / "examples" / "digits.yaml"
LAYOUT = Layout.of([TensorSpec("w", (64,), "F32"), TensorSpec("b", (8,), "F32")])
# Every holder counts as slow once it has held its buffer 50 ms, or none ever does.
SLOW = UploadPace(slow_link_bytes_per_second=1e12, slow_link_after_seconds=0.05)
FAST = UploadPace(slow_link_bytes_per_second=0.0, slow_link_after_seconds=0.05)


def _body(fill: float) -> bytes:
    buffer = LAYOUT.allocate()
    for view in LAYOUT.views(buffer).values():
        view.fill_(fill)
    return bytes(buffer)


async def _trickle(body: bytes, gate: asyncio.Event) -> AsyncIterator[bytes]:
    """A few bytes, then the rest once `gate` opens (or a stall until then)."""
    yield body[:16]
    await gate.wait()
    yield body[16:]


async def _whole(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _terms(site: str, body: bytes) -> UploadTerms:
    return UploadTerms(site=site, size=len(body), seconds_left=60.0, round_number=1)


def test_the_pool_makes_its_first_buffer_on_use_and_more_only_for_a_waiter() -> None:
    async def play() -> None:
        pool = ReceivePool(16, count=2)
        first = pool.get_nowait()
        assert first is not None and pool.get_nowait() is None, "one buffer up front"
        assert not pool.grow(), "nobody waits: no second buffer"
        waiter = pool.queue()
        assert pool.grow() and waiter.done() and waiter.result() is not first
        pool.leave(waiter)
        assert not pool.can_grow and not pool.grow()

    asyncio.run(play())


def test_a_holder_is_a_slow_link_below_the_rate_after_the_judging_time() -> None:
    pace = UploadPace(slow_link_bytes_per_second=1000.0, slow_link_after_seconds=1.0)
    progress = Progress(pace, size=10_000, started=100.0, until=200.0)
    progress.got(500, now=100.5)
    assert not progress.slow_link(now=100.5), "not judged before a second"
    assert progress.slow_link(now=101.0), "500 bytes in a second is below 1000/s"
    progress.got(5000, now=101.2)
    assert not progress.slow_link(now=101.2)
    progress.waited(10.0)  # ten seconds behind the fence are not the link's
    assert not progress.slow_link(now=111.2)


def _race(pace: UploadPace) -> list[str]:
    """a holds the buffer with a trickle; b waits for one. Who got in first?"""
    intake = UpdateIntake(LAYOUT, max_norm=None, pace=pace, buffers=2)
    events: list[str] = []

    async def play() -> None:
        gate = asyncio.Event()
        slow, quick = _body(1.0), _body(2.0)

        async def upload(site: str, body: AsyncIterator[bytes], whole: bytes) -> None:
            async with intake.receive(body, terms=_terms(site, whole), zstd=False):
                events.append(site)

        holder = asyncio.create_task(upload("a", _trickle(slow, gate), slow))
        async with asyncio.timeout(5):
            while intake.receiving() != {"a"}:
                await asyncio.sleep(0)
        waiter = asyncio.create_task(upload("b", _whole(quick), quick))
        done, _ = await asyncio.wait([waiter], timeout=2.0)  # margin for a loaded machine
        events.append("b in while a held" if done else "b still waiting")
        gate.set()
        await asyncio.wait_for(asyncio.gather(holder, waiter), 5)

    asyncio.run(play())
    return events


def test_an_upload_waiting_behind_a_slow_link_gets_a_second_buffer() -> None:
    # The holder is stalled after 16 bytes: its link is judged, and b arrives alongside.
    assert _race(SLOW) == ["b", "b in while a held", "a"]


def test_an_upload_waiting_behind_a_fast_link_waits_for_the_one_buffer() -> None:
    assert _race(FAST) == ["b still waiting", "a", "b"]


def _engine_pace(tmp_path: Path, *, on_this_host: bool) -> UploadPace:
    job = load_job(JOB)
    evaluation = job.spec.evaluation.model_copy(update={"test_data": None})
    spec = job.spec.model_copy(update={"evaluation": evaluation})
    options = AggregatorOptions(
        state_dir=tmp_path / str(on_this_host), tracking=False, clients_on_this_host=on_this_host
    )
    engine = build_engine(job.model_copy(update={"spec": spec}), sites=["a"], options=options)
    return engine.intake.pace


def test_clients_on_this_host_never_get_a_buffer_for_a_slow_link(tmp_path: Path) -> None:
    # flotilla run's clients share the aggregator's CPU: on two cores, 32 clients of a
    # 50M model came in below the slow-link rate and took a second model of memory.
    assert _engine_pace(tmp_path, on_this_host=False) == UploadPace()
    local = _engine_pace(tmp_path, on_this_host=True)

    assert _race(replace(local, slow_link_after_seconds=0.05)) == ["b still waiting", "a", "b"]
    stalled = Progress(local, size=10**9, started=0.0, until=10**6)
    assert not stalled.slow_link(now=1000.0), "no byte in 1,000 s: still not a slow link"


def test_the_aggregator_cli_takes_clients_on_this_host() -> None:
    command = ["aggregator", "--job", "j.yaml", "--tokens-file", "t", "--state-dir", "s"]
    assert build_parser().parse_args([*command, "--clients-on-this-host"]).clients_on_this_host
    assert not build_parser().parse_args(command).clients_on_this_host
