"""The round state machine: sample clients, fold their updates as they arrive, close, move on.

One engine per job, driven by `run()`; the HTTP layer only calls into it. A round
opens as soon as the previous one is aggregated: central evaluation and the
checkpoint of round N run in the background while round N+1 trains, and a round
counts as completed (in status and history) once its checkpoint is durable.

Memory: the served global model, one accumulator (which becomes the next global
model in place), and a small pool of receive buffers. Nothing scales with the
number of clients unless the aggregation rule needs every update (median, Krum).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

import torch

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.checkpoint import CheckpointError, CheckpointStore, Snapshot
from flotilla.fl.aggregator.intake import ReceivedUpdate, Rejected, UpdateIntake
from flotilla.fl.aggregator.ledger import Ledger
from flotilla.fl.aggregator.presence import Presence
from flotilla.fl.aggregator.records import ClientReport, RoundRecord, summarize_round
from flotilla.fl.strategies import Strategy
from flotilla.fl.strategies.base import AggregationError, RoundAggregate
from flotilla.fl.wire import Layout, update_layout

log = logging.getLogger(__name__)


class Phase(StrEnum):
    WAITING = "waiting"
    TRAINING = "training"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"


class Evaluator(Protocol):
    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]: ...


class RoundEngine:
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.sites = tuple(sorted(sites))
        self.strategy = strategy
        self.layout = layout
        self.update_layout = update_layout(layout, job.spec.compression.dtype)
        self.store = store
        self.evaluator = evaluator
        self.clock = clock
        self.phase = Phase.WAITING
        self.completed = 0  # global model version: rounds aggregated
        self.persisted = 0  # rounds whose checkpoint is durable
        self.attempt = 0
        self.seq = 0  # bumped on every change that a long-poll may be waiting for
        self.message = "waiting for clients"
        self.failure: str | None = None
        self.ledger = Ledger()
        self.final_evaluated = False
        self._global = initial_model
        self._global_views = layout.views(initial_model)
        self._sampled: set[str] = set()
        self._sampled_last: set[str] = set()
        self._released: set[str] = set()
        self._reports: dict[str, ClientReport] = {}
        self._evaluated: set[str] = set()
        self._aggregate: RoundAggregate | None = None
        self._accumulator: bytearray | None = None
        self._round_started = 0.0
        self._deadline = 0.0
        self._presence = Presence(clock)
        self.intake = UpdateIntake(self.update_layout, max_norm=job.spec.limits.max_update_norm)
        self._changed = asyncio.Event()
        self._fold_lock = asyncio.Lock()
        self._persist: asyncio.Task[None] | None = None
        # What the job's MLflow record says of itself; set by whoever runs the exporter.
        self.tracking_status: Callable[[], dict[str, Any]] = lambda: {"enabled": False}

    @property
    def rounds(self) -> int:
        return self.job.spec.rounds

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    @property
    def global_model(self) -> bytearray:
        """The served global model buffer: replaced, never mutated, once a round completes."""
        return self._global

    @property
    def current_round(self) -> int:
        return min(self.completed + 1, self.rounds)

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
        # A finished job given more rounds must evaluate its new final model too.
        self.final_evaluated = (
            bool(snapshot.state.get("finalEvaluated")) and self.completed >= self.rounds
        )
        log.info("resumed from checkpoint: %d of %d rounds completed", self.completed, self.rounds)

    def identity(self) -> dict[str, Any]:
        spec = self.job.to_dict()["spec"]
        return {k: spec.get(k) for k in ("model", "labels", "strategy", "task")}

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while self.completed < self.rounds and self.phase is not Phase.FAILED:
                await self._play_round()
            await self._await_persist()
            if self.phase is Phase.FAILED:
                return
            if self.job.spec.evaluation.federated and not self.final_evaluated:
                await self._final_evaluation()
            self._set_phase(Phase.DONE, f"completed {self.completed} rounds")
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
            else:
                reason = (
                    f"{len(reports)} of {len(self._sampled_last)} sampled clients answered "
                    f"before the deadline; at least {needed} are needed"
                )
            log.warning("round %d attempt %d failed: %s", self.current_round, attempt, reason)
            self.message = f"round {self.current_round} retried: {reason}"
        self._fail(f"round {self.current_round} failed {attempt} times: {reason}")

    async def _await_clients(self, needed: int) -> list[str]:
        self._set_phase(Phase.WAITING, "waiting for clients")
        grace_end = self.clock() + self.job.spec.clients.join_grace_seconds
        while True:
            present = self.present()
            if len(present) == len(self.sites) or (
                len(present) >= needed and self.clock() >= grace_end
            ):
                return present
            self.message = (
                f"waiting for clients: {len(present)} of {len(self.sites)} present, {needed} needed"
            )
            # Arrivals wake this at once; departures are noticed within the timeout.
            await self._wait_changed(min(max(grace_end - self.clock(), 0.05), 0.5))

    def _open_round(self, present: list[str], attempt: int) -> None:
        per_round = self.job.spec.clients.per_round or len(present)
        chooser = random.Random(f"{self.job.spec.seed}:{self.current_round}:{attempt}")
        self._sampled = set(chooser.sample(sorted(present), min(per_round, len(present))))
        self._sampled_last = set(self._sampled)
        self._reports = {}
        self._accumulator = self.layout.allocate()
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
        self._global, self._global_views = accumulator, self.layout.views(accumulator)
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
        log.info(
            "round %d/%d done in %.2fs: %d/%d clients, loss %s, accuracy %s",
            record.round,
            self.rounds,
            record.duration_seconds,
            len(record.answered),
            len(record.sampled),
            _fmt(record.loss),
            _fmt(record.accuracy),
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
        await asyncio.to_thread(self.store.save, snapshot)

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

    # -- what the HTTP layer calls ---------------------------------------------------------

    def touch(self, site: str, alive: Callable[[], bool]) -> None:
        """Note that `site` is connected; `alive` tells later whether that link still is."""
        if self._presence.touch(site, alive):
            self._bump()

    def present(self) -> list[str]:
        return self._presence.present(self.sites)

    def task_for(self, site: str) -> dict[str, Any]:
        if self.phase is Phase.TRAINING and site in self._sampled and site not in self._reports:
            action = "train"
        elif self.phase is Phase.EVALUATING and site in self._sampled - self._evaluated:
            action = "evaluate"
        elif self.phase in (Phase.DONE, Phase.FAILED):
            action = self.phase.value
            if site not in self._released:
                self._released.add(site)
                self._bump()
        else:
            action = "wait"
        return {
            "action": action,
            "round": self.current_round,
            "rounds": self.rounds,
            "modelVersion": self.completed,
            "deadlineSeconds": max(self._deadline - self.clock(), 0.0),
            "proximalMu": self.strategy.proximal_mu,
        }

    async def wait_task(self, site: str, *, timeout: float) -> dict[str, Any]:
        """The site's next action, once it has one (long-poll): never "wait" before timeout."""
        end = self.clock() + timeout
        while (task := self.task_for(site))["action"] == "wait":
            remaining = end - self.clock()
            if remaining <= 0:
                break
            await self._wait_changed(remaining)
        return task

    async def wait_released(self, *, timeout: float) -> None:
        """Give connected clients a moment to learn that the job ended."""
        end = self.clock() + timeout
        while not set(self.present()) <= self._released and (remaining := end - self.clock()) > 0:
            await self._wait_changed(remaining)

    async def wait_status(self, *, after: int, timeout: float) -> dict[str, Any]:
        end = self.clock() + timeout
        while self.seq <= after and not self.finished and (remaining := end - self.clock()) > 0:
            await self._wait_changed(remaining)
        return self.status()

    def model_payload(self, version: int) -> bytearray:
        if version != self.completed:
            raise Rejected(
                410 if version < self.completed else 404,
                "stale_version" if version < self.completed else "unknown_version",
                f"model version {version} is not served; the current version is {self.completed}",
            )
        return self._global

    async def receive_update(
        self,
        *,
        site: str,
        round_number: int,
        body: AsyncIterator[bytes],
        zstd: bool,
        examples: int,
        metrics: Mapping[str, Any],
    ) -> dict[str, Any]:
        self._check_open(site, round_number)
        async with self.intake.receive(body, zstd=zstd) as received, self._fold_lock:
            self._check_open(site, round_number)  # the round may have closed meanwhile
            await self._fold(site, received, examples, metrics)
        return {"accepted": True, "round": round_number, "updateNorm": received.update.norm}

    async def _fold(
        self, site: str, received: ReceivedUpdate, examples: int, metrics: Mapping[str, Any]
    ) -> None:
        aggregate = self._aggregate
        assert aggregate is not None
        update = received.update
        await asyncio.to_thread(
            aggregate.add, update.tensors, weight=float(examples), scales=update.scales
        )
        train = metrics.get("train", {})
        self._reports[site] = ClientReport(
            site=site,
            examples=examples,
            train_loss=float(train.get("loss", float("nan"))),
            train_accuracy=float(train.get("accuracy", float("nan"))),
            train_seconds=float(train.get("seconds", float("nan"))),
            wire_bytes=received.wire_bytes,
            norm=update.norm,
        )
        self._note_evaluation(site, metrics.get("eval"))
        self._bump()

    def receive_evaluation(self, *, site: str, version: int, metrics: Mapping[str, Any]) -> None:
        if self.phase is not Phase.EVALUATING or site not in self._sampled:
            raise Rejected(409, "not_evaluating", f"no evaluation is requested from {site!r} now")
        if version != self.completed:
            raise Rejected(409, "stale_version", f"evaluation of version {version} is not asked")
        self._note_evaluation(site, dict(metrics) | {"modelVersion": version})
        self._evaluated.add(site)
        self._bump()

    def _note_evaluation(self, site: str, report: Any) -> None:
        if isinstance(report, Mapping) and report.get("modelVersion") == self.completed:
            self.ledger.note_evaluation(site, self.completed, report)

    def _check_open(self, site: str, round_number: int) -> None:
        if self.phase is not Phase.TRAINING or round_number != self.current_round:
            raise Rejected(
                409,
                "round_closed",
                f"round {round_number} is not open (phase {self.phase.value}, "
                f"round {self.current_round})",
            )
        if site not in self._sampled:
            raise Rejected(403, "not_sampled", f"{site!r} was not sampled for round {round_number}")
        if site in self._reports:
            raise Rejected(409, "duplicate", f"{site!r} already sent its update for this round")

    # -- status ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        tracking = self.tracking_status()
        return self.ledger.summary(
            job=self.job.metadata.name,
            phase=self.phase.value,
            failure=self.failure,
            rounds=self.rounds,
        ) | {"mlflowRunId": tracking.get("runId"), "tracking": tracking}

    def status(self) -> dict[str, Any]:
        return {
            "job": self.job.metadata.name,
            "phase": self.phase.value,
            "round": self.current_round,
            "rounds": self.rounds,
            "completedRounds": self.persisted,
            "modelVersion": self.completed,
            "attempt": self.attempt,
            "seq": self.seq,
            "message": self.message,
            "failure": self.failure,
            "clients": {
                "known": len(self.sites),
                "present": len(self.present()),
                "sampled": len(self._sampled),
                "answered": len(self._reports) if self.phase is Phase.TRAINING else 0,
            },
            "lastRound": self.ledger.last_json(),
            "tracking": self.tracking_status(),
        }

    # -- plumbing --------------------------------------------------------------------------

    def _set_phase(self, phase: Phase, message: str) -> None:
        self.phase = phase
        self.message = message
        self._bump()

    def _fail(self, reason: str) -> None:
        self.failure = reason
        log.error("job failed: %s", reason)
        self._set_phase(Phase.FAILED, reason)

    def _bump(self) -> None:
        self.seq += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
