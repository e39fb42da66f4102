"""The round engine's state and what every part of it shares: phase, clients, status, wake-ups.

`RoundEngine` (engine.py) plays the rounds, `ClientDesk` (desk.py) answers clients;
both work on this state, on one event loop, so no locks are needed beyond the fold lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

import torch

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.checkpoint import CheckpointStore
from flotilla.fl.aggregator.intake import UpdateIntake
from flotilla.fl.aggregator.ledger import Ledger
from flotilla.fl.aggregator.presence import Presence
from flotilla.fl.aggregator.privacy import DifferentialPrivacy
from flotilla.fl.aggregator.records import ClientReport
from flotilla.fl.aggregator.spare import SpareModelBuffer
from flotilla.fl.strategies import Strategy
from flotilla.fl.strategies.base import RoundAggregate
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


class EngineState:
    """The job's live state: one instance, shared by the round loop and the client desk."""

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
        self.checkpoint_failures = 0  # failed checkpoint writes (retried), for /metrics
        self._global = initial_model
        self._global_views = layout.views(initial_model)
        self._sampled: set[str] = set()
        self._sampled_last: set[str] = set()
        self._released: set[str] = set()
        self._reports: dict[str, ClientReport] = {}
        self._evaluated: set[str] = set()
        self._aggregate: RoundAggregate | None = None
        self._accumulator: bytearray | None = None
        self._accumulator_zeroing: asyncio.Task[None] | None = None  # folds wait for it
        self.spare = SpareModelBuffer(layout)
        self._round_started = 0.0
        self._deadline = 0.0
        self._presence = Presence(clock)
        # What each client said of its data: {"ready": True, "data": ...} or an error. A
        # site counts as present only once it said its data is ready: a client whose CVAT
        # refuses it is connected, but the rounds go on without it.
        self.site_reports: dict[str, dict[str, Any]] = {}
        privacy = job.spec.privacy
        self.privacy = (
            DifferentialPrivacy(privacy, clients=max(len(self.sites), 1))
            if privacy is not None
            else None
        )
        self.intake = UpdateIntake(
            self.update_layout,
            max_norm=job.spec.limits.max_update_norm,
            parking=store.directory.parent / "uploads",  # broken uploads, until resumed
        )
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

    def set_sites(self, sites: Sequence[str]) -> None:
        """The sites in force now (a node joined or left, tokens rotated). A site that left
        is no longer waited for in the round or evaluation it was sampled for."""
        new = tuple(sorted(set(sites)))
        gone = set(self.sites) - set(new)
        self.sites = new
        for site in gone:
            self.site_reports.pop(site, None)
            if site not in self._reports:
                self._sampled.discard(site)
        if self.privacy is not None:
            # The sampling rate of the next rounds; the accountant keeps each past round's.
            self.privacy.clients = max(len(new), 1)
        self._bump()

    def touch(self, site: str, alive: Callable[[], bool]) -> None:
        """Note that `site` is connected; `alive` tells later whether that link still is."""
        if self._presence.touch(site, alive):
            self._bump()

    def present(self) -> list[str]:
        """Connected sites whose data is ready: the ones rounds may sample."""
        return [s for s in self.connected() if self.is_ready(s)]

    def connected(self) -> list[str]:
        """Every site with a live link, ready or not (a site whose data fails stays connected)."""
        return self._presence.present(self.sites)

    def is_ready(self, site: str) -> bool:
        return bool(self.site_reports.get(site, {}).get("ready"))

    def label_mismatches(self) -> dict[str, dict[str, Any]]:
        """Ready sites whose CVAT labels differ from the job's: what was ignored, what is absent."""
        out = {}
        for site, report in sorted(self.site_reports.items()):
            data = report.get("data") or {}
            ignored, missing = data.get("ignoredLabels") or {}, data.get("missingLabels") or []
            if ignored or missing:
                out[site] = {"ignored": ignored, "missing": missing}
        return out

    def site_problems(self) -> dict[str, str]:
        return {
            site: str(report.get("error"))
            for site, report in sorted(self.site_reports.items())
            if not report.get("ready")
        }

    # -- status ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        tracking = self.tracking_status()
        return self.ledger.summary(
            job=self.job.metadata.name,
            phase=self.phase.value,
            failure=self.failure,
            rounds=self.rounds,
        ) | {
            "mlflowRunId": tracking.get("runId"),
            "tracking": tracking,
            "sites": dict(sorted(self.site_reports.items())),
            "privacy": self.privacy.status() if self.privacy is not None else None,
        }

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
            "siteErrors": self.site_problems(),
            "labelMismatches": self.label_mismatches(),
            "privacy": self.privacy.status() if self.privacy is not None else None,
            "links": self.intake.links.json(),
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
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the
        # event is set, and the engine then ran on to its round deadline instead of stopping.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()
