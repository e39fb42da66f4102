"""The promotion gate against a real `mlflow server`: the first version of a name becomes the
champion, a better one takes the alias, a worse one is refused with both figures, and a
champion the gate cannot read keeps its alias.

One server for the session (conftest.py), under model names of this module's own; the
jobs of the first test build on each other (digits, 2 sites, 1-2 rounds each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.harness import run_tracked, write_job
from tests.integration.mlflow_processes import TrackingServer

pytestmark = pytest.mark.integration

SITES = ["site-a", "site-b"]
# A weak first champion: one short round at a small learning rate.
WEAK = {"localEpochs": 1, "learningRate": 0.01, "momentum": 0.0}
# Too small a learning rate to move the seed's weights: a model far worse than any champion.
STILL = {"localEpochs": 1, "learningRate": 1e-6, "momentum": 0.0}


def _run(
    root: Path, digits_dir: Path, server: TrackingServer, *extra: str, model: str, **spec: Any
) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    tracking = {
        "experiment": f"exp-{root.name}",
        "checkpointEveryRounds": 0,
        "registeredModel": model,
        "promotion": {},
    }
    job = write_job(
        root / "job.yaml",
        data_dir=digits_dir,
        sites=SITES,
        rounds=spec.pop("rounds", 1),
        overrides={"tracking": tracking} | spec,
    )
    result, summary = run_tracked(root, job, server.url, *extra)
    promotion = summary["tracking"]["promotion"]
    assert f"  promotion: {promotion['outcome']}: {promotion['message']}" in result.stdout
    return summary


def _final(summary: dict[str, Any]) -> float:
    return float(summary["history"][-1]["central"]["accuracy"])


def test_the_alias_moves_to_a_better_version_and_stays_for_a_worse_one(
    tmp_path: Path, digits_dir: Path, tracking_server: TrackingServer
) -> None:
    client = MlflowClient(tracking_server.url)

    first = _run(tmp_path / "first", digits_dir, tracking_server, model="gate", training=WEAK)
    better = _run(
        tmp_path / "better",
        digits_dir,
        tracking_server,
        "--init",
        "models:/gate@champion",
        model="gate",
        rounds=2,
    )
    after_better = client.get_model_version_by_alias("gate", "champion").version
    worse = _run(tmp_path / "worse", digits_dir, tracking_server, model="gate", training=STILL)

    print(
        f"accuracy: first {_final(first):.4f}, better {_final(better):.4f}, "
        f"worse {_final(worse):.4f}"
    )
    assert first["tracking"]["promotion"]["reason"] == "FirstModel"
    promoted = better["tracking"]["promotion"]
    assert (promoted["outcome"], promoted["reason"], promoted["version"]) == (
        "promoted",
        "Better",
        "2",
    )
    # Like for like: the champion scored by the gate is the first job's own final evaluation.
    assert promoted["championScore"] == (pytest.approx(_final(first), abs=1e-6))
    assert after_better == "2"
    refused = worse["tracking"]["promotion"]
    assert (refused["outcome"], refused["reason"]) == ("kept", "NotBetter")
    assert refused["score"] == pytest.approx(_final(worse))
    assert refused["championScore"] == pytest.approx(_final(better), abs=1e-6)
    assert f"{_final(worse):.4f} against {_final(better):.4f} for version 2" in refused["message"]
    # The registration alias still moves with every version; the champion's does not.
    assert client.get_model_version_by_alias("gate", "candidate").version == "3"
    assert client.get_model_version_by_alias("gate", "champion").version == "2"
    run = client.get_run(worse["mlflowRunId"])
    assert run.data.tags["flotilla.promotion"] == "kept"
    assert run.data.tags["flotilla.promotion.reason"] == "NotBetter"
    assert run.data.tags["flotilla.promotion.champion_version"] == "2"
    assert run.data.metrics["promotion.candidate.accuracy"] == pytest.approx(_final(worse))
    assert run.data.metrics["promotion.champion.accuracy"] == pytest.approx(_final(better))
    assert client.get_model_version("gate", "3").tags["flotilla.promotion"] == "kept"
    assert client.get_run(better["mlflowRunId"]).data.tags["flotilla.promotion"] == "promoted"


def test_a_champion_without_logged_weights_keeps_its_alias(
    tmp_path: Path, digits_dir: Path, tracking_server: TrackingServer
) -> None:
    client = MlflowClient(tracking_server.url)
    client.create_registered_model("by-hand")
    # A version registered outside Flotilla: no flotilla.run_id tag, no weights to read.
    run = client.create_run(client.create_experiment("by-hand"))
    client.log_text(run.info.run_id, "not a Flotilla model", "model/README")
    by_hand = client.create_model_version(
        "by-hand", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("by-hand", "champion", by_hand.version)

    summary = _run(tmp_path / "job", digits_dir, tracking_server, model="by-hand")

    promotion = summary["tracking"]["promotion"]
    assert (promotion["outcome"], promotion["reason"]) == ("kept", "ChampionUnreadable")
    assert "not registered by a Flotilla job" in promotion["message"]
    assert client.get_model_version_by_alias("by-hand", "champion").version == by_hand.version
