"""The getting-started job exactly as `make run` runs it: examples/digits.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import flotilla

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"


def test_the_digits_example_reaches_093_on_the_held_out_test_split(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "digits.yaml")  # its data paths are relative to it
    write = subprocess.run(
        flotilla(
            "examples",
            "digits",
            "--out",
            str(tmp_path / "data" / "digits"),
            "--sites",
            "site-a,site-b,site-c,site-d",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert write.returncode == 0, write.stderr

    run = subprocess.run(
        flotilla(
            "run",
            str(tmp_path / "digits.yaml"),
            "--state-dir",
            str(tmp_path / "state"),
            "--summary-json",
            str(tmp_path / "summary.json"),
        ),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # make run's default MLflow store is ./mlruns
    )

    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["roundsCompleted"] == 10
    assert summary["final"]["central"]["accuracy"] >= 0.93
    assert summary["final"]["central"]["examples"] > 300  # the held-out split, not a site's
    assert "round  10/10" in run.stdout and "test accuracy" in run.stdout
    tracking = summary["tracking"]
    assert tracking["state"] == "synced", tracking
    assert tracking["uri"] == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert tracking["registeredModel"]["alias"] == "candidate"
    assert summary["mlflowRunId"] == tracking["runId"]
    assert "MLflow run" in run.stdout
