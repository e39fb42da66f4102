"""Shared fixtures: example data written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the internet: MLflow's telemetry is off in this process
# and in every process the tests start (they inherit the environment).
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits as CVAT exports for three sites and a test split."""
    from flotilla.data.digits_example import write_digits_example

    out = tmp_path_factory.mktemp("examples") / "digits"
    write_digits_example(out, sites=["site-a", "site-b", "site-c"], alpha=0.5, seed=1)
    return out
