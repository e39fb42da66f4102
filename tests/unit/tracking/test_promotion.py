"""The promotion gate: the spec's rules, the pure decision, the gate over a fake registry, and
the exporter that runs it once the model is registered."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from flotilla.api import FederatedJob, SpecError, parse_job
from flotilla.fl.aggregator.promotion import champion_scorer, promotion_settings
from flotilla.fl.learning import SCORE_OF_TASK
from flotilla.tracking.champion import AliasHolder, Candidate, PromotionGate
from flotilla.tracking.exporter import JobView, TrackingExporter, TrackingSettings
from flotilla.tracking.plan import Metric
from flotilla.tracking.promotion import (
    Champion,
    Decision,
    PromotionSettings,
    decide,
    run_metrics,
    run_tags,
)
from flotilla.tracking.weights import LoggedWeights, encode_weights, weights_file
from tests.unit.tracking.test_exporter import FakeMlflow, _model, _view

SETTINGS = PromotionSettings(alias="champion", metric="accuracy", min_improvement=0.0)
TEST_DATA = {"testData": {"cvatExport": {"path": "test"}}}


# -- the spec ---------------------------------------------------------------------------


def _job(task: str = "classification", **tracking: Any) -> dict[str, Any]:
    model = "mlp" if task == "classification" else "centernet-tiny"
    return {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "job"},
        "spec": {
            "rounds": 1,
            "task": task,
            "labels": ["cat", "dog"],
            "model": {"name": model, "input": {"height": 8, "width": 8}},
            "evaluation": copy.deepcopy(TEST_DATA),
            "tracking": tracking,
        },
    }


def test_promotion_defaults_to_the_champion_alias_and_the_tasks_score() -> None:
    for task in ("classification", "detection"):
        job = parse_job(_job(task, promotion={}), source="job.yaml")

        settings = promotion_settings(job)

        assert settings == PromotionSettings("champion", SCORE_OF_TASK[task], 0.0)
    assert promotion_settings(parse_job(_job(), source="job.yaml")) is None  # absent: no gate


def test_an_absent_promotion_leaves_the_spec_as_it_was() -> None:
    assert "promotion" not in parse_job(_job(), source="job.yaml").to_dict()["spec"]["tracking"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda d: d["spec"].pop("evaluation"),
            "spec.tracking.promotion: needs spec.evaluation.testData",
        ),
        (
            lambda d: d["spec"]["tracking"].update(enabled=False),
            "spec.tracking.promotion: needs spec.tracking.enabled",
        ),
        (
            lambda d: d["spec"]["tracking"]["promotion"].update(alias="candidate"),
            "spec.tracking.promotion.alias: must differ from spec.tracking.alias ('candidate')",
        ),
        (
            lambda d: d["spec"]["tracking"]["promotion"].update(metric="map50"),
            "spec.tracking.promotion.metric: a classification job's test data measures "
            "'accuracy', not 'map50'",
        ),
        (
            lambda d: d["spec"]["tracking"]["promotion"].update(minImprovement=-0.1),
            "spec.tracking.promotion.minImprovement: Input should be greater than or equal to 0",
        ),
    ],
)
def test_a_promotion_that_cannot_work_is_refused_naming_the_field(change: Any, says: str) -> None:
    data = _job(promotion={})
    change(data)

    with pytest.raises(SpecError) as caught:
        parse_job(data, source="job.yaml")

    assert says in str(caught.value)


# -- the decision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "champion", "margin", "outcome", "reason"),
    [
        (0.80, None, 0.0, "promoted", "FirstModel"),
        (None, None, 0.0, "promoted", "FirstModel"),
        (0.80, Champion("3", score=0.90), 0.0, "kept", "NotBetter"),
        (0.90, Champion("3", score=0.90), 0.0, "kept", "NotBetter"),  # a tie moves nothing
        (0.91, Champion("3", score=0.90), 0.0, "promoted", "Better"),
        (0.91, Champion("3", score=0.90), 0.02, "kept", "NotBetter"),
        (0.95, Champion("3", score=0.94), 0.01, "promoted", "Better"),  # 0.95-0.94 < 0.01 in float
        (0.99, Champion("3", problem="no weights"), 0.0, "kept", "ChampionUnreadable"),
        (float("nan"), Champion("3", score=0.5), 0.0, "kept", "NoScore"),
        (0.99, Champion("4"), 0.0, "promoted", "AlreadyChampion"),
    ],
)
def test_the_decision(
    score: float | None, champion: Champion | None, margin: float, outcome: str, reason: str
) -> None:
    settings = PromotionSettings(alias="champion", metric="accuracy", min_improvement=margin)

    decision = decide(settings, version="4", score=score, champion=champion)

    assert (decision.outcome, decision.reason) == (outcome, reason)
    assert decision.promoted is (outcome == "promoted")


def test_a_refusal_says_why_with_both_figures() -> None:
    settings = PromotionSettings(alias="champion", metric="accuracy", min_improvement=0.02)

    decision = decide(settings, version="5", score=0.91, champion=Champion("3", score=0.90))

    assert decision.message == (
        "'champion' stays on version 3: version 5 has accuracy 0.9100 against 0.9000 for "
        "version 3 (needs +0.02)"
    )
    assert run_tags(decision)["flotilla.promotion"] == "kept"
    assert run_tags(decision)["flotilla.promotion.champion_version"] == "3"
    assert run_metrics(decision) == {
        "promotion.candidate.accuracy": 0.91,
        "promotion.champion.accuracy": 0.90,
        "promotion.min_improvement": 0.02,
    }


def test_an_unreadable_champion_is_not_replaced_unseen() -> None:
    champion = Champion("2", problem="run r holds no weights/round-000002.safetensors")

    decision = decide(SETTINGS, version="3", score=0.99, champion=champion)

    assert decision.outcome == "kept"
    assert "it cannot be scored (run r holds no weights/round-000002.safetensors)" in (
        decision.message
    )
    assert "delete the alias" in decision.message
    assert "promotion.champion.accuracy" not in run_metrics(decision)


# -- the gate over a registry -----------------------------------------------------------------


class FakeRegistry:
    def __init__(self, holder: AliasHolder | None, weights: bytes | None = None) -> None:
        self.holder = holder
        self.weights = weights
        self.aliases: list[tuple[str, str, str]] = []
        self.tags: dict[str, str] = {}
        self.version_tags: dict[tuple[str, str], str] = {}
        self.metrics: list[Metric] = []

    def alias_holder(self, name: str, alias: str) -> AliasHolder | None:
        return self.holder

    def download_weights(self, run_id: str, round_number: int, into: Path) -> Path | None:
        if self.weights is None:
            return None
        path = into / weights_file(round_number)
        path.write_bytes(self.weights)
        return path

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases.append((name, alias, version))

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.version_tags[(version, key)] = value

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.tags |= tags

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
        self.metrics += metrics


def _weights(value: float, labels: Sequence[str] = ("cat", "dog")) -> bytes:
    tensors = {"w": torch.full((2, 2), value)}
    return encode_weights(tensors, labels=labels, task="classification", info={})


def _by_mean(logged: LoggedWeights) -> float:  # a stand-in evaluator: the weights' mean
    return float(logged.tensors["w"].mean())


CANDIDATE = Candidate(run_id="r", name="m", version="2", round=3, score=0.8, timestamp_ms=5)


def test_the_first_version_of_a_name_takes_the_alias() -> None:
    registry = FakeRegistry(None)
    gate = PromotionGate(SETTINGS, registry=lambda: registry, score=_by_mean)

    decision = gate(CANDIDATE)

    assert decision.reason == "FirstModel"
    assert registry.aliases == [("m", "champion", "2")]
    assert registry.tags["flotilla.promotion"] == "promoted"
    assert registry.version_tags[("2", "flotilla.promotion")] == "promoted"
    first = registry.metrics[0]
    assert (first.key, first.value, first.step) == ("promotion.candidate.accuracy", 0.8, 3)


@pytest.mark.parametrize(("champion", "moved"), [(0.7, True), (0.85, False)])
def test_the_champion_is_scored_from_its_logged_weights(champion: float, moved: bool) -> None:
    registry = FakeRegistry(AliasHolder("1", "old-run", 2), _weights(champion))
    gate = PromotionGate(SETTINGS, registry=lambda: registry, score=_by_mean)

    decision = gate(CANDIDATE)

    assert decision.champion_score == pytest.approx(champion)
    assert bool(registry.aliases) is moved
    assert registry.tags["flotilla.promotion"] == ("promoted" if moved else "kept")
    assert {m.key for m in registry.metrics} >= {"promotion.champion.accuracy"}


@pytest.mark.parametrize(
    ("holder", "weights", "says"),
    [
        (AliasHolder("1", None, None), None, "not registered by a Flotilla job"),
        (AliasHolder("1", "old", 2), None, "run old holds no weights/round-000002.safetensors"),
        (AliasHolder("1", "old", 2), b"not safetensors", "is not a readable safetensors file"),
    ],
)
def test_a_champion_without_readable_weights_keeps_the_alias(
    holder: AliasHolder, weights: bytes | None, says: str
) -> None:
    registry = FakeRegistry(holder, weights)
    gate = PromotionGate(SETTINGS, registry=lambda: registry, score=_by_mean)

    decision = gate(CANDIDATE)

    assert (decision.outcome, decision.reason) == ("kept", "ChampionUnreadable")
    assert says in decision.message
    assert registry.aliases == []
    assert registry.tags["flotilla.promotion.reason"] == "ChampionUnreadable"


def test_a_champion_trained_on_other_labels_is_not_compared() -> None:
    job: FederatedJob = parse_job(_job(promotion={}), source="job.yaml")
    model = {"w": torch.zeros(2, 2)}
    score = champion_scorer(
        job, evaluator=_NeverEvaluated(), shapes=lambda: model, metric="accuracy"
    )
    registry = FakeRegistry(AliasHolder("1", "old", 2), _weights(0.5, labels=("dog", "cat")))

    decision = PromotionGate(SETTINGS, registry=lambda: registry, score=score)(CANDIDATE)

    assert decision.reason == "ChampionUnreadable"
    assert "trained on labels ['dog', 'cat'] and this job on spec.labels ['cat', 'dog']" in (
        decision.message
    )


def test_a_champion_of_another_architecture_is_not_compared() -> None:
    job: FederatedJob = parse_job(_job(promotion={}), source="job.yaml")
    score = champion_scorer(
        job, evaluator=_NeverEvaluated(), shapes=lambda: {"w": torch.zeros(3, 2)}, metric="accuracy"
    )

    with pytest.raises(ValueError, match="its weights do not fit this job's model: tensor 'w'"):
        score(LoggedWeights({"w": torch.zeros(2, 2)}, ["cat", "dog"], "classification", {}))


class _NeverEvaluated:
    def evaluate(self, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        raise AssertionError("weights that do not fit must not be evaluated")


# -- the exporter runs the gate once, after the registration -------------------------------


class RecordingGate:
    def __init__(self) -> None:
        self.calls: list[Candidate] = []
        self.fail = False

    def __call__(self, candidate: Candidate) -> Decision:
        if self.fail:
            raise ConnectionError("MLflow went away")
        self.calls.append(candidate)
        return decide(SETTINGS, version=candidate.version, score=candidate.score, champion=None)


def _exporter(tmp_path: Path, mlflow: FakeMlflow, gate: RecordingGate) -> TrackingExporter:
    settings = TrackingSettings(
        uri="http://mlflow:5000",
        experiment="e",
        registered_model="m",
        alias="candidate",
        checkpoint_every=0,
        run_name="job",
        params={},
        promotion=SETTINGS,
    )
    return TrackingExporter(settings, backend=lambda: mlflow, state_dir=tmp_path, gate=gate)


def test_the_exporter_gates_the_registered_version_with_the_final_central_score(
    tmp_path: Path,
) -> None:
    mlflow, gate = FakeMlflow(), RecordingGate()
    exporter = _exporter(tmp_path, mlflow, gate)
    done: JobView = _view(tmp_path, 2, phase="done", final_model=_model)

    exporter.sync(done)
    exporter.sync(done)  # nothing left to do: the gate is not asked twice

    assert [(c.version, c.round, c.score) for c in gate.calls] == [("1", 2, 0.5)]
    promotion = exporter.status()["promotion"]
    assert promotion["outcome"] == "promoted"
    assert promotion["round"] == 2
    assert promotion["score"] == 0.5


def test_a_gate_that_fails_is_retried_without_registering_again(tmp_path: Path) -> None:
    mlflow, gate = FakeMlflow(), RecordingGate()
    exporter = _exporter(tmp_path, mlflow, gate)
    done: JobView = _view(tmp_path, 2, phase="done", final_model=_model)
    gate.fail = True

    with pytest.raises(ConnectionError):
        exporter.sync(done)
    gate.fail = False
    exporter.sync(done)

    assert len(mlflow.versions) == 1
    assert len(gate.calls) == 1
    assert exporter.status()["promotion"]["outcome"] == "promoted"
