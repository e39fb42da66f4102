"""An aggregator whose state directory is empty picks its job up from MLflow.

A replaced pod whose state was kept in the pod (`storage.ephemeral`), or a lost volume,
starts with nothing on disk. When the job has a uid (a cluster's job) and MLflow holds its
run (tagged with a key made from that uid), the aggregator downloads the latest checkpoint
logged there (every `spec.tracking.checkpointEveryRounds`), makes it its own and goes on in
the same run. The rounds after that checkpoint are played again, at most
`checkpointEveryRounds - 1` of them; MLflow keeps what it already holds of them, so no
metric step is logged twice.

MLflow is given a short while to answer (RECOVERY_SECONDS, well inside the pod's liveness
probe). If it does not, the job starts over rather than wait; the run key then gets a
suffix, so the new play never writes into the steps of the old run.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flotilla.fl.aggregator.checkpoint import CheckpointStore
from flotilla.redaction import redact_urls
from flotilla.tracking.backend import RecoveryBackend
from flotilla.tracking.exporter import TrackingSettings
from flotilla.tracking.journal import Journal, load_journal, save_journal

log = logging.getLogger(__name__)

RECOVERY_SECONDS = 30.0
# Logged for every round of every job: the highest step is the last round MLflow holds.
ROUND_KEY = "clients.answered"
FEDERATED_KEY = "federated.loss"


@dataclass(frozen=True)
class Recovered:
    run_id: str
    checkpoint_round: int  # 0: the run held no checkpoint yet
    logged_through: int  # the last round whose metrics MLflow holds

    @property
    def redone(self) -> int:
        return max(self.logged_through - self.checkpoint_round, 0)


def needs_recovery(state_dir: Path, settings: TrackingSettings) -> bool:
    """Nothing on disk (no checkpoint, no journal) for a job MLflow may know by its key."""
    if settings.run_key is None or CheckpointStore(state_dir).has_latest():
        return False
    try:
        return load_journal(state_dir) is None
    except ValueError:
        return False  # an unreadable journal is the exporter's to set aside


def recover(
    settings: TrackingSettings,
    backend: Callable[[], RecoveryBackend],
    *,
    state_dir: Path,
    patience: float = RECOVERY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> Recovered | None:
    """Fill `state_dir` from the job's MLflow run, if there is one. Blocking."""
    started, slept, delay = time.monotonic(), 0.0, 1.0
    while True:
        try:
            return _recover(settings, backend(), state_dir=state_dir)
        except Exception as error:  # MLflow down or refusing: never a reason not to start
            spent = max(time.monotonic() - started, slept)  # calls may time out slowly
            if spent + delay > patience:
                fresh_key = f"{settings.run_key}-{secrets.token_hex(4)}"
                save_journal(state_dir, Journal(run_key=fresh_key))
                log.warning(
                    "MLflow at %s did not answer in %.0fs (%s): the job starts over from "
                    "round 1 in a new run; a run of its earlier play is left as it is",
                    redact_urls(settings.uri),
                    patience,
                    f"{type(error).__name__}: {error}"[:300],
                )
                return None
            sleep(delay)
            slept += delay
            delay = min(delay * 2, 8.0)


def _recover(
    settings: TrackingSettings, backend: RecoveryBackend, *, state_dir: Path
) -> Recovered | None:
    assert settings.run_key is not None
    found = backend.find_run(experiment=settings.experiment, run_key=settings.run_key)
    if found is None:
        return None
    experiment_id, run_id = found
    rounds = backend.checkpoint_rounds(run_id)
    latest = rounds[-1] if rounds else 0
    if latest:
        staging = state_dir / ".recovering"
        shutil.rmtree(staging, ignore_errors=True)
        folder = backend.download_checkpoint(run_id, latest, staging)
        CheckpointStore(state_dir).adopt(folder, latest)
        shutil.rmtree(staging, ignore_errors=True)
    logged = backend.last_step(run_id, ROUND_KEY)
    # Clients evaluate round N's model as round N+1 runs: those of the checkpoint's round
    # may be missing, those before it are in MLflow (or were never measured).
    federated = max(backend.last_step(run_id, FEDERATED_KEY), latest - 1, 0)
    journal = Journal(
        run_key=settings.run_key,
        run_id=run_id,
        experiment_id=experiment_id,
        rounds_logged=logged,
        federated_logged=min(federated, logged),
        checkpoints_logged=rounds,
    )
    save_journal(state_dir, journal)
    recovered = Recovered(run_id=run_id, checkpoint_round=latest, logged_through=logged)
    log.info(
        "the state directory was empty: restored round %d from MLflow run %s; %d rounds "
        "after it are played again (MLflow keeps what it has of them)",
        latest,
        run_id,
        recovered.redone,
    )  # "rounds" even for one: tests and operators read this line by its words
    return recovered
