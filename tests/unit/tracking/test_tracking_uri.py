"""Which MLflow server an aggregator records to: the command line, the spec, MLflow's own
variable (a Secret in a cluster), then the cluster's default the operator sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from flotilla.api import load_job
from flotilla.fl.aggregator.tracked import resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[3]


def test_the_job_own_server_wins_over_the_cluster_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = load_job(ROOT / "examples" / "federatedjob.yaml")
    tracking = job.spec.tracking.model_copy(update={"tracking_uri": "http://spec:5000"})
    spec_job = job.model_copy(update={"spec": job.spec.model_copy(update={"tracking": tracking})})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FLOTILLA_DEFAULT_TRACKING_URI", "http://cluster:5000")

    assert resolve_tracking_uri(job, override=None) == "http://cluster:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://secret:5000")
    assert resolve_tracking_uri(job, override=None) == "http://secret:5000"
    assert resolve_tracking_uri(spec_job, override=None) == "http://spec:5000"
    assert resolve_tracking_uri(spec_job, override="http://flag:5000") == "http://flag:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("FLOTILLA_DEFAULT_TRACKING_URI")
    assert resolve_tracking_uri(job, override=None) is None
