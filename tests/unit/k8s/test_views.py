"""What the operator reads off pods and Deployments, as a real API server writes them."""

from __future__ import annotations

from flotilla.k8s.views import (
    AggregatorPodView,
    Scheduling,
    current_aggregator,
    replica_failure,
)

UNBOUND_PVC = "0/4 nodes are available: pod has unbound immediate PersistentVolumeClaims."


def test_a_pod_is_bound_by_its_node_name_or_its_pod_scheduled_condition() -> None:
    bound = {"spec": {"nodeName": "edge-1"}}
    scheduled = {"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}
    unschedulable = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": UNBOUND_PVC,
                }
            ],
        }
    }

    assert Scheduling.from_api(bound) == Scheduling(bound=True)
    assert Scheduling.from_api(scheduled) == Scheduling(bound=True)
    assert Scheduling.from_api(unschedulable) == Scheduling(unschedulable=UNBOUND_PVC)
    assert Scheduling.from_api({"status": {"phase": "Pending"}}) == Scheduling()


def test_the_current_aggregator_is_the_live_pod_bound_if_one_is() -> None:
    old = AggregatorPodView(0, None, name="old", scheduling=Scheduling(bound=True), deleting=True)
    new = AggregatorPodView(0, None, name="new", scheduling=Scheduling(unschedulable="x"))

    assert current_aggregator([old, new]) == new
    assert current_aggregator([old]) is None
    assert AggregatorPodView.from_api(
        {"metadata": {"name": "p", "deletionTimestamp": "t"}}
    ).deleting


def test_a_replicaset_that_cannot_create_the_aggregator_pod_shows_on_its_deployment() -> None:
    message = 'pods "digits-aggregator-5c9" is forbidden: exceeded quota: pods'
    deployment = {
        "status": {
            "conditions": [
                {"type": "Available", "status": "False"},
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                 "message": message},
            ]
        }
    }  # fmt: skip

    assert replica_failure(deployment) == message
    assert replica_failure({"status": {"conditions": [{"type": "Available"}]}}) is None
    assert replica_failure(None) is None
