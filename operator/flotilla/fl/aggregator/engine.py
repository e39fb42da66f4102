"""The round state machine: sample clients, fold their updates as they arrive, close, move on.

One engine per job, driven by `run()`; the HTTP layer only calls into it. A round
opens as soon as the previous one is aggregated: central evaluation and the
checkpoint of round N run in the background while round N+1 trains, and a round
counts as completed (in status and history) once its checkpoint is durable.

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
from typing import Any

from flotilla.fl.aggregator.checkpoint import CheckpointError, Snapshot
from flotilla.fl.aggregator.desk import ClientDesk
from flotilla.fl.aggregator.records import ClientReport, RoundRecord, summarize_round
from flotilla.fl.aggregator.state import Evaluator, Phase
from flotilla.fl.learning import SCORE_OF_TASK, SCORE_TITLES
from flotilla.fl.strategies.base import AggregationError, RoundAggregate

log = logging.getLogger(__name__)

CHECKPOINT_ATTEMPTS = 5
CHECKPOINT_RETRY_SECONDS = 1.0

__all__ = ["Evaluator", "Phase", "RoundEngine"]


class RoundEngine(ClientDesk):
    """Plays the job's rounds (`run`); clients are answered by the ClientDesk it is."""

    # -- resume ----------------------------------------------------------------------------

    def restore(self, snapshot: Snapshot) -> None:
        identity = snapshot.state.get("identity")
        if identity != self.identity():
            raise CheckpointError(
                "the checkpoint belongs to a job with another model, labels or strategy "
                f"({identity!r} != {self.identity()!r}); use a fresh --state-dir"
            )
        self._global = snapshot.model
        self._global_views = self.layout.views(snapshot.model)
        self.strategy.optimizer.load_state_dict(snapshot.optimizer_state)
        self.completed = self.persisted = snapshot.completed_rounds
        self.ledger.restore(snapshot.state)
        if self.privacy is not None:
            self.privacy.restore(record.to_json() for record in self.ledger.rounds)
        # A finished job given more rounds must evaluate its new final model too.
        self.final_evaluated = (
            bool(snapshot.state.get("finalEvaluated")) and self.completed >= self.rounds
        )
        log.info("resumed from checkpoint: %d of %d rounds completed", self.completed, self.rounds)

    def identity(self) -> dict[str, Any]:
        spec = self.job.to_dict()["spec"]
        identity = {k: spec.get(k) for k in ("model", "labels", "strategy", "task")}
        # Where round 0 came from is no part of it: a resumed job ignores model.init.
        identity["model"] = {k: v for k, v in spec["model"].items() if k != "init"}
        return identity

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            stopped = None
            while self.completed < self.rounds and self.phase is not Phase.FAILED:
                if (stopped := self._privacy_exhausted()) is not None:
                    break
                await self._play_round()
            await self._await_persist()
            if self.phase is Phase.FAILED:
                return
            if self.job.spec.evaluation.federated and not self.final_evaluated:
                await self._final_evaluation()
            self._set_phase(Phase.DONE, stopped or f"completed {self.completed} rounds")
        except Exception as error:  # the job must end visibly, never hang
            log.exception("the round engine failed")
            self._fail(f"internal error: {error}")

    async def _play_round(self) -> None:
        clients = self.job.spec.clients
        needed = max(clients.min_clients, self.strategy.rule.min_updates())
        reason, attempt = "", 0
        for attempt in range(1, clients.max_round_retries + 2):
            present = await self._await_clients(needed)
            self._open_round(present, attempt)
            await self._await_answers()
            async with self._fold_lock:  # lets folds in flight finish; later uploads get 409
                reports = list(self._reports.values())
                aggregate, accumulator = self._aggregate, self._accumulator
                self._close_round()
            if len(reports) >= needed and aggregate is not None and accumulator is not None:
                try:
                    await self._complete_round(aggregate, accumulator, reports, attempt)
                    return
                except AggregationError as error:
                    reason = str(error)
                    self.spare.retire(accumulator)
            else:
                if accumulator is not None:
                    self.spare.retire(accumulator)
                reason = (
                    f"{len(reports)} of {len(self._sampled_last)} sampled clients answered "
                    f"before the deadline; at least {needed} are needed"
                )
            log.warning("round %d attempt %d failed: %s", self.current_round, attempt, reason)
            self.message = f"round {self.current_round} retried: {reason}"
        self._fail(f"round {self.current_round} failed {attempt} times: {reason}")

    def _privacy_exhausted(self) -> str | None:
        """Why the job stops before the next round: it would spend more than targetEpsilon."""
        privacy = self.privacy
        if privacy is None or privacy.spec.target_epsilon is None:
            return None
        # The most clients a round can sample: the preview never underestimates epsilon.
        most = min(self.job.spec.clients.per_round or len(self.sites), len(self.sites))
        after = privacy.epsilon_after_next(sampled=most)
        target = privacy.spec.target_epsilon
        if after is not None and after <= target:
            return None
        message = (
            f"stopped after {self.completed} of {self.rounds} rounds: round "
            f"{self.completed + 1} would spend epsilon {after:.3g} > targetEpsilon {target:g} "
            f"(delta {privacy.spec.delta:g})"
        )
        log.warning("privacy budget: %s", message)
        return message

    async def _await_clients(self, needed: int) -> list[str]:
        self._set_phase(Phase.WAITING, "waiting for clients")
        grace_end = self.clock() + self.job.spec.clients.join_grace_seconds
        while True:
            present = self.present()
            # A site that reported it cannot read its data is not waited for: the grace is
            # for sites on their way, and it would be spent in full on every round. It
            # counts again the moment it reports ready.
            awaited = set(self.sites) - set(self.site_problems())
            # Fewer sites than needed (nodes still joining): wait for more, never fail for it.
            if len(present) >= needed and (awaited <= set(present) or self.clock() >= grace_end):
                return present
            self.message = (
                f"waiting for clients: {len(present)} of {len(self.sites)} present, {needed} needed"
            )
            problems = self.site_problems()
            if problems:
                self.message += f"; {len(problems)} cannot train (see siteErrors)"
            # Arrivals wake this at once; departures are noticed within the timeout.
            await self._wait_changed(min(max(grace_end - self.clock(), 0.05), 0.5))

    def _open_round(self, present: list[str], attempt: int) -> None:
        per_round = self.job.spec.clients.per_round or len(present)
        chooser = random.Random(f"{self.job.spec.seed}:{self.current_round}:{attempt}")
        self._sampled = set(chooser.sample(sorted(present), min(per_round, len(present))))
        self._sampled_last = set(self._sampled)
        self._reports = {}
        self.intake.open_round(self.current_round)
        self._accumulator, self._accumulator_zeroing = self.spare.take()
        self._aggregate = self.strategy.rule.begin(self.layout.views(self._accumulator))
        self.attempt = attempt
        self._round_started = self.clock()
        self._deadline = self._round_started + self.job.spec.clients.round_deadline_seconds
        self._set_phase(
            Phase.TRAINING,
            f"round {self.current_round}: training on {len(self._sampled)} clients",
        )

    async def _await_answers(self) -> None:
        while len(self._reports) < len(self._sampled):
            remaining = self._deadline - self.clock()
            if remaining <= 0:
                return
            await self._wait_changed(remaining)

    def _close_round(self) -> None:
        self.intake.close_round()  # broken uploads parked for it go
        self._sampled = set()
        self._aggregate = None
        self._accumulator = None
        self._set_phase(Phase.WAITING, f"round {self.current_round}: aggregating")

    async def _complete_round(
        self,
        aggregate: RoundAggregate,
        accumulator: bytearray,
        reports: list[ClientReport],
        attempt: int,
    ) -> None:
        started = self.clock()
        await asyncio.to_thread(aggregate.finish)
        spent = None
        if self.privacy is not None:
            sampled = len(self._sampled_last)
            await asyncio.to_thread(
                self.privacy.privatize,
                self.layout.views(accumulator),
                answered=len(reports),
                sampled=sampled,
            )
            spent = self.privacy.spend(sampled=sampled)
            log.info(
                "round %d: privacy spent so far epsilon %s at delta %g",
                self.completed + 1,
                _fmt(spent["epsilon"]),
                spent["delta"],
            )
        await self._await_persist()  # the optimizer state of the last round is on disk
        await asyncio.to_thread(
            self.strategy.optimizer.step,
            global_weights=self._global_views,
            update=self.layout.views(accumulator),
        )
        record = summarize_round(
            round_number=self.completed + 1,
            sampled=sorted(self._sampled_last),
            reports=reports,
            attempts=attempt,
            started_at=time.time() - (self.clock() - self._round_started),
            duration=self.clock() - self._round_started,
            aggregation_seconds=self.clock() - started,
        )
        record.privacy = spent
        retired = self._global  # its last reader, the checkpoint, finished before the step
        self._global, self._global_views = accumulator, self.layout.views(accumulator)
        self.spare.retire(retired)
        self.completed += 1
        self._persist = asyncio.create_task(self._persist_round(record, accumulator))
        self._bump()

    async def _persist_round(self, record: RoundRecord, model: bytearray) -> None:
        if self.evaluator is not None:
            record.central = await asyncio.to_thread(
                self.evaluator.evaluate, self.layout.views(model)
            )
        self.ledger.add_round(record)
        await self._checkpoint(record.round, model)
        self.persisted = record.round
        score = SCORE_OF_TASK[self.job.spec.task]
        log.info(
            "round %d/%d done in %.2fs: %d/%d clients, loss %s, %s %s",
            record.round,
            self.rounds,
            record.duration_seconds,
            len(record.answered),
            len(record.sampled),
            _fmt(record.loss),
            SCORE_TITLES[score],
            _fmt(record.headline()[score]),
        )
        self._bump()

    async def _checkpoint(self, completed: int, model: bytearray) -> None:
        snapshot = Snapshot(
            completed_rounds=completed,
            model=model,
            optimizer_state=self.strategy.optimizer.state_dict(),
            state=self.ledger.state_json()
            | {"identity": self.identity(), "finalEvaluated": self.final_evaluated},
        )
        for attempt in range(1, CHECKPOINT_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(self.store.save, snapshot)
                return
            except OSError as error:  # a full or flaky disk: the round is not lost yet
                self.checkpoint_failures += 1
                if attempt == CHECKPOINT_ATTEMPTS:
                    raise
                delay = min(CHECKPOINT_RETRY_SECONDS * 2 ** (attempt - 1), 30.0)
                log.warning(
                    "checkpoint of round %d failed (attempt %d of %d), retrying in %.0fs: %s",
                    completed,
                    attempt,
                    CHECKPOINT_ATTEMPTS,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)

    async def _await_persist(self) -> None:
        if self._persist is not None:
            task, self._persist = self._persist, None
            await task

    async def _final_evaluation(self) -> None:
        present = self.present()
        if not present:
            return
        self._sampled = set(present)
        self._evaluated = set()
        self._deadline = self.clock() + self.job.spec.clients.round_deadline_seconds
        self._set_phase(Phase.EVALUATING, f"evaluating model {self.completed} on the clients")
        while len(self._evaluated) < len(self._sampled) and self.clock() < self._deadline:
            await self._wait_changed(self._deadline - self.clock())
        self._sampled = set()
        self.final_evaluated = True
        await self._checkpoint(self.completed, self._global)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
