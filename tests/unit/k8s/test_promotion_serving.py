"""The promotion gate in a cluster: the job's status records the decision, a Promoted
condition tells it, and a serving Deployment following the promotion alias rolls only to
versions the gate promoted."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from flotilla.api import FederatedJob, parse_job
from flotilla.k8s import serving
from flotilla.k8s.decide import registered_model
from flotilla.k8s.status import compute_status
from flotilla.k8s.views import Observation

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
GATE = {"promotion": {"alias": "champion"}}


def _job(name: str, **spec: Any) -> FederatedJob:
    document = copy.deepcopy(EXAMPLE)
    document["metadata"] |= {"name": name, "namespace": "ml", "uid": f"uid-{name}"}
    document["spec"] |= {
        "evaluation": {"testData": {"cvatExport": {"path": "test", "claimName": "t"}}},
        "tracking": {"registeredModel": "digits-cnn"} | GATE,
    } | spec
    return parse_job(document, source=name)


def _answer(version: str, outcome: str | None, reason: str = "Better") -> dict[str, Any]:
    tracking: dict[str, Any] = {"registeredModel": {"name": "digits-cnn", "version": version}}
    if outcome is not None:
        tracking["promotion"] = {
            "outcome": outcome,
            "reason": reason,
            "alias": "champion",
            "version": version,
            "message": f"version {version}: {outcome}",
            "score": 0.9,
        }
    return {"phase": "done", "completedRounds": 10, "message": "done", "tracking": tracking}


def _model(job: FederatedJob, version: str, outcome: str | None) -> dict[str, Any]:
    model = registered_model(job, _answer(version, outcome), {})
    assert model is not None
    return model


def _body(job: FederatedJob, model: dict[str, Any]) -> dict[str, Any]:
    return job.to_dict() | {"status": {"model": model}}


def test_the_status_keeps_the_gates_decision_on_its_own_version_only() -> None:
    job = _job("a")

    model = _model(job, "4", "kept")
    assert model["promotion"] == {
        "outcome": "kept",
        "reason": "Better",
        "alias": "champion",
        "message": "version 4: kept",
    }
    stale = _answer("5", None) | {"tracking": _answer("5", "promoted")["tracking"]}
    stale["tracking"]["promotion"]["version"] = "4"  # a decision about another version
    assert "promotion" not in (registered_model(job, stale, {}) or {})
    # After the TTL the aggregator is gone: the status keeps what it said.
    assert registered_model(job, None, {"model": model}) == model


def test_a_serving_deployment_on_the_champion_rolls_only_to_promoted_versions() -> None:
    first, second, third = _job("a"), _job("b"), _job("c")
    bodies = [
        _body(first, _model(first, "1", "promoted")),
        _body(second, _model(second, "2", "kept")),
    ]
    follower = _job("a", serving={"alias": "champion"})

    served = serving.to_serve(
        follower, bodies[0]["status"]["model"], serving.newest_versions(bodies)
    )
    assert served == serving.Served("digits-cnn", "champion", "1")  # 2 was not better

    bodies.append(_body(third, _model(third, "3", "promoted")))
    served = serving.to_serve(
        follower, bodies[0]["status"]["model"], serving.newest_versions(bodies)
    )
    assert served == serving.Served("digits-cnn", "champion", "3")  # the promotion rolls it
    # The registration alias still follows every version.
    candidate = serving.to_serve(
        _job("b"), bodies[1]["status"]["model"], serving.newest_versions(bodies)
    )
    assert candidate == serving.Served("digits-cnn", "candidate", "3")


def test_a_job_serving_the_champion_serves_its_own_version_once_promoted() -> None:
    job = _job("a", serving={"alias": "champion"})

    assert serving.to_serve(job, _model(job, "7", "promoted"), {}) == serving.Served(
        "digits-cnn", "champion", "7"
    )
    assert serving.to_serve(job, _model(job, "7", "kept"), {}) == serving.Served(
        "digits-cnn", "champion", None
    )


def _promoted_condition(job: FederatedJob, model: dict[str, Any] | None) -> dict[str, Any] | None:
    observation = Observation(desired_sites=[], pods=[], aggregator=_answer("1", None), model=model)
    status = compute_status(job, observation, previous={}, generation=1, now="2026-12-03T10:00:00Z")
    return next((c for c in status["conditions"] if c["type"] == "Promoted"), None)


def test_the_promoted_condition_says_the_decision_with_its_reason() -> None:
    job = _job("a")

    promoted = _promoted_condition(job, _model(job, "1", "promoted"))
    assert promoted is not None
    assert (promoted["status"], promoted["reason"]) == ("True", "Better")
    kept = _promoted_condition(job, registered_model(job, _answer("2", "kept", "NotBetter"), {}))
    assert kept is not None
    assert (kept["status"], kept["reason"], kept["message"]) == (
        "False",
        "NotBetter",
        "version 2: kept",
    )
    assert _promoted_condition(job, _model(job, "3", None)) is None  # not decided yet
    no_gate = _job("b", tracking={"registeredModel": "digits-cnn"})
    assert _promoted_condition(no_gate, _model(no_gate, "1", "promoted")) is None
