"""Keeps the job's MLflow run in step with the aggregator's ledger, whatever MLflow does.

The ledger (in memory and in every checkpoint) is the backlog: the exporter holds no
copy of its own, only a cursor (the journal). So an MLflow outage costs no memory
beyond the history the aggregator keeps anyway, survives an aggregator restart, and
never slows a round: the exporter runs beside the engine, sends what the cursor says
is missing, and retries with backoff when MLflow does not answer.

Only what is final is sent: a round's own metrics once its checkpoint is durable (a
round redone after a crash is never logged), its federated evaluation once the next
round is durable (clients evaluate model N as round N+1 starts) or the job is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flotilla.redaction import redact_urls
from flotilla.tracking.backend import CHECKPOINTS_ARTIFACT, RunGone, TrackingBackend
from flotilla.tracking.champion import Candidate
from flotilla.tracking.journal import FILE_NAME as JOURNAL_FILE
from flotilla.tracking.journal import Journal, load_journal, save_journal
from flotilla.tracking.plan import Metric, federated_metrics, round_end_ms, round_metrics
from flotilla.tracking.promotion import Decision, PromotionSettings
from flotilla.tracking.served_model import ServedModel

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
_FINISHED = {"done": "FINISHED", "failed": "FAILED"}


@dataclass(frozen=True)
class TrackingSettings:
    uri: str
    experiment: str
    registered_model: str
    alias: str
    checkpoint_every: int
    run_name: str
    params: Mapping[str, str]
    tags: Mapping[str, str] = field(default_factory=dict)
    # The run's key when the job has one of its own (a cluster's job: from its uid), so a new
    # aggregator with an empty state directory finds the same run; else a random one.
    run_key: str | None = None
    promotion: PromotionSettings | None = None  # the gate before a second alias (promotion.py)


@dataclass(frozen=True)
class JobView:
    """A consistent snapshot of the ledger, taken on the event loop."""

    phase: str  # the engine's phase: waiting, training, evaluating, done, failed
    persisted: int  # rounds whose checkpoint is durable
    history: list[dict[str, Any]]  # the ledger's rows, oldest first
    evaluations: Mapping[int, list[dict[str, Any]]]  # model version -> clients' evaluations
    summary: Mapping[str, Any]
    checkpoint_dir: Path  # holds round-NNNNNN/ directories
    final_model: Callable[[], ServedModel] | None = None  # set once the job is done

    @property
    def finished(self) -> bool:
        return self.phase in _FINISHED


class TrackingExporter:
    def __init__(
        self,
        settings: TrackingSettings,
        *,
        backend: Callable[[], TrackingBackend],
        state_dir: Path,
        gate: Callable[[Candidate], Decision] | None = None,
    ) -> None:
        """`gate`: decides and records the promotion once the model is registered (champion.py);
        None: no promotion."""
        self.settings = settings
        self._gate = gate if settings.promotion is not None else None
        self._make_backend = backend
        self._backend: TrackingBackend | None = None
        self._state_dir = state_dir
        self.journal: Journal = _load_or_restart(state_dir, run_key=settings.run_key)
        self._run_checked = False
        self._last_error: str | None = None
        self._failures = 0
        self.failures_total = 0  # every failed sync since start, for Prometheus
        self._failing_since: float | None = None
        self._pending_rounds = 0
        self._idle = asyncio.Event()

    # -- the loop --------------------------------------------------------------------------

    async def run(
        self,
        *,
        snapshot: Callable[[], JobView],
        wait_change: Callable[[int, float], Awaitable[int]],
    ) -> None:
        """Sync after every change of the ledger until the job is over and all of it is sent."""
        seq, backoff = -1, BACKOFF_FIRST_SECONDS
        while True:
            view = snapshot()
            self._pending_rounds = view.persisted - self.journal.rounds_logged
            if self._behind(view):
                try:
                    await asyncio.to_thread(self.sync, view)
                except Exception as error:  # MLflow down or refusing: keep the job going
                    self._note_failure(error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                    continue
                self._note_success()
                backoff = BACKOFF_FIRST_SECONDS
                self._pending_rounds = view.persisted - self.journal.rounds_logged
            if view.finished and not self._behind(view):
                self._idle.set()
                return
            seq = await wait_change(seq, 30.0)

    async def drain(self, timeout: float) -> bool:
        """Wait until the finished job is all in MLflow; False if that took too long."""
        try:
            async with asyncio.timeout(timeout):  # wait_for may swallow a cancellation (3.11)
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # -- one pass, blocking (a worker thread) -------------------------------------------------

    def sync(self, view: JobView) -> None:
        backend = self._backend or self._make_backend()
        self._backend = backend
        run_id = self._open_run(backend, view)
        # Checkpoints before the rounds' metrics: an aggregator lost between the two then
        # finds a checkpoint no older than the last round MLflow shows, so it plays at most
        # checkpointEveryRounds - 1 rounds again (metrics first, it could be one more).
        self._log_checkpoints(backend, run_id, view)
        self._log_rounds(backend, run_id, view)
        self._log_federated(backend, run_id, view)
        if view.finished:
            self._finish(backend, run_id, view)

    def _open_run(self, backend: TrackingBackend, view: JobView) -> str:
        if self._run_checked and self.journal.run_id is not None:
            return self.journal.run_id
        save_journal(self._state_dir, self.journal)  # the run key is durable before the run
        try:
            experiment_id, run_id = self._open(backend)
        except RunGone as gone:
            log.warning("%s: logging the job again from round 1 in a new run", gone)
            self.journal.forget_run()
            save_journal(self._state_dir, self.journal)
            experiment_id, run_id = self._open(backend)
        self.journal.experiment_id, self.journal.run_id = experiment_id, run_id
        self._log_params(backend, run_id)
        if not view.finished and self.journal.run_status is not None:
            backend.set_run_status(run_id, "RUNNING")  # a finished job resumed with more rounds
            self.journal.run_status = None
        save_journal(self._state_dir, self.journal)
        self._run_checked = True
        log.info("MLflow run %s in experiment %r", run_id, self.settings.experiment)
        return run_id

    def _open(self, backend: TrackingBackend) -> tuple[str, str]:
        return backend.open_run(
            experiment=self.settings.experiment,
            run_id=self.journal.run_id,
            run_key=self.journal.run_key,
            run_name=self.settings.run_name,
            tags=self.settings.tags,
        )

    def _log_params(self, backend: TrackingBackend, run_id: str) -> None:
        # Params are write-once in MLflow; a spec changed between restarts shows as tags.
        logged = backend.logged_params(run_id)
        missing = {k: v for k, v in self.settings.params.items() if k not in logged}
        changed = {
            f"flotilla.changed.{k}": v
            for k, v in self.settings.params.items()
            if k in logged and logged[k] != v
        }
        if missing:
            backend.log_params(run_id, missing)
        if changed:
            log.warning("the spec changed since the run started: %s", sorted(changed))
            backend.set_tags(run_id, changed)

    def _log_rounds(self, backend: TrackingBackend, run_id: str, view: JobView) -> None:
        rows = [
            r for r in view.history if self.journal.rounds_logged < r["round"] <= view.persisted
        ]
        if not rows:
            return
        metrics: list[Metric] = [m for row in rows for m in round_metrics(row)]
        backend.log_metrics(run_id, metrics)
        self.journal.rounds_logged = int(rows[-1]["round"])
        save_journal(self._state_dir, self.journal)

    def _log_federated(self, backend: TrackingBackend, run_id: str, view: JobView) -> None:
        final_through = _federated_final_through(view)
        rows = [
            r for r in view.history if self.journal.federated_logged < r["round"] <= final_through
        ]
        if not rows:
            return
        metrics = [
            m
            for row in rows
            for m in federated_metrics(row, view.evaluations.get(row["round"], []))
        ]
        if metrics:
            backend.log_metrics(run_id, metrics)
        self.journal.federated_logged = int(rows[-1]["round"])
        save_journal(self._state_dir, self.journal)

    def _log_checkpoints(self, backend: TrackingBackend, run_id: str, view: JobView) -> None:
        for round_number in self._checkpoints_due(view):
            directory = view.checkpoint_dir / f"round-{round_number:06d}"
            if directory.is_dir():
                backend.log_artifacts(run_id, directory, f"{CHECKPOINTS_ARTIFACT}/{directory.name}")
            else:  # rotated away while MLflow was down: later ones still go up
                log.warning(
                    "checkpoint of round %d was gone before it could be uploaded", round_number
                )
            self.journal.checkpoints_logged.append(round_number)
            save_journal(self._state_dir, self.journal)

    def wants_checkpoint(self, round_number: int) -> bool:
        """Whether the checkpoint of this round is still to be uploaded (keep it on disk)."""
        every = self.settings.checkpoint_every
        return (
            every > 0
            and round_number % every == 0
            and round_number not in self.journal.checkpoints_logged
        )

    def _checkpoints_due(self, view: JobView) -> list[int]:
        every = self.settings.checkpoint_every
        if every <= 0:
            return []
        done = set(self.journal.checkpoints_logged)
        return [r for r in range(every, view.persisted + 1, every) if r not in done]

    def _finish(self, backend: TrackingBackend, run_id: str, view: JobView) -> None:
        if self.journal.history_logged_at != view.persisted:
            backend.log_dict(run_id, view.summary, "history.json")
            self.journal.history_logged_at = view.persisted
            save_journal(self._state_dir, self.journal)
        if self._registration_due(view):
            assert view.final_model is not None
            name, alias = self.settings.registered_model, self.settings.alias
            version = backend.register_model(
                run_id, view.final_model(), name=name, alias=alias, round_number=view.persisted
            )
            self.journal.registered = {
                "name": name,
                "version": version,
                "alias": alias,
                "round": view.persisted,
            }
            save_journal(self._state_dir, self.journal)
        if self._promotion_due(view):
            self._promote(run_id, view)
        status = _FINISHED[view.phase]
        if self.journal.run_status != status:
            backend.set_run_status(run_id, status)
            self.journal.run_status = status
            save_journal(self._state_dir, self.journal)

    def _registration_due(self, view: JobView) -> bool:
        registered = self.journal.registered
        return (
            view.phase == "done"
            and view.final_model is not None
            and (registered is None or registered.get("round") != view.persisted)
        )

    def _promotion_due(self, view: JobView) -> bool:
        registered, done = self.journal.registered, self.journal.promotion
        return (
            self._gate is not None
            and view.phase == "done"
            and registered is not None
            and registered.get("round") == view.persisted
            and (done is None or done.get("round") != view.persisted)
        )

    def _promote(self, run_id: str, view: JobView) -> None:
        assert self._gate is not None and self.settings.promotion is not None
        assert self.journal.registered is not None
        metric = self.settings.promotion.metric
        last = view.history[-1] if view.history else {}
        score = (last.get("central") or {}).get(metric)
        decision = self._gate(
            Candidate(
                run_id=run_id,
                name=str(self.journal.registered["name"]),
                version=str(self.journal.registered["version"]),
                round=view.persisted,
                score=float(score) if isinstance(score, int | float) else None,
                timestamp_ms=round_end_ms(last) if last else int(time.time() * 1000),
            )
        )
        self.journal.promotion = {"round": view.persisted, **decision.to_json()}
        save_journal(self._state_dir, self.journal)

    def _behind(self, view: JobView) -> bool:
        journal = self.journal
        if not self._run_checked or journal.rounds_logged < view.persisted:
            return True
        if journal.federated_logged < _federated_final_through(view) or self._checkpoints_due(view):
            return True
        if not view.finished:
            return False
        return (
            journal.history_logged_at != view.persisted
            or self._registration_due(view)
            or self._promotion_due(view)
            or journal.run_status != _FINISHED[view.phase]
        )

    # -- health ----------------------------------------------------------------------------

    def _note_failure(self, error: Exception) -> None:
        self._failures += 1
        self.failures_total += 1
        self._last_error = f"{type(error).__name__}: {error}"[:500]
        if self._failing_since is None:
            self._failing_since = time.time()
            log.warning(
                "MLflow at %s did not take the job's records (%s); training goes on and "
                "they are sent when it answers",
                redact_urls(self.settings.uri),
                self._last_error,
            )
        elif self._failures % 10 == 0:
            log.warning("MLflow still failing after %d tries: %s", self._failures, self._last_error)

    def _note_success(self) -> None:
        if self._failing_since is not None:
            log.info("MLflow answers again after %d failed tries; records sent", self._failures)
        self._failures, self._failing_since, self._last_error = 0, None, None

    def status(self, *, persisted: int | None = None) -> dict[str, Any]:
        """For /v1/status and the job's summary; `persisted`: rounds the ledger holds now."""
        if persisted is not None:
            self._pending_rounds = persisted - self.journal.rounds_logged
        if self._failing_since is not None:
            state = "failing"
        elif not self._run_checked:
            state = "connecting"
        else:
            state = "behind" if self._pending_rounds > 0 else "synced"
        return {
            "enabled": True,
            "state": state,
            "uri": redact_urls(self.settings.uri),
            "experiment": self.settings.experiment,
            "experimentId": self.journal.experiment_id,
            "runId": self.journal.run_id,
            "roundsLogged": self.journal.rounds_logged,
            "pendingRounds": max(self._pending_rounds, 0),
            "lastError": self._last_error,
            "failingSince": self._failing_since,
            "registeredModel": self.journal.registered,
            "promotion": self.journal.promotion,
        }


def _load_or_restart(state_dir: Path, *, run_key: str | None) -> Journal:
    fresh = Journal(run_key=run_key) if run_key else Journal()
    try:
        return load_journal(state_dir) or fresh
    except ValueError as error:  # MLflow's bookkeeping must never stop the job
        aside = state_dir / f"{JOURNAL_FILE}.unreadable"
        (state_dir / JOURNAL_FILE).replace(aside)
        # A job with a key of its own finds its run again; resent points are identical.
        where = "its MLflow run, found by its key" if run_key else "a new MLflow run"
        log.warning("%s; moved to %s, the job is recorded again in %s", error, aside, where)
        return fresh


def _federated_final_through(view: JobView) -> int:
    return view.persisted if view.phase == "done" else view.persisted - 1
