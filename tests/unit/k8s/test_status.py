"""Status from observations: conditions, phase, counts, metrics, run id, times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flotilla.api import FederatedJobStatus, load_job
from flotilla.k8s.status import compute_status, status_patch
from flotilla.k8s.views import AggregatorPodView, Observation, PodView, Scheduling

ROOT = Path(__file__).resolve().parents[3]
JOB = load_job(ROOT / "examples" / "federatedjob.yaml")
T0, T1 = "2026-11-24T10:00:00Z", "2026-11-24T10:05:00Z"


BOUND = Scheduling(bound=True)


def _pod(
    site: str, phase: str = "Running", ready: bool = True, scheduling: Scheduling = BOUND
) -> PodView:
    return PodView(site=site, node=f"node-{site}", phase=phase, ready=ready, scheduling=scheduling)


# The Deployment's pod, bound to a node and running.
AGGREGATOR = AggregatorPodView(0, None, name="digits-aggregator-7f9c-x2x", scheduling=BOUND)


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
        aggregator_pods=[AGGREGATOR],
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
    scheduled = _condition(status, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("True", "AllScheduled")
    assert scheduled["message"] == "3 client pods and the aggregator pod are bound"
    assert _condition(status, "ClientsAvailable")["status"] == "True"
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


LOST_C = {"node": "node-c", "site": "c", "since": T0, "nodeSelector": {"edge": "true"}}


def test_lost_nodes_and_failed_pods_are_counted_and_too_few_clients_said() -> None:
    observed = Observation(
        desired_sites=["a", "b"],
        pods=[_pod("a"), _pod("b", "Failed", ready=False)],
        aggregator=_aggregator(),
        lost_nodes=[LOST_C],
        aggregator_pods=[AGGREGATOR],
    )

    status = _status(observed)

    assert status["clients"]["failed"] == 2
    assert status["lostNodes"] == [LOST_C]
    scheduled = _condition(status, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("True", "NodesLost")
    assert f"node-c (site c, since {T0})" in scheduled["message"]
    available = _condition(status, "ClientsAvailable")
    assert (available["status"], available["reason"]) == ("False", "TooFewClients")
    assert available["message"].startswith(
        "1 of the 2 clients a round needs (spec.clients.minClients) can run "
        "(2 nodes match spec.clients.nodeSelector; failed: b; lost: c)"
    )


def test_an_aggregator_the_scheduler_cannot_place_is_not_called_scheduled() -> None:
    pending = AggregatorPodView(
        0,
        None,
        name="digits-aggregator-7f9c-x2x",
        scheduling=Scheduling(unschedulable="pod has unbound immediate PersistentVolumeClaims"),
    )

    status = _status(
        Observation(["a", "b"], [_pod("a"), _pod("b")], None, aggregator_pods=[pending])
    )

    scheduled = _condition(status, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "AggregatorUnschedulable")
    assert scheduled["message"] == (
        "aggregator pod digits-aggregator-7f9c-x2x: "
        "pod has unbound immediate PersistentVolumeClaims"
    )


def test_pods_not_bound_yet_are_pending_and_unschedulable_clients_are_named() -> None:
    unbound = [_pod("a", "Pending", False, Scheduling()), _pod("b")]
    waiting = _status(Observation(["a", "b"], unbound, None))
    stuck = Scheduling(unschedulable="0/4 nodes are available: 1 Insufficient nvidia.com/gpu.")
    unschedulable = _status(
        Observation(["a", "b"], [_pod("a", "Pending", False, stuck), _pod("b")], None)
    )

    assert _condition(waiting, "Scheduled")["reason"] == "PodsPending"
    assert _condition(waiting, "Scheduled")["message"] == (
        "waiting to be bound to a node: client pods of a; the aggregator pod"
    )
    assert _condition(unschedulable, "Scheduled")["reason"] == "ClientsUnschedulable"
    assert (
        "a: 0/4 nodes are available: 1 Insufficient nvidia.com/gpu."
        in _condition(unschedulable, "Scheduled")["message"]
    )
    assert _condition(unschedulable, "ClientsAvailable")["reason"] == "TooFewClients"


def test_pods_the_api_server_refuses_are_named_with_its_message() -> None:
    refusal = (
        'pod digits-client-a: pods "digits-client-a" is forbidden: violates PodSecurity '
        '"baseline:latest": hostPath volumes (volume "data")'
    )
    observed = Observation(["a", "b"], [_pod("b")], None, refused={"a": refusal})

    status = _status(observed)

    scheduled = _condition(status, "Scheduled")
    assert (scheduled["status"], scheduled["reason"]) == ("False", "PodsRefused")
    assert scheduled["message"] == f"client pods refused: a: {refusal}"
    assert "refused: a" in _condition(status, "ClientsAvailable")["message"]
    aggregator = _status(
        Observation(["a"], [_pod("a")], None, aggregator_refused="Deployment x refused: quota")
    )
    assert _condition(aggregator, "Scheduled")["reason"] == "AggregatorRefused"
    assert (
        _condition(aggregator, "Scheduled")["message"] == "aggregator: Deployment x refused: quota"
    )


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


def test_a_finished_job_says_so_in_every_condition_and_stays_finished() -> None:
    failed = _status(
        Observation(["a"], [], _aggregator(phase="failed", failure="round 4 failed 4 times"))
    )
    # After ttlSecondsAfterFinished the aggregator is gone and answers nothing.
    later = _status(Observation(["a"], [], None), previous=failed)

    for status in (failed, later):
        assert status["phase"] == "Failed"
        scheduled = _condition(status, "Scheduled")
        assert (scheduled["reason"], scheduled["message"]) == (
            "JobFinished",
            "the job has finished; its client pods were removed",
        )
        assert _condition(status, "Running")["reason"] == "Finished"
        assert "ClientsAvailable" not in {c["type"] for c in status["conditions"]}
    assert _condition(later, "Failed")["message"] == "round 4 failed 4 times"
    assert later["completionTime"] == failed["completionTime"]


def test_a_fixed_spec_undoes_an_invalid_spec_failure() -> None:
    invalid = compute_status(
        None,
        Observation([], [], None, invalid="spec.rounds: bad"),
        previous={},
        generation=1,
        now=T0,
    )

    fixed = _status(Observation(["a"], [_pod("a")], None), previous=invalid)

    assert fixed["phase"] == "Pending"
    assert "Failed" not in {c["type"] for c in fixed["conditions"]}


def test_the_status_patch_clears_what_went_away() -> None:
    before = {"phase": "Running", "siteErrors": {"a": "bad", "b": "bad"}, "lostNodes": [LOST_C]}
    after = {"phase": "Running", "siteErrors": {"b": "bad"}}

    assert status_patch(before, after) == {"siteErrors": {"a": None}, "lostNodes": None}
    assert status_patch(after, after) == {}


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
    scheduled = _condition(status, "Scheduled")
    assert (scheduled["reason"], scheduled["message"]) == (
        "Suspended",
        "the job is suspended; its client pods were removed",
    )


def test_state_kept_in_the_pod_is_a_warning_condition() -> None:
    runtime = JOB.spec.runtime
    storage = runtime.aggregator.storage.model_copy(update={"ephemeral": True})
    aggregator = runtime.aggregator.model_copy(update={"storage": storage})
    spec = JOB.spec.model_copy(
        update={"runtime": runtime.model_copy(update={"aggregator": aggregator})}
    )
    ephemeral = JOB.model_copy(update={"spec": spec})
    observed = Observation(["a"], [_pod("a")], _aggregator())

    durable = _condition(_status(observed), "StateDurable")
    warned = _condition(
        compute_status(ephemeral, observed, previous={}, generation=1, now=T1), "StateDurable"
    )

    assert (durable["status"], durable["reason"]) == ("True", "PersistentVolumeClaim")
    assert "digits-aggregator-state" in durable["message"]
    assert (warned["status"], warned["reason"]) == ("False", "EphemeralState")
    assert "last checkpoint logged to MLflow" in warned["message"]
