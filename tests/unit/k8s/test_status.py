"""Status from observations: conditions, phase, counts, metrics, run id, times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flotilla.api import FederatedJobStatus, load_job
from flotilla.k8s.status import AggregatorPodView, Observation, PodView, compute_status

ROOT = Path(__file__).resolve().parents[3]
JOB = load_job(ROOT / "examples" / "federatedjob.yaml")
T0, T1 = "2026-11-24T10:00:00Z", "2026-11-24T10:05:00Z"


def _pod(site: str, phase: str = "Running", ready: bool = True) -> PodView:
    return PodView(site=site, node=f"node-{site}", phase=phase, ready=ready)


def _aggregator(**extra: Any) -> dict[str, Any]:
    return {
        "phase": "training",
        "completedRounds": 3,
        "message": "round 4: training on 2 clients",
        "lastRound": {"round": 3, "loss": 0.2, "accuracy": 0.93},
        "tracking": {"enabled": True, "state": "synced", "runId": "abc123"},
    } | extra


def _status(observed: Observation, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    status = compute_status(JOB, observed, previous=previous or {}, generation=2, now=T1)
    FederatedJobStatus.model_validate(status)  # what the operator writes parses as the model
    return status


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_a_running_job_reports_round_clients_metrics_and_run() -> None:
    observed = Observation(
        desired_sites=["a", "b", "c"],
        pods=[_pod("a"), _pod("b"), _pod("c", "Pending", ready=False)],
        aggregator=_aggregator(),
    )

    status = _status(observed)

    assert status["phase"] == "Running"
    assert status["progress"] == "3/10" and status["round"] == 3 and status["rounds"] == 10
    assert status["clients"] == {"desired": 3, "ready": 2, "failed": 0}
    assert status["clientsReady"] == "2/3"
    assert status["metrics"] == {"loss": 0.2, "accuracy": 0.93}
    assert status["mlflowRunId"] == "abc123"
    assert status["observedGeneration"] == 2
    assert _condition(status, "Running")["reason"] == "RoundsInProgress"
    assert _condition(status, "Scheduled")["reason"] == "AllScheduled"
    assert _condition(status, "Tracking")["status"] == "True"


def test_no_matching_nodes_is_said() -> None:
    status = _status(Observation(desired_sites=[], pods=[], aggregator=None))

    assert status["phase"] == "Pending"
    scheduled = _condition(status, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "NoMatchingNodes")
    assert _condition(status, "Running")["reason"] == "AggregatorUnavailable"


def test_success_and_failure_come_from_the_aggregator_with_a_completion_time() -> None:
    done = _status(
        Observation(["a"], [_pod("a", "Succeeded", ready=False)], _aggregator(phase="done"))
    )
    failed = _status(
        Observation(
            ["a"], [_pod("a")], _aggregator(phase="failed", failure="round 4 failed 4 times")
        )
    )

    assert done["phase"] == "Succeeded" and done["completionTime"] == T1
    assert _condition(done, "Succeeded")["reason"] == "RoundsCompleted"
    assert failed["phase"] == "Failed"
    assert _condition(failed, "Failed")["reason"] == "RoundFailed"
    assert _condition(failed, "Failed")["message"] == "round 4 failed 4 times"


def test_an_mlflow_outage_shows_in_a_condition_not_a_failure() -> None:
    tracking = {"enabled": True, "state": "failing", "pendingRounds": 2, "lastError": "refused"}

    status = _status(Observation(["a"], [_pod("a")], _aggregator(tracking=tracking)))

    assert status["phase"] == "Running"
    condition = _condition(status, "Tracking")
    assert (condition["status"], condition["reason"]) == ("False", "MlflowUnavailable")
    assert "2 rounds not yet in MLflow: refused" in condition["message"]


def test_lost_nodes_and_failed_pods_are_counted() -> None:
    observed = Observation(
        desired_sites=["a", "b"],
        pods=[_pod("a"), _pod("b", "Failed", ready=False)],
        aggregator=_aggregator(),
        lost_nodes=["node-c"],
    )

    status = _status(observed)

    assert status["clients"]["failed"] == 2
    assert "node-c" in _condition(status, "Scheduled")["message"]


def _aggregator_pod(restarts: int, waiting: str | None) -> dict[str, Any]:
    state = (
        {"waiting": {"reason": waiting, "message": "back-off 40s"}} if waiting else {"running": {}}
    )
    container = {
        "name": "aggregator",
        "restartCount": restarts,
        "state": state,
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
    }
    return {"status": {"phase": "Running", "containerStatuses": [container]}}


def test_a_starting_aggregator_is_unavailable_not_failed() -> None:
    pods = [AggregatorPodView.from_api(_aggregator_pod(0, "ContainerCreating"))]
    status = _status(Observation(["a"], [_pod("a")], None, aggregator_pods=pods))

    assert _condition(status, "Running")["reason"] == "AggregatorUnavailable"
    assert status["phase"] == "Pending"


def test_a_crash_looping_aggregator_is_reported_then_fails_past_the_backoff_limit() -> None:
    looping = AggregatorPodView.from_api(_aggregator_pod(2, "CrashLoopBackOff"))
    status = _status(Observation(["a"], [_pod("a")], None, aggregator_pods=[looping]))

    running = _condition(status, "Running")
    assert running["reason"] == "AggregatorFailed"
    assert "CrashLoopBackOff, last exit code 1" in running["message"]
    assert "restarted 2 times" in running["message"]
    assert status["phase"] == "Pending"  # the Deployment restarts it; not yet a failure

    beyond = AggregatorPodView.from_api(
        _aggregator_pod(JOB.spec.backoff_limit + 1, "CrashLoopBackOff")
    )
    status = _status(Observation(["a"], [_pod("a")], None, aggregator_pods=[beyond]))

    assert status["phase"] == "Failed"
    failed = _condition(status, "Failed")
    assert failed["reason"] == "AggregatorFailed" and "backoffLimit" in failed["message"]


def test_an_aggregator_that_answers_is_running_whatever_its_restarts() -> None:
    restarted = AggregatorPodView.from_api(_aggregator_pod(9, None))
    status = _status(Observation(["a"], [_pod("a")], _aggregator(), aggregator_pods=[restarted]))

    assert status["phase"] == "Running"


def test_sites_that_cannot_read_their_data_are_named_in_status() -> None:
    errors = {"site-b": "site site-b: CVAT at http://cvat:8080 refused the credentials"}
    status = _status(Observation(["a"], [_pod("a")], _aggregator(siteErrors=errors)))

    assert status["siteErrors"] == errors
    assert "1 sites cannot read their data: site-b" in _condition(status, "Running")["message"]
    # The aggregator answering again with no error clears them; not answering keeps them.
    assert _status(Observation(["a"], [_pod("a")], None), previous=status)["siteErrors"] == errors
    assert (
        _status(Observation(["a"], [_pod("a")], _aggregator()), previous=status)["siteErrors"] == {}
    )


def test_an_invalid_spec_fails_with_the_reason() -> None:
    observed = Observation([], [], None, invalid="spec.rounds: Input should be >= 1 (got 0)")

    status = compute_status(None, observed, previous={}, generation=5, now=T1)

    assert status["phase"] == "Failed"
    failed = _condition(status, "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.rounds" in failed["message"]
    assert status["observedGeneration"] == 5


def test_transition_times_and_start_time_survive_unchanged_conditions() -> None:
    observed = Observation(["a"], [_pod("a")], _aggregator())
    first = compute_status(JOB, observed, previous={}, generation=1, now=T0)

    second = compute_status(JOB, observed, previous=first, generation=1, now=T1)

    assert second["startTime"] == T0
    assert _condition(second, "Running")["lastTransitionTime"] == T0
    done = compute_status(
        JOB,
        Observation(["a"], [_pod("a")], _aggregator(phase="done")),
        previous=second,
        generation=1,
        now=T1,
    )
    assert _condition(done, "Running")["lastTransitionTime"] == T1


def test_suspended() -> None:
    job = JOB.model_copy(update={"spec": JOB.spec.model_copy(update={"suspend": True})})

    status = compute_status(
        job, Observation(["a"], [], _aggregator()), previous={}, generation=3, now=T1
    )

    assert status["phase"] == "Suspended"
    assert _condition(status, "Suspended")["reason"] == "SuspendedByUser"
