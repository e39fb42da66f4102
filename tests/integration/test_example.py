"""The getting-started job exactly as `make run` runs it: examples/digits.yaml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import flotilla

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"


def _write_and_run(
    tmp_path: Path, example: Path, kind: str, sites: str, **spec: Any
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`flotilla examples KIND` then `flotilla run` on a copy of the example, as the README
    says; `spec`: top-level spec fields set in the copy."""
    job = yaml.safe_load(example.read_text())
    job["spec"] |= spec
    (tmp_path / example.name).write_text(yaml.safe_dump(job))  # its data paths are relative
    out = tmp_path / "data" / kind
    write = subprocess.run(
        flotilla("examples", kind, "--out", str(out), "--sites", sites),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert write.returncode == 0, write.stderr
    return run_example(tmp_path, tmp_path / example.name)


def run_example(
    tmp_path: Path, job: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    run = subprocess.run(
        flotilla(
            "run",
            str(job),
            "--state-dir",
            str(tmp_path / f"state-{job.stem}"),
            "--summary-json",
            str(tmp_path / "summary.json"),
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # make run's default MLflow store is ./mlruns
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary: dict[str, Any] = json.loads((tmp_path / "summary.json").read_text())
    return run, summary


def test_the_digits_example_reaches_093_on_the_held_out_test_split(tmp_path: Path) -> None:
    run, summary = _write_and_run(tmp_path, EXAMPLE, "digits", "site-a,site-b,site-c,site-d")

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


SHAPES = EXAMPLE.parent / "shapes-detection.yaml"


def test_the_shapes_detection_example_improves_map_serves_boxes_and_passes_the_gate(
    tmp_path: Path,
) -> None:
    gated = {"tracking": {"registeredModel": "shapes-detection", "promotion": {}}}
    run, summary = _write_and_run(tmp_path, SHAPES, "shapes", "site-a,site-b,site-c", **gated)

    maps = [row["central"]["map50"] for row in summary["history"]]
    assert len(maps) == 10
    assert maps[-1] >= 0.4 and maps[-1] >= maps[0] + 0.3, maps
    assert min(maps[-3:]) >= 0.3  # settled, not a lucky last round
    assert summary["final"]["federated"]["map50"] > 0.3  # the sites' hold-outs agree
    assert "mAP@0.5" in run.stdout

    # The registered detector, loaded as MLflow serves it: fixed rows of boxes per image.
    import mlflow

    from flotilla.api import load_job
    from flotilla.data import ImageShape, load_site_data

    mlflow.set_tracking_uri(summary["tracking"]["uri"])
    served = mlflow.pyfunc.load_model("models:/shapes-detection@candidate")
    job = load_job(tmp_path / "shapes-detection.yaml")
    test = load_site_data(
        site="test",
        source=job.spec.evaluation.test_data,
        task="detection",
        labels=job.spec.labels,
        shape=ImageShape(channels=3, height=64, width=64),
    ).samples
    rows = served.predict(test.images[:40].numpy())
    assert rows.shape == (40, 20, 6)
    hits = sum(
        _iou(rows[i, 0, :4], test.boxes[i].numpy()).max() >= 0.5
        and int(rows[i, 0, 5]) in test.labels[i].tolist()
        for i in range(40)
    )
    # The best detection of most images is a true box and label. Runs give 29-31 of 40
    # (uploads fold in arrival order, so the rounding, and the model, vary a little);
    # the untrained detector (round 1: mAP 0.0) gets none.
    assert hits >= 26, hits

    # The promotion gate on detection: the first version is the champion; one round that
    # cannot learn (a learning rate of 1e-6) is scored against it on the same test data by
    # mAP@0.5, and refused with both figures.
    assert summary["tracking"]["promotion"]["reason"] == "FirstModel"
    job = yaml.safe_load((tmp_path / SHAPES.name).read_text())
    job["spec"]["rounds"] = 1
    job["spec"]["training"]["learningRate"] = 1e-6
    # What the gate scores is the candidate's mAP on the aggregator's test/, not how it was
    # trained: one site and one epoch at 1e-6 learn as little as three sites and two, and
    # spare two client start-ups and an epoch (the champion's run above is the example's).
    job["spec"]["training"]["localEpochs"] = 1
    job["spec"]["sites"] = job["spec"]["sites"][:1]
    job["spec"]["clients"]["minClients"] = 1
    (tmp_path / "shapes-worse.yaml").write_text(yaml.safe_dump(job))
    worse_run, worse = run_example(tmp_path, tmp_path / "shapes-worse.yaml")
    promotion = worse["tracking"]["promotion"]
    assert (promotion["outcome"], promotion["reason"]) == ("kept", "NotBetter"), promotion
    assert "map50" in promotion["message"], promotion
    assert f"  promotion: kept: {promotion['message']}" in worse_run.stdout
    champion = mlflow.MlflowClient().get_model_version_by_alias("shapes-detection", "champion")
    assert champion.run_id == summary["mlflowRunId"]


def _iou(box: Any, truths: Any) -> Any:
    import numpy as np

    x0, y0 = np.maximum(box[0], truths[:, 0]), np.maximum(box[1], truths[:, 1])
    x1, y1 = np.minimum(box[2], truths[:, 2]), np.minimum(box[3], truths[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (truths[:, 2] - truths[:, 0]) * (truths[:, 3] - truths[:, 1])
    return inter / (area + areas - inter)
