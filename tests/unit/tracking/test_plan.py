"""What MLflow is told about a job: params from the spec, metrics from the ledger's rows."""

from __future__ import annotations

import math
from typing import Any

from flotilla.tracking.plan import (
    PARAM_VALUE_LIMIT,
    federated_metrics,
    job_params,
    round_metrics,
    split_credentials,
)


def _row(round_number: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "round": round_number,
        "sampled": ["a", "b", "c"],
        "answered": ["a", "b"],
        "attempts": 1,
        "started_at": 1_700_000_000.25,
        "duration_seconds": 1.5,
        "aggregation_seconds": 0.01,
        "bytes_received": 1000,
        "train_loss": 0.5,
        "train_accuracy": 0.8,
        "central": {"loss": 0.4, "accuracy": 0.9, "examples": 359.0},
        "federated": {"loss": 0.3, "accuracy": 0.95, "examples": 40.0, "clients": 2.0},
        "clients": {
            "a": {"examples": 10, "loss": 0.5, "accuracy": 0.8, "trainSeconds": 0.2, "bytes": 500},
            "b": {"examples": 20, "loss": math.nan, "accuracy": 0.7, "trainSeconds": 0.3},
        },
    } | extra


def test_the_spec_flattens_to_dotted_params_with_sites_by_name() -> None:
    job = {
        "metadata": {"name": "digits"},
        "spec": {
            "rounds": 10,
            "training": {"learningRate": 0.05, "localEpochs": 3},
            "labels": ["cat", "dog"],
            "evaluation": {"federated": True},
            "sites": [
                {"name": "site-a", "data": {"cvatExport": {"path": "/data/a"}}},
                {"name": "site-b"},
            ],
        },
    }

    params = job_params(job)

    assert params == {
        "job.name": "digits",
        "rounds": "10",
        "training.learningRate": "0.05",
        "training.localEpochs": "3",
        "labels": "cat,dog",
        "evaluation.federated": "true",
        "sites": "site-a,site-b",
        "sites.site-a.data.cvatExport.path": "/data/a",
    }


def test_secrets_never_become_params() -> None:
    job = {
        "metadata": {"name": "j"},
        "spec": {
            "tracking": {"trackingUri": "https://alice:hunter2@mlflow.example:5000/x"},
            "data": {"cvat": {"password": "hunter2", "token": "t0k3n", "credentialsSecret": "s"}},
        },
    }

    params = job_params(job)

    assert "hunter2" not in str(params) and "t0k3n" not in str(params)
    assert params["tracking.trackingUri"] == "https://***@mlflow.example:5000/x"
    assert params["data.cvat.credentialsSecret"] == "s"  # a Secret's name is no secret


def test_long_values_are_cut_to_mlflows_limit() -> None:
    params = job_params({"metadata": {"name": "j"}, "spec": {"labels": ["x" * 50] * 200}})

    assert len(params["labels"]) == PARAM_VALUE_LIMIT
    assert params["labels"].endswith("...(cut)")


def test_a_round_gives_its_metrics_at_its_step_and_its_end_time() -> None:
    metrics = {m.key: m for m in round_metrics(_row())}

    assert {m.step for m in metrics.values()} == {2}
    assert {m.timestamp_ms for m in metrics.values()} == {1_700_000_001_750}
    assert metrics["clients.sampled"].value == 3
    assert metrics["clients.answered"].value == 2
    assert metrics["central.accuracy"].value == 0.9
    assert metrics["round.bytes_received"].value == 1000
    assert metrics["client.a.train_seconds"].value == 0.2
    assert metrics["client.b.examples"].value == 20
    assert "client.b.loss" not in metrics  # NaN: nothing measured, no point
    assert not any(key.startswith("federated.") for key in metrics)  # those come later


def test_the_same_row_gives_the_same_metrics_so_resending_is_harmless() -> None:
    assert round_metrics(_row()) == round_metrics(_row())


def test_federated_metrics_carry_each_clients_evaluation() -> None:
    evaluations = [{"site": "a b", "loss": 0.2, "accuracy": 1.0, "examples": 5}]

    metrics = {m.key: m.value for m in federated_metrics(_row(), evaluations)}

    assert metrics["federated.accuracy"] == 0.95
    assert metrics["client.a b.eval_accuracy"] == 1.0
    assert metrics["client.a b.eval_examples"] == 5


def test_site_names_are_made_safe_for_metric_keys() -> None:
    row = _row(clients={"site:1": {"examples": 1}})

    assert [m.key for m in round_metrics(row) if m.key.startswith("client.")] == [
        "client.site_1.examples"
    ]


def test_credentials_leave_an_http_uri_for_mlflows_own_variables() -> None:
    assert split_credentials("https://bob:p%40ss@mlflow.example:5000/x") == (
        "https://mlflow.example:5000/x",
        "bob",
        "p@ss",
    )
    assert split_credentials("http://mlflow:5000") == ("http://mlflow:5000", None, None)
    assert split_credentials("sqlite:///tmp/m.db") == ("sqlite:///tmp/m.db", None, None)


def test_a_private_round_logs_its_epsilon_and_a_plain_one_does_not() -> None:
    private = {m.key: m.value for m in round_metrics(_row(privacy={"epsilon": 1.5}))}
    assert private["privacy.epsilon"] == 1.5
    assert "privacy.epsilon" not in {m.key for m in round_metrics(_row())}
    assert "privacy.epsilon" not in {m.key for m in round_metrics(_row(privacy={"epsilon": None}))}


def test_a_buffered_server_update_logs_its_staleness_at_its_own_step() -> None:
    buffer = {"updates": [], "stalenessMean": 1.5, "stalenessMax": 3}
    metrics = {m.key: m for m in round_metrics(_row(round_number=7, buffer=buffer))}
    mean = metrics["buffer.staleness_mean"]
    assert (mean.value, mean.step) == (1.5, 7)
    assert metrics["buffer.staleness_max"].value == 3
    assert not {m.key for m in round_metrics(_row())} & {"buffer.staleness_mean"}
