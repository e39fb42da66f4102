"""The round state machine: sample clients, fold their updates as they arrive, close, move on.

One engine per job, driven by `run()`, composed of parts it holds (assembly.py), each
with one job and tested alone: the `state` (phase, rounds done, the served model, the
round in play), the `roster` (the sites and what each said of its data), the client
`desk` (what the HTTP layer calls for a client), the `intake` (upload bodies into pooled
buffers), the `fold` (the round's aggregate), the `ledger` (history) and the `persister`
(checkpoints). A round opens as soon as the previous one is aggregated: central
evaluation and the checkpoint of round N run in the background while round N+1 trains,
and a round counts as completed (in status and history) once its checkpoint is durable.
With `spec.strategy.buffered` there are no rounds to open: every client trains all the
time and the `buffered` part steps the model every `size` updates (buffered.py); each
such server update is a round to everyone else (history, checkpoints, status).

Memory: the served global model, one accumulator (which becomes the next global
model in place; the retired global model is the next accumulator), and a small pool
of receive buffers. Nothing scales with the number of clients unless the aggregation
rule needs every update (median, Krum).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.assembly import assemble
from flotilla.fl.aggregator.changes import Clock, MonotonicClock
from flotilla.fl.aggregator.checkpoint import CheckpointStore
from flotilla.fl.aggregator.evaluation import Evaluator
from flotilla.fl.aggregator.pace import UploadPace
from flotilla.fl.aggregator.persist import fmt
from flotilla.fl.aggregator.records import ClientReport, summarize_round
from flotilla.fl.aggregator.resuming import ANY_ROUND
from flotilla.fl.aggregator.state import Phase
from flotilla.fl.strategies import Strategy
from flotilla.fl.strategies.base import AggregationError, RoundAggregate
from flotilla.fl.wire import Layout, update_layout

log = logging.getLogger(__name__)

__all__ = ["Phase", "RoundEngine"]


class RoundEngine:
    """Plays the job's rounds (`run`); clients are answered by its `desk`."""

    def __init__(
        self,
        *,
        job: FederatedJob,
        sites: Sequence[str],
        strategy: Strategy,
        layout: Layout,
        initial_model: bytearray,
        store: CheckpointStore,
        evaluator: Evaluator | None = None,
        clock: Clock | None = None,
        upload_pace: UploadPace | None = None,
    ) -> None:
        """`upload_pace`: the rules an upload's body must keep (pace.py; None: defaults)."""
        self.job, self.strategy, self.layout = job, strategy, layout
        self.update_layout = update_layout(layout, job.spec.compression.dtype)
        self.clock = clock = clock or MonotonicClock()
        self.evaluator = evaluator
        parts = assemble(
            job=job,
            sites=sites,
            strategy=strategy,
            layout=layout,
            update_layout=self.update_layout,
            initial_model=initial_model,
            store=store,
            evaluator=evaluator,
            clock=clock,
            upload_pace=upload_pace,
        )
        self.changes, self.state, self.roster = parts.changes, parts.state, parts.roster
        self.ledger, self.privacy, self.intake = parts.ledger, parts.privacy, parts.intake
        self.fold, self.desk, self.persister = parts.fold, parts.desk, parts.persister
        self.buffered = parts.buffered
        self._status = parts.status
        # What the job's MLflow record says of itself; set by whoever runs the exporter.
        self.tracking_status: Callable[[], dict[str, Any]] = lambda: {"enabled": False}

    # -- what others read (the state's, read-only) ------------------------------------------

    @property
    def store(self) -> CheckpointStore:
        return self.persister.store

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def current_round(self) -> int:
        return self.state.current_round

    @property
    def completed(self) -> int:
        return self.state.completed

    @property
    def persisted(self) -> int:
        return self.state.persisted

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def global_model(self) -> bytearray:
        return self.state.global_model

    def status(self) -> dict[str, Any]:
        """/v1/status: where the job stands."""
        return self._status.status(tracking=self.tracking_status())

    def summary(self) -> dict[str, Any]:
        """The job's outcome and history, for summary.json."""
        return self._status.summary(tracking=self.tracking_status())

    async def wait_status(self, *, after: int, timeout: float) -> dict[str, Any]:
        """The status once it changed after `after` (or the job ended, or `timeout`)."""
        end = self.clock() + timeout
        while (
            self.changes.seq <= after
            and not self.state.finished
            and not self.changes.closed
            and (remaining := end - self.clock()) > 0
        ):
            await self.changes.wait(remaining)
        return self.status()

    async def wait_changed(self, timeout: float) -> None:
        """Until the next change of any kind, or `timeout` seconds."""
        await self.changes.wait(timeout)

    # -- what others change ----------------------------------------------------------------

    def set_sites(self, sites: Sequence[str]) -> None:
        """The sites in force now (a node joined or left, tokens rotated). A site that left
        is no longer waited for in the round or evaluation it was sampled for."""
        gone = self.roster.set_sites(sites)
        self.state.forget(gone)
        if self.privacy is not None:
            # The sampling rate of the next rounds; the accountant keeps each past round's.
            self.privacy.clients = max(len(self.roster.sites), 1)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        state = self.state
        try:
            stopped = None
            if self.buffered is not None:
                await self._play_buffered()
            while state.completed < state.rounds and state.phase is not Phase.FAILED:
                if (stopped := self.privacy_exhausted()) is not None:
                    break
                await self._play_round()
            await self.persister.settle()
            if state.phase is Phase.FAILED:
                return
            if self.job.spec.evaluation.federated and not state.final_evaluated:
                await self._final_evaluation()
            state.set_phase(Phase.DONE, stopped or f"completed {state.completed} rounds")
        except Exception as error:  # the job must end visibly, never hang
            log.exception("the round engine failed")
            state.fail(f"internal error: {error}")

    async def _play_round(self) -> None:
        clients, state = self.job.spec.clients, self.state
        needed = max(clients.min_clients, self.strategy.rule.min_updates())
        reason, attempt = "", 0
        for attempt in range(1, clients.max_round_retries + 2):
            present = await self._await_clients(needed)
            self._open_round(present, attempt)
            await self._await_answers()
            async with self.fold.turn():  # lets folds in flight finish; later uploads refused
                reports = state.close_round()
                taken = self.fold.take()
                self.intake.close_round()  # broken uploads parked for it go
            if len(reports) >= needed and taken is not None:
                try:
                    await self._complete_round(*taken, reports, attempt)
                    return
                except AggregationError as error:
                    reason = str(error)
                    self.fold.recycle(taken[1])
            else:
                if taken is not None:
                    self.fold.recycle(taken[1])
                reason = (
                    f"{len(reports)} of {len(state.sampled)} sampled clients answered "
                    f"before the deadline; at least {needed} are needed"
                )
            log.warning("round %d attempt %d failed: %s", state.current_round, attempt, reason)
            state.say(f"round {state.current_round} retried: {reason}")
        state.fail(f"round {state.current_round} failed {attempt} times: {reason}")

    async def _play_buffered(self) -> None:
        """Server updates until `spec.rounds` are made: once `minClients` are present (as a
        first round waits), every ready client trains all the time. Uploads in flight fold
        from the start, also while clients are awaited (an aggregator that restarted)."""
        buffered = self.buffered
        assert buffered is not None
        self.intake.open_round(ANY_ROUND)  # a broken upload of any version may resume
        await buffered.open()
        if self.state.completed < self.state.rounds:
            await self._await_clients(self.job.spec.clients.min_clients)
            buffered.start_training()
        await buffered.play()
        await self.persister.settle()
        await buffered.forget_durable()  # the last server update's buffer is moot now
        self.intake.close_round()

    def privacy_exhausted(self) -> str | None:
        """Why the job stops before the next round: it would spend more than targetEpsilon."""
        if self.privacy is None:
            return None
        known = len(self.roster.sites)
        return self.privacy.stop_reason(
            completed=self.state.completed,
            rounds=self.state.rounds,
            sampled=min(self.job.spec.clients.per_round or known, known),
        )

    async def _await_clients(self, needed: int) -> list[str]:
        roster, state = self.roster, self.state
        state.set_phase(Phase.WAITING, "waiting for clients")
        grace_end = self.clock() + self.job.spec.clients.join_grace_seconds
        while True:
            present = roster.present()
            # A site that reported it cannot read its data is not waited for (roster.py).
            # Fewer sites than needed (nodes still joining): wait for more, never fail for it.
            if len(present) >= needed and (
                roster.awaited() <= set(present) or self.clock() >= grace_end
            ):
                return present
            message = (
                f"waiting for clients: {len(present)} of {len(roster.sites)} present, "
                f"{needed} needed"
            )
            problems = roster.site_problems()
            if problems:
                message += f"; {len(problems)} cannot train (see siteErrors)"
            state.say(message)
            # Arrivals wake this at once; departures are noticed within the timeout.
            await self.changes.wait(min(max(grace_end - self.clock(), 0.05), 0.5))

    def _open_round(self, present: list[str], attempt: int) -> None:
        clients, state = self.job.spec.clients, self.state
        per_round = clients.per_round or len(present)
        chooser = random.Random(f"{self.job.spec.seed}:{state.current_round}:{attempt}")
        sampled = chooser.sample(sorted(present), min(per_round, len(present)))
        self.intake.open_round(state.current_round)
        self.fold.begin()
        state.open_round(sampled, attempt=attempt, seconds=clients.round_deadline_seconds)

    async def _await_answers(self) -> None:
        while not self.state.all_answered():
            remaining = self.state.deadline - self.clock()
            if remaining <= 0:
                return
            await self.changes.wait(remaining)

    async def _complete_round(
        self,
        aggregate: RoundAggregate,
        accumulator: bytearray,
        reports: list[ClientReport],
        attempt: int,
    ) -> None:
        state, started = self.state, self.clock()
        spent = await self.fold.finish(
            aggregate, accumulator, answered=len(reports), sampled=len(state.sampled)
        )
        if spent is not None:
            epsilon, delta = fmt(spent["epsilon"]), spent["delta"]
            log.info(
                "round %d: privacy spent so far epsilon %s at delta %g",
                state.completed + 1,
                epsilon,
                delta,
            )
        await self.persister.settle()  # the optimizer state of the last round is on disk
        await asyncio.to_thread(
            self.strategy.optimizer.step,
            global_weights=state.global_views,
            update=self.layout.views(accumulator),
        )
        record = summarize_round(
            round_number=state.completed + 1,
            sampled=sorted(state.sampled),
            reports=reports,
            attempts=attempt,
            started_at=time.time() - (self.clock() - state.round_started),
            duration=self.clock() - state.round_started,
            aggregation_seconds=self.clock() - started,
        )
        record.privacy = spent
        # The retired model's last reader, the checkpoint, finished before the step.
        self.fold.recycle(state.advance(accumulator))
        self.persister.keep(record, accumulator)

    async def _final_evaluation(self) -> None:
        state = self.state
        present = self.roster.present()
        if not present:
            return
        state.open_evaluation(present, seconds=self.job.spec.clients.round_deadline_seconds)
        while not state.all_evaluated() and self.clock() < state.deadline:
            await self.changes.wait(state.deadline - self.clock())
        state.close_evaluation()
        await self.persister.checkpoint(state.completed, state.global_model)
