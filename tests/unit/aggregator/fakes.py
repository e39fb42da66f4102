"""A round engine on a fake clock, with fake clients that call its desk: no HTTP, no sleeps.

The engine is the real one (the digits job's tiny MLP, its real strategy, fold and
checkpoints); only time and the clients are played by the test. Time moves when the test
says (`clock.advance`), so deadlines and grace periods pass at once and exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from flotilla.fl.aggregator.checkpoint import CheckpointStore
from flotilla.fl.aggregator.engine import RoundEngine
from flotilla.fl.aggregator.state import EngineState, Phase
from flotilla.fl.aggregator.terms import Resumable
from flotilla.fl.modelstate import initial_global_model
from flotilla.fl.strategies import build_strategy
from tests.inprocess import digits_job

REAL_TIMEOUT = 20.0  # seconds of real time a test waits for the engine before it fails


class FakeClock:
    """Seconds that move only when `advance` says; timeouts expire as their time passes."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._timers: dict[int, tuple[float, asyncio.Timeout]] = {}
        self._ids = itertools.count()

    def __call__(self) -> float:
        return self.now

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[asyncio.Timeout]:
        async with asyncio.timeout(None) as timer:
            key = next(self._ids)
            self._timers[key] = (self.now + seconds, timer)
            if seconds <= 0:
                timer.reschedule(asyncio.get_running_loop().time())
            try:
                yield timer
            finally:
                del self._timers[key]

    def advance(self, seconds: float) -> None:
        """Move time on; every timeout due expires (on the event loop's next turn)."""
        self.now += seconds
        for when, timer in list(self._timers.values()):
            if when <= self.now:
                timer.reschedule(asyncio.get_running_loop().time())


class FakeSite:
    """A client, as the desk sees one: it dials (presence), reports, asks, uploads."""

    def __init__(self, name: str, machine: Machine) -> None:
        self.name = name
        self.machine = machine
        self.link_open = True

    def dial(self) -> None:
        self.link_open = True
        self.machine.engine.desk.seen(self.name, lambda: self.link_open)

    def hang_up(self) -> None:
        self.link_open = False

    def report_ready(self) -> None:
        self.dial()
        self.machine.engine.desk.receive_site_report(self.name, {"ready": True, "data": {}})

    def report_broken(self, error: str) -> None:
        self.dial()
        self.machine.engine.desk.receive_site_report(self.name, {"ready": False, "error": error})

    def task(self) -> dict[str, Any]:
        self.dial()
        return self.machine.engine.desk.task_for(self.name)

    async def upload(
        self,
        fill: float,
        *,
        examples: int = 10,
        round_number: int | None = None,
        upload_id: str | None = None,
        weights: bool = False,
    ) -> dict[str, Any]:
        """An update whose every value is `fill`, for the round open now (or `round_number`);
        `upload_id` makes it resumable, `weights` says it is trained weights, not a delta."""
        self.dial()
        engine = self.machine.engine
        layout = engine.update_layout
        buffer = layout.allocate()
        for view in layout.views(buffer).values():
            view.fill_(fill)
        body = bytes(buffer)

        async def pieces() -> AsyncIterator[bytes]:
            yield body

        return await engine.desk.receive_update(
            site=self.name,
            round_number=round_number or engine.state.current_round,
            body=pieces(),
            zstd=False,
            examples=examples,
            metrics={"train": {"loss": 0.5}},
            size=len(body),
            weights=weights,
            resumable=Resumable(upload_id) if upload_id else None,
        )

    def evaluate(self, version: int) -> None:
        self.dial()
        self.machine.engine.desk.receive_evaluation(
            site=self.name,
            version=version,
            metrics={"loss": 0.25, "examples": 5, "accuracy": 0.75},
        )


class Machine:
    """The engine of a digits job over `sites`, on a fake clock; `clients` and `spec`
    override the job's spec (minClients, joinGraceSeconds, roundDeadlineSeconds, ...)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        sites: list[str],
        rounds: int = 2,
        clients: Mapping[str, Any] | None = None,
        spec: Mapping[str, Any] | None = None,
    ) -> None:
        job = digits_job(
            sites,
            rounds=rounds,
            spec={
                "strategy": {"name": "fedavg", "serverLearningRate": 1.0},
                "clients": {
                    "minClients": len(sites),
                    "joinGraceSeconds": 0,
                    "roundDeadlineSeconds": 60,
                    **(clients or {}),
                },
                **(spec or {}),
            },
        )
        layout, model = initial_global_model(job)
        self.clock = FakeClock()
        self.engine = RoundEngine(
            job=job,
            sites=sites,
            strategy=build_strategy(job.spec.strategy),
            layout=layout,
            initial_model=model,
            store=CheckpointStore(state_dir),
            clock=self.clock,
        )
        self.sites = {name: FakeSite(name, self) for name in sites}

    def report_ready(self, *sites: FakeSite) -> None:
        """`sites` (all of them when none is named) say their data is ready."""
        for site in sites or self.sites.values():
            site.report_ready()

    @property
    def state(self) -> EngineState:
        return self.engine.state

    def model(self) -> dict[str, torch.Tensor]:
        views = self.engine.layout.views(self.state.global_model)
        return {name: view.clone() for name, view in views.items()}

    def resume(self) -> bool:
        """Load the newest good checkpoint of the state directory, as the aggregator does."""
        store, persister = self.engine.store, self.engine.persister
        return store.load(self.engine.layout, accept=persister.restore) is not None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        task = asyncio.create_task(self.engine.run())
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Let the engine run (worker threads too) until `predicate` holds; real time."""
        async with asyncio.timeout(REAL_TIMEOUT):
            while not predicate():
                await asyncio.sleep(0.002)

    async def training(self, number: int) -> None:
        state = self.state
        await self.until(lambda: state.phase is Phase.TRAINING and state.current_round == number)

    async def waiting_for_clients(self) -> None:
        """Until the engine waits for clients and said how many: its grace runs from then."""
        state = self.state
        await self.until(
            lambda: (
                state.phase is Phase.WAITING and state.message.startswith("waiting for clients:")
            )
        )
