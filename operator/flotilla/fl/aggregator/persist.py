"""Completed rounds made durable, and the way back: checkpoint and restore.

A round is aggregated on the round loop's critical path; what follows runs in the
background while the next round trains: the central evaluation (when the spec gives a
test split), the ledger's row, the checkpoint (retried on a full or flaky disk). A round
counts as completed once its checkpoint is durable. One round is kept at a time: the
next one's optimizer step waits for the previous checkpoint (`settle`), whose optimizer
state it would otherwise change under it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.buffer import UpdateBuffer
from flotilla.fl.aggregator.checkpoint import CheckpointError, CheckpointStore, Snapshot
from flotilla.fl.aggregator.evaluation import Evaluator
from flotilla.fl.aggregator.ledger import Ledger
from flotilla.fl.aggregator.privacy import DifferentialPrivacy
from flotilla.fl.aggregator.records import RoundRecord
from flotilla.fl.aggregator.state import EngineState
from flotilla.fl.learning import SCORE_OF_TASK, SCORE_TITLES
from flotilla.fl.strategies.base import ServerOptimizer
from flotilla.fl.wire import Layout

log = logging.getLogger(__name__)

CHECKPOINT_ATTEMPTS = 5
CHECKPOINT_RETRY_SECONDS = 1.0


class Persister:
    def __init__(
        self,
        *,
        job: FederatedJob,
        state: EngineState,
        ledger: Ledger,
        store: CheckpointStore,
        optimizer: ServerOptimizer,
        layout: Layout,
        evaluator: Evaluator | None = None,
        privacy: DifferentialPrivacy | None = None,
        buffer: UpdateBuffer | None = None,
    ) -> None:
        self.store = store
        self.failures = 0  # failed checkpoint writes (retried), for /metrics
        self._job = job
        self._state = state
        self._ledger = ledger
        self._optimizer = optimizer
        self._layout = layout
        self._evaluator = evaluator
        self._privacy = privacy
        self._buffer = buffer  # buffered aggregation: its folded upload ids are kept too
        self._identity: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def keep(self, record: RoundRecord, model: bytearray) -> None:
        """Make the round just aggregated durable, in the background."""
        assert self._task is None, "settle() the previous round first"
        self._task = asyncio.create_task(self._keep(record, model))

    async def settle(self) -> None:
        """Wait for the round in the background (its errors are raised here)."""
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def _keep(self, record: RoundRecord, model: bytearray) -> None:
        if self._evaluator is not None:
            record.central = await asyncio.to_thread(
                self._evaluator.evaluate, self._layout.views(model)
            )
        self._ledger.add_round(record)
        await self.checkpoint(record.round, model)
        self._state.persisted_through(record.round)
        score = SCORE_OF_TASK[self._job.spec.task]
        log.info(
            "round %d/%d done in %.2fs: %d/%d clients, loss %s, %s %s",
            record.round,
            self._state.rounds,
            record.duration_seconds,
            len(record.answered),
            len(record.sampled),
            fmt(record.loss),
            SCORE_TITLES[score],
            fmt(record.headline()[score]),
        )

    async def checkpoint(self, completed: int, model: bytearray) -> None:
        """Write the job as of `completed` rounds with `model`; a failed write is retried
        with backoff (and counted), the last failure raised."""
        state = self._ledger.state_json() | {
            "identity": self.identity(),
            "finalEvaluated": self._state.final_evaluated,
        }
        if self._buffer is not None:
            state["foldedUploads"] = self._buffer.uploads_json()
        snapshot = Snapshot(
            completed_rounds=completed,
            model=model,
            optimizer_state=self._optimizer.state_dict(),
            state=state,
        )
        for attempt in range(1, CHECKPOINT_ATTEMPTS + 1):
            try:
                await asyncio.to_thread(self.store.save, snapshot)
                return
            except OSError as error:  # a full or flaky disk: the round is not lost yet
                self.failures += 1
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

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must share with the job to be resumed by it."""
        # Made once: every round's checkpoint writes it, and dumping the whole spec (its
        # sites too) took milliseconds a round at 1,000 sites.
        if self._identity is None:
            spec = self._job.to_dict()["spec"]
            identity = {k: spec.get(k) for k in ("model", "labels", "strategy", "task")}
            # Where round 0 came from is no part of it: a resumed job ignores model.init.
            identity["model"] = {k: v for k, v in spec["model"].items() if k != "init"}
            self._identity = identity
        return copy.deepcopy(self._identity)

    def restore(self, snapshot: Snapshot) -> None:
        """Take the job up where `snapshot` left it; raises CheckpointError when the
        checkpoint is another job's (the store then tries an older one)."""
        identity = snapshot.state.get("identity")
        if identity != self.identity():
            raise CheckpointError(
                "the checkpoint belongs to a job with another model, labels or strategy "
                f"({identity!r} != {self.identity()!r}); use a fresh --state-dir"
            )
        self._state.restore(
            model=snapshot.model,
            completed=snapshot.completed_rounds,
            final_evaluated=bool(snapshot.state.get("finalEvaluated")),
        )
        self._optimizer.load_state_dict(snapshot.optimizer_state)
        self._ledger.restore(snapshot.state)
        if self._privacy is not None:
            self._privacy.restore(record.to_json() for record in self._ledger.rounds)
        if self._buffer is not None:
            self._buffer.restore_uploads(snapshot.state.get("foldedUploads") or {})
        completed, rounds = snapshot.completed_rounds, self._state.rounds
        log.info("resumed from checkpoint: %d of %d rounds completed", completed, rounds)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
