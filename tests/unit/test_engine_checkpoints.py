"""A checkpoint write that fails is retried and counted; one that keeps failing ends the job."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from flotilla.api import load_job
from flotilla.fl.aggregator import persist
from flotilla.fl.aggregator.checkpoint import CheckpointError
from flotilla.fl.aggregator.main import AggregatorOptions, build_engine, serve
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from tests.integration.harness import write_job

JOB = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"


class FlakyStore:
    """Wraps the real store: the first `failures` saves raise as a full disk would."""

    def __init__(self, store: Any, failures: int) -> None:
        self.store, self.failures, self.calls = store, failures, 0

    def save(self, snapshot: Any) -> Path:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(28, "No space left on device")
        path: Path = self.store.save(snapshot)
        return path

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _engine(tmp_path: Path, failures: int) -> tuple[Any, FlakyStore]:
    job = load_job(JOB)
    # No data needed: only checkpoints are exercised.
    evaluation = job.spec.evaluation.model_copy(update={"test_data": None})
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"evaluation": evaluation})})
    engine = build_engine(
        job, sites=["site-a"], options=AggregatorOptions(state_dir=tmp_path, tracking=False)
    )
    flaky = FlakyStore(engine.persister.store, failures)
    engine.persister.store = flaky
    return engine, flaky


def test_a_failed_checkpoint_write_is_retried_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persist, "CHECKPOINT_RETRY_SECONDS", 0.001)
    engine, flaky = _engine(tmp_path, failures=2)

    asyncio.run(engine.persister.checkpoint(0, engine.global_model))

    assert flaky.calls == 3 and engine.persister.failures == 2
    assert any(tmp_path.rglob("LATEST"))  # the third attempt wrote it
    scraped = {
        m.name: m for m in AggregatorMetrics(engine, tracking_failures=lambda: 0).registry.collect()
    }
    assert scraped["flotilla_checkpoint_failures"].samples[0].value == 2
    assert scraped["flotilla_clients_min"].samples[0].value == engine.job.spec.clients.min_clients


def test_a_checkpoint_that_keeps_failing_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(persist, "CHECKPOINT_RETRY_SECONDS", 0.001)
    engine, flaky = _engine(tmp_path, failures=99)

    with pytest.raises(OSError, match="No space left"):
        asyncio.run(engine.persister.checkpoint(0, engine.global_model))
    assert flaky.calls == persist.CHECKPOINT_ATTEMPTS


def _two_rounds_on_disk(tmp_path: Path) -> None:
    engine, _ = _engine(tmp_path, failures=0)
    asyncio.run(engine.persister.checkpoint(1, engine.global_model))
    asyncio.run(engine.persister.checkpoint(2, engine.global_model))


def test_a_checkpoint_the_engine_cannot_restore_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _two_rounds_on_disk(tmp_path)
    state = tmp_path / "checkpoints" / "round-000002" / "state.json"
    # The right shape on the outside, rows the ledger cannot rebuild a round from.
    state.write_text(json.dumps(json.loads(state.read_text()) | {"history": [{"bogus": 1}]}))

    engine, _ = _engine(tmp_path, failures=0)

    assert engine.state.completed == 1
    assert "skipped checkpoint round-000002" in caplog.text


def test_the_job_stops_when_no_checkpoint_is_good(tmp_path: Path) -> None:
    _two_rounds_on_disk(tmp_path)
    for folder in (tmp_path / "checkpoints").glob("round-*"):
        (folder / "model.safetensors").write_bytes(b"\0" * 4)

    with pytest.raises(CheckpointError, match=r"move .* aside to start over"):
        _engine(tmp_path, failures=0)


def test_an_aggregator_with_no_good_checkpoint_stops_saying_which_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_path = write_job(
        tmp_path / "job.yaml",
        data_dir=tmp_path / "data",
        sites=["a"],
        rounds=2,
        overrides={"evaluation": {"testData": None}},
    )
    folder = tmp_path / "state" / "checkpoints" / "round-000001"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"format": 1, "completedRounds": "one"}')
    (folder.parent / "LATEST").write_text("round-000001")

    code = asyncio.run(
        serve(
            load_job(job_path),
            tokens={"a": "t"},
            options=AggregatorOptions(state_dir=tmp_path / "state", tracking=False, port=0),
            on_ready=lambda url: None,
        )
    )

    assert code == 1
    assert "cannot resume the job" in caplog.text and "round-000001/state.json" in caplog.text
