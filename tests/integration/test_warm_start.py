"""Warm start against a real `mlflow server`: a job starts from the model an earlier job
registered, records where it came from, grows its label list, and refuses what does not fit.

One server for the session (conftest.py) and one parent job for the module: the parent
(digits, 2 rounds, 2 sites) registers `parent`; every test starts a child from it.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load

from flotilla.api import load_job
from flotilla.fl.modelstate import build_job_model
from flotilla.tracking.weights import read_weights
from tests.integration.harness import cluster, flotilla, run_tracked, write_job
from tests.integration.mlflow_processes import TrackingServer

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b"]
DIGITS = [str(d) for d in range(10)]
# A learning rate too small to move the weights: a child's round 1 scores as its round 0.
STILL = {"localEpochs": 1, "learningRate": 1e-6, "momentum": 0.0}


@dataclass(frozen=True)
class Parent:
    run_id: str
    accuracy: float  # the final central accuracy
    weights: dict[str, torch.Tensor]


def _job(root: Path, digits_dir: Path, *, name: str, rounds: int, **spec: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    job = write_job(
        root / "job.yaml",
        data_dir=digits_dir,
        sites=SITES,
        rounds=rounds,
        overrides={"tracking": {"experiment": f"exp-{name}", "checkpointEveryRounds": 0}} | spec,
    )
    job.write_text(job.read_text().replace("name: itest", f"name: {name}"))
    return job


def _run(root: Path, job: Path, server: TrackingServer, *extra: str) -> dict[str, Any]:
    return run_tracked(root, job, server.url, *extra)[1]


@pytest.fixture(scope="module")
def parent(
    tmp_path_factory: pytest.TempPathFactory, digits_dir: Path, tracking_server: TrackingServer
) -> Parent:
    root = tmp_path_factory.mktemp("parent")
    summary = _run(root, _job(root, digits_dir, name="parent", rounds=2), tracking_server)
    run_id = summary["mlflowRunId"]
    client = MlflowClient(tracking_server.url)
    path = client.download_artifacts(run_id, "weights/round-000002.safetensors", str(root))
    logged = read_weights(Path(path))
    assert logged.labels == DIGITS
    return Parent(run_id, summary["final"]["central"]["accuracy"], logged.tensors)


def test_a_job_started_from_a_registered_model_starts_at_its_accuracy_and_records_it(
    tmp_path: Path, digits_dir: Path, tracking_server: TrackingServer, parent: Parent
) -> None:
    job = _job(tmp_path, digits_dir, name="child", rounds=1, training=STILL)

    summary = _run(tmp_path, job, tracking_server, "--init", "models:/parent@candidate")

    child = summary["history"][0]["central"]["accuracy"]
    print(f"parent final accuracy {parent.accuracy:.4f}, child round 1 {child:.4f}")
    assert parent.accuracy > 0.6  # far from the 0.1 a model from the seed scores
    assert child == pytest.approx(parent.accuracy, abs=0.01)
    run = MlflowClient(tracking_server.url).get_run(summary["mlflowRunId"])
    assert run.data.params["model.init"] == "models:/parent@candidate"
    assert run.data.params["model.parent"] == "models:/parent/1"
    tags = run.data.tags
    assert tags["flotilla.parent.uri"] == "models:/parent@candidate"
    assert (tags["flotilla.parent.model"], tags["flotilla.parent.version"]) == ("parent", "1")
    assert tags["flotilla.parent.run_id"] == parent.run_id
    assert tags["flotilla.parent.round"] == "2"


def test_a_label_added_at_the_end_keeps_the_parents_rows(
    tmp_path: Path, digits_dir: Path, tracking_server: TrackingServer, parent: Parent
) -> None:
    labels = [*DIGITS, "smudge"]
    job = _job(
        tmp_path,
        digits_dir,
        name="grown",
        rounds=1,
        labels=labels,
        model={"init": f"runs:/{parent.run_id}"},
        evaluation={"testData": None},
    )
    with cluster(tmp_path, job, SITES) as running:
        running.start_aggregator("--tracking-uri", tracking_server.url)
        request = urllib.request.Request(
            f"{running.url}/v1/model/0",
            headers={"Authorization": f"Bearer {running.tokens['site-a']}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            round_zero = load(response.read())
        log = running.log("aggregator")

    seeded = build_job_model(load_job(job)).state_dict()
    output = ("8.weight", "8.bias")  # cnn-small's last layer: one row per label
    for name, tensor in parent.weights.items():
        if name in output:
            assert round_zero[name].shape[0] == len(labels)
            assert torch.equal(round_zero[name][:10], tensor), name
            assert torch.equal(round_zero[name][10:], seeded[name][10:]), name
        else:
            assert torch.equal(round_zero[name], tensor), name
    assert "labels ['smudge'] are new: their rows of 8.weight, 8.bias start from" in log


@pytest.mark.parametrize(
    ("init", "input_channels", "says"),
    [
        (
            "models:/parent/1",
            3,
            "tensor '0.weight' is [16, 1, 3, 3] in the parent and [16, 3, 3, 3] in this job's",
        ),
        ("models:/nobody@candidate", 1, "not found on MLflow at http://127.0.0.1"),
    ],
)
def test_init_that_does_not_fit_stops_the_aggregator_before_its_run_exists(
    tmp_path: Path,
    digits_dir: Path,
    tracking_server: TrackingServer,
    parent: Parent,
    init: str,
    input_channels: int,
    says: str,
) -> None:
    model = {"init": init, "input": {"channels": input_channels, "height": 8, "width": 8}}
    job = _job(tmp_path, digits_dir, name="refused", rounds=1, model=model)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({site: f"token-{site}-0123456789abcdef" for site in SITES}))

    result = subprocess.run(
        flotilla(
            "aggregator",
            "--job",
            str(job),
            "--tokens-file",
            str(tokens),
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            "0",
            "--tracking-uri",
            tracking_server.url,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert f"cannot start the job: spec.model.init {init!r}: " in result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert MlflowClient(tracking_server.url).get_experiment_by_name("exp-refused") is None
