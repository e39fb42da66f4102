"""The exporter against a fake MLflow: what is sent when, and what an outage or restart does."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from flotilla.tracking.backend import RunGone
from flotilla.tracking.exporter import JobView, TrackingExporter, TrackingSettings
from flotilla.tracking.journal import load_journal
from flotilla.tracking.plan import Metric
from flotilla.tracking.served_model import ServedModel


class FakeMlflow:
    """An in-memory tracking server that can be switched off."""

    def __init__(self) -> None:
        self.up = True
        self.runs: dict[str, dict[str, Any]] = {}
        self.metrics: list[tuple[str, Metric]] = []
        self.artifacts: list[tuple[str, str]] = []
        self.versions: list[dict[str, Any]] = []

    def _check(self) -> None:
        if not self.up:
            raise ConnectionError("connection refused")

    def open_run(
        self,
        *,
        experiment: str,
        run_id: str | None,
        run_key: str,
        run_name: str,
        tags: Mapping[str, str],
    ) -> tuple[str, str]:
        self._check()
        if run_id is not None:
            if run_id not in self.runs:
                raise RunGone(f"run {run_id} is gone")
            return "1", run_id
        for existing, run in self.runs.items():
            if run["tags"].get("flotilla.run_key") == run_key:
                return "1", existing
        new = f"run-{len(self.runs) + 1}"
        self.runs[new] = {"params": {}, "tags": dict(tags) | {"flotilla.run_key": run_key}}
        self.runs[new]["status"] = "RUNNING"
        return "1", new

    def logged_params(self, run_id: str) -> dict[str, str]:
        self._check()
        return dict(self.runs[run_id]["params"])

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        self._check()
        self.runs[run_id]["params"].update(params)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._check()
        self.runs[run_id]["tags"].update(tags)

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
        self._check()
        self.metrics += [(run_id, m) for m in metrics]

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self._check()
        self.artifacts.append((run_id, artifact_path))

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self._check()
        self.artifacts.append((run_id, artifact_file))

    def set_run_status(self, run_id: str, status: str) -> None:
        self._check()
        self.runs[run_id]["status"] = status

    def register_model(
        self, run_id: str, model: ServedModel, *, name: str, alias: str, round_number: int
    ) -> str:
        self._check()
        self.versions.append({"run": run_id, "round": round_number, "alias": alias})
        return str(len(self.versions))

    def steps(self, key: str) -> list[int]:
        return sorted(m.step for _, m in self.metrics if m.key == key)


def _row(round_number: int) -> dict[str, Any]:
    return {
        "round": round_number,
        "sampled": ["a"],
        "answered": ["a"],
        "attempts": 1,
        "started_at": 1000.0 + round_number,
        "duration_seconds": 0.5,
        "aggregation_seconds": 0.01,
        "bytes_received": 10,
        "train_loss": 0.5,
        "train_accuracy": 0.5,
        "central": {"accuracy": 0.5},
        "federated": {"accuracy": 0.6},
        "clients": {"a": {"examples": 3}},
    }


def _view(tmp_path: Path, persisted: int, phase: str = "training", **extra: Any) -> JobView:
    return JobView(
        phase=phase,
        persisted=persisted,
        history=[_row(r) for r in range(1, persisted + 1)],
        evaluations={},
        summary={"rounds": persisted},
        checkpoint_dir=tmp_path / "checkpoints",
        **extra,
    )


def _exporter(tmp_path: Path, mlflow: FakeMlflow, **settings: Any) -> TrackingExporter:
    defaults: dict[str, Any] = {
        "uri": "http://mlflow:5000",
        "experiment": "e",
        "registered_model": "m",
        "alias": "candidate",
        "checkpoint_every": 0,
        "run_name": "job",
        "params": {"rounds": "3"},
    }
    return TrackingExporter(
        TrackingSettings(**(defaults | settings)), backend=lambda: mlflow, state_dir=tmp_path
    )


def _model() -> ServedModel:
    return ServedModel(module=None, input_shape=(1, 8, 8), labels=["a"])  # type: ignore[arg-type]


def test_a_round_is_sent_once_durable_and_its_federated_metrics_a_round_later(
    tmp_path: Path,
) -> None:
    mlflow = FakeMlflow()
    exporter = _exporter(tmp_path, mlflow)

    exporter.sync(_view(tmp_path, persisted=1))
    assert mlflow.steps("central.accuracy") == [1]
    assert mlflow.steps("federated.accuracy") == []

    exporter.sync(_view(tmp_path, persisted=2))
    assert mlflow.steps("central.accuracy") == [1, 2]
    assert mlflow.steps("federated.accuracy") == [1]
    assert mlflow.runs["run-1"]["params"] == {"rounds": "3"}


def test_the_finished_job_gets_its_last_metrics_history_model_and_status(tmp_path: Path) -> None:
    mlflow = FakeMlflow()
    exporter = _exporter(tmp_path, mlflow)

    exporter.sync(_view(tmp_path, persisted=3, phase="done", final_model=_model))
    exporter.sync(_view(tmp_path, persisted=3, phase="done", final_model=_model))

    assert mlflow.steps("federated.accuracy") == [1, 2, 3]
    assert mlflow.steps("central.accuracy") == [1, 2, 3]
    assert ("run-1", "history.json") in mlflow.artifacts
    assert mlflow.versions == [{"run": "run-1", "round": 3, "alias": "candidate"}]
    assert mlflow.runs["run-1"]["status"] == "FINISHED"
    assert exporter.status()["registeredModel"]["version"] == "1"


def test_a_failed_job_is_marked_failed_and_registers_nothing(tmp_path: Path) -> None:
    mlflow = FakeMlflow()
    exporter = _exporter(tmp_path, mlflow)

    exporter.sync(_view(tmp_path, persisted=2, phase="failed"))

    assert mlflow.runs["run-1"]["status"] == "FAILED"
    assert mlflow.versions == []
    assert mlflow.steps("federated.accuracy") == [1]


def test_a_restarted_exporter_continues_the_run_and_sends_nothing_twice(tmp_path: Path) -> None:
    mlflow = FakeMlflow()
    _exporter(tmp_path, mlflow).sync(_view(tmp_path, persisted=2))

    _exporter(tmp_path, mlflow).sync(_view(tmp_path, persisted=3))

    assert list(mlflow.runs) == ["run-1"]
    assert mlflow.steps("central.accuracy") == [1, 2, 3]


def test_a_run_created_before_a_crash_is_found_by_its_key_not_created_again(
    tmp_path: Path,
) -> None:
    mlflow = FakeMlflow()
    first = _exporter(tmp_path, mlflow)
    first.sync(_view(tmp_path, persisted=1))
    journal = load_journal(tmp_path)
    assert journal is not None
    journal_text = (tmp_path / "tracking.json").read_text()
    # As if the aggregator died after creating the run, before writing down its id.
    (tmp_path / "tracking.json").write_text(journal_text.replace(f'"{journal.run_id}"', "null", 1))

    _exporter(tmp_path, mlflow).sync(_view(tmp_path, persisted=2))

    assert list(mlflow.runs) == ["run-1"]


def test_a_run_missing_on_the_server_starts_a_new_one_with_the_whole_history(
    tmp_path: Path,
) -> None:
    mlflow = FakeMlflow()
    _exporter(tmp_path, mlflow).sync(_view(tmp_path, persisted=2))
    mlflow.runs.clear()
    mlflow.metrics.clear()

    _exporter(tmp_path, mlflow).sync(_view(tmp_path, persisted=3))

    assert list(mlflow.runs) == ["run-1"]
    assert mlflow.steps("central.accuracy") == [1, 2, 3]


def test_a_changed_spec_is_tagged_since_params_are_write_once(tmp_path: Path) -> None:
    mlflow = FakeMlflow()
    _exporter(tmp_path, mlflow).sync(_view(tmp_path, persisted=1))

    _exporter(tmp_path, mlflow, params={"rounds": "5", "seed": "1"}).sync(
        _view(tmp_path, persisted=1)
    )

    run = mlflow.runs["run-1"]
    assert run["params"] == {"rounds": "3", "seed": "1"}
    assert run["tags"]["flotilla.changed.rounds"] == "5"


def test_checkpoints_every_n_rounds_are_uploaded_and_kept_until_then(tmp_path: Path) -> None:
    for round_number in (2, 3, 4):
        (tmp_path / "checkpoints" / f"round-{round_number:06d}").mkdir(parents=True)
    mlflow = FakeMlflow()
    exporter = _exporter(tmp_path, mlflow, checkpoint_every=2)
    assert exporter.wants_checkpoint(2) and not exporter.wants_checkpoint(3)

    exporter.sync(_view(tmp_path, persisted=4))

    assert [path for _, path in mlflow.artifacts] == [
        "checkpoints/round-000002",
        "checkpoints/round-000004",
    ]
    assert not exporter.wants_checkpoint(2)


def test_an_outage_keeps_training_going_and_sends_every_round_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flotilla.tracking.exporter.BACKOFF_FIRST_SECONDS", 0.001)
    mlflow = FakeMlflow()
    # The job moves on one round per look, finished at round 5; MLflow is down for rounds 1-3.
    views = [_view(tmp_path, persisted=r) for r in range(0, 5)]
    views.append(_view(tmp_path, persisted=5, phase="done", final_model=_model))
    exporter = _exporter(tmp_path, mlflow)
    seen: list[dict[str, Any]] = []
    looks = 0

    def snapshot() -> JobView:
        nonlocal looks
        view = views[min(looks, len(views) - 1)]
        looks += 1
        mlflow.up = not 1 <= view.persisted <= 3
        seen.append(exporter.status(persisted=view.persisted))
        return view

    async def wait_change(seq: int, timeout: float) -> int:
        return seq + 1

    asyncio.run(asyncio.wait_for(exporter.run(snapshot=snapshot, wait_change=wait_change), 30))

    failing = [s for s in seen if s["state"] == "failing"]
    assert failing and failing[-1]["lastError"] == "ConnectionError: connection refused"
    assert max(s["pendingRounds"] for s in failing) >= 2
    assert mlflow.steps("central.accuracy") == [1, 2, 3, 4, 5]
    assert mlflow.steps("federated.accuracy") == [1, 2, 3, 4, 5]
    assert exporter.status()["state"] == "synced"
    assert len(mlflow.versions) == 1


@pytest.mark.parametrize("text", ["{", "[1, 2]"])
def test_an_unreadable_journal_is_an_error_naming_it(tmp_path: Path, text: str) -> None:
    (tmp_path / "tracking.json").write_text(text)

    with pytest.raises(ValueError, match=r"tracking\.json"):
        load_journal(tmp_path)


def test_an_unreadable_journal_is_set_aside_and_the_job_recorded_afresh(tmp_path: Path) -> None:
    (tmp_path / "tracking.json").write_text("{")
    mlflow = FakeMlflow()

    _exporter(tmp_path, mlflow).sync(_view(tmp_path, persisted=1))

    assert (tmp_path / "tracking.json.unreadable").read_text() == "{"
    assert mlflow.steps("central.accuracy") == [1]


def test_a_keyed_job_with_an_unreadable_journal_finds_its_run_again(tmp_path: Path) -> None:
    mlflow = FakeMlflow()
    _exporter(tmp_path, mlflow, run_key="job-uid-1").sync(_view(tmp_path, persisted=1))
    (tmp_path / "tracking.json").write_text("{")

    again = _exporter(tmp_path, mlflow, run_key="job-uid-1")
    again.sync(_view(tmp_path, persisted=2))

    assert len(mlflow.runs) == 1  # the cluster job's run, found by its key
    assert again.journal.run_key == "job-uid-1"


def test_a_round_checkpoint_goes_up_before_that_round_metrics(tmp_path: Path) -> None:
    """An aggregator lost between the two uploads finds a checkpoint no older than the last
    round MLflow shows: it plays at most checkpointEveryRounds - 1 rounds again."""
    calls: list[str] = []

    class Recording(FakeMlflow):
        def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
            super().log_metrics(run_id, metrics)
            calls.append("metrics")

        def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
            super().log_artifacts(run_id, local_dir, artifact_path)
            calls.append(artifact_path)

    (tmp_path / "checkpoints" / "round-000002").mkdir(parents=True)
    exporter = _exporter(tmp_path, Recording(), checkpoint_every=2)

    exporter.sync(_view(tmp_path, persisted=2))

    assert calls[0] == "checkpoints/round-000002", calls
    assert "metrics" in calls
