"""An empty state directory filled from the job's MLflow run: the checkpoint made the latest,
the journal's cursors past what MLflow holds, or a new run when MLflow does not answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flotilla.fl.aggregator.checkpoint import CheckpointStore
from flotilla.fl.aggregator.recovery import needs_recovery, recover
from flotilla.tracking.exporter import TrackingSettings
from flotilla.tracking.journal import Journal, load_journal, save_journal

SETTINGS = TrackingSettings(
    uri="http://mlflow:5000",
    experiment="digits",
    registered_model="digits",
    alias="candidate",
    checkpoint_every=2,
    run_name="digits",
    params={},
    run_key="job-uid-1",
)


class FakeRun:
    """A run with checkpoints of rounds 2 and 4 and metrics up to round 5."""

    def __init__(self, *, found: bool = True) -> None:
        self.found = found

    def find_run(self, *, experiment: str, run_key: str) -> tuple[str, str] | None:
        assert (experiment, run_key) == ("digits", "job-uid-1")
        return ("exp-1", "run-1") if self.found else None

    def checkpoint_rounds(self, run_id: str) -> list[int]:
        return [2, 4]

    def download_checkpoint(self, run_id: str, round_number: int, into: Path) -> Path:
        folder = into / f"round-{round_number:06d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"completedRounds": round_number}))
        return folder

    def last_step(self, run_id: str, key: str) -> int:
        return {"clients.answered": 5, "federated.loss": 4}[key]


def test_only_an_empty_state_dir_of_a_keyed_job_is_recovered(tmp_path: Path) -> None:
    unkeyed = TrackingSettings(**{**SETTINGS.__dict__, "run_key": None})

    assert needs_recovery(tmp_path, SETTINGS)
    assert not needs_recovery(tmp_path, unkeyed)  # a local job: its state dir is all there is
    save_journal(tmp_path, Journal(run_key="job-uid-1"))
    assert not needs_recovery(tmp_path, SETTINGS)


def test_the_latest_checkpoint_becomes_the_state_and_mlflow_steps_are_not_sent_again(
    tmp_path: Path,
) -> None:
    recovered = recover(SETTINGS, FakeRun, state_dir=tmp_path)

    assert recovered is not None
    assert (recovered.run_id, recovered.checkpoint_round, recovered.redone) == ("run-1", 4, 1)
    store = CheckpointStore(tmp_path)
    assert (store.directory / "LATEST").read_text() == "round-000004"
    assert (store.directory / "round-000004" / "state.json").exists()
    journal = load_journal(tmp_path)
    assert journal is not None
    assert (journal.run_key, journal.run_id, journal.experiment_id) == (
        "job-uid-1",
        "run-1",
        "exp-1",
    )
    assert (journal.rounds_logged, journal.federated_logged) == (5, 4)
    assert journal.checkpoints_logged == [2, 4]
    assert not (tmp_path / ".recovering").exists()


def test_a_job_mlflow_does_not_know_starts_fresh(tmp_path: Path) -> None:
    assert recover(SETTINGS, lambda: FakeRun(found=False), state_dir=tmp_path) is None
    assert not CheckpointStore(tmp_path).has_latest()


def test_when_mlflow_does_not_answer_the_job_starts_over_in_a_new_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    waited: list[float] = []

    def down() -> FakeRun:
        raise ConnectionError("connection refused")

    assert recover(SETTINGS, down, state_dir=tmp_path, patience=10, sleep=waited.append) is None

    journal = load_journal(tmp_path)
    assert journal is not None and journal.run_key.startswith("job-uid-1-")
    assert journal.run_id is None
    assert waited and sum(waited) <= 10
    assert "did not answer" in caplog.text and "new run" in caplog.text
