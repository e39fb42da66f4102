"""The operator, as its ServiceAccount, on a real API server: what a user sees after
`kubectl apply -f examples/federatedjob.yaml`, as nodes come and go, and across restarts."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NewNamespace
from tests.e2e.kube import (
    apply,
    condition,
    eventually,
    fake_node,
    get,
    items,
    kubectl,
    load,
    merge_patch,
    without_state,
)
from tests.e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CLIENTS = "flotilla.dev/job=digits,flotilla.dev/role=client"
AGGREGATOR = "flotilla.dev/job=digits,flotilla.dev/role=aggregator"


def _job(**spec: Any) -> dict[str, Any]:
    job = copy.deepcopy(load(ROOT / "examples" / "federatedjob.yaml"))
    job["spec"] |= spec
    return job


def _status(namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = (get("fj", "digits", namespace=namespace) or {}).get("status") or {}
    return status


def _reason(namespace: str, kind: str) -> str | None:
    return condition(get("fj", "digits", namespace=namespace), kind).get("reason")


def _bound(namespace: str, selector: str) -> dict[str, str]:
    """pod name -> the node the scheduler bound it to, for pods not being deleted."""
    return {
        pod["metadata"]["name"]: pod["spec"].get("nodeName", "")
        for pod in items("pods", namespace=namespace, selector=selector)
        if not pod["metadata"].get("deletionTimestamp")
    }


def _uids(namespace: str, selector: str) -> dict[str, str]:
    pods = items("pods", namespace=namespace, selector=selector)
    return {pod["metadata"]["name"]: pod["metadata"]["uid"] for pod in pods}


def test_the_example_job_gets_a_client_per_labelled_node_and_an_aggregator_off_the_edge(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    apply(_job(), namespace=namespace)

    clients = eventually(
        lambda: (
            (bound := _bound(namespace, CLIENTS))
            and all(bound.values())
            and len(bound) == 3
            and bound
        ),
        what="three client pods bound by the scheduler",
    )
    assert clients == {
        "digits-client-site-a": "edge-1",
        "digits-client-site-b": "edge-2",
        "digits-client-site-c": "gpu-1",
    }
    pods = {p["metadata"]["name"]: p for p in items("pods", namespace=namespace, selector=CLIENTS)}
    gpu = pods["digits-client-site-c"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1" and "--device=cuda" in gpu["args"]
    assert "--max-seconds=120" in pods["digits-client-site-b"]["spec"]["containers"][0]["args"]

    # Deployment -> ReplicaSet -> Pod, which waits for its state claim: status says so.
    eventually(
        lambda: _reason(namespace, "Scheduled") == "AggregatorUnschedulable",
        what="Scheduled=False AggregatorUnschedulable",
    )
    message = condition(get("fj", "digits", namespace=namespace), "Scheduled")["message"]
    assert "pod has unbound immediate PersistentVolumeClaims" in message
    apply(_volume_for("digits-aggregator-state", namespace))
    aggregator = eventually(
        lambda: [node for node in _bound(namespace, AGGREGATOR).values() if node],
        what="the aggregator pod bound once its claim is",
    )
    assert aggregator == ["cpu-1"]  # off the edge nodes, by preference

    eventually(lambda: _reason(namespace, "Scheduled") == "AllScheduled", what="AllScheduled")
    eventually(lambda: _status(namespace).get("clientsReady") == "3/3", what="clients ready 3/3")
    columns = kubectl("get", "fj", "-n", namespace).stdout.split("\n")[1].split()
    assert columns[:4] == ["digits", "Pending", "0/10", "3/3"]
    uid = get("fj", "digits", namespace=namespace)["metadata"]["uid"]
    for kind, name in [
        ("deployment", "digits-aggregator"),
        ("service", "digits-aggregator"),
        ("secret", "digits-tokens"),
        ("configmap", "digits-job"),
        ("pvc", "digits-aggregator-state"),
        ("pod", "digits-client-site-a"),
    ]:
        owner = get(kind, name, namespace=namespace)["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("FederatedJob", uid, True)


def _volume_for(claim: str, namespace: str) -> dict[str, Any]:
    """A PersistentVolume bound to `claim` (there is no provisioner)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": f"/var/lib/e2e/{namespace}/{claim}"},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }


@pytest.fixture
def edge_3() -> Iterator[str]:
    """A fourth edge node made for one test, and gone after it."""
    yield "edge-3"
    kubectl("delete", "node", "edge-3", "--ignore-not-found")


def test_nodes_labelled_unlabelled_and_deleted(
    operator: OperatorProcess, new_namespace: NewNamespace, edge_3: str
) -> None:
    namespace = new_namespace()
    apply(without_state(_job()), namespace=namespace)
    eventually(lambda: len(_bound(namespace, CLIENTS)) == 3, what="three client pods")
    aggregator = eventually(lambda: _uids(namespace, AGGREGATOR), what="the aggregator pod")
    replica_sets = {rs["metadata"]["uid"] for rs in items("replicasets", namespace=namespace)}

    fake_node(edge_3, {"flotilla.dev/site": "site-d"})
    kubectl("label", "node", edge_3, "flotilla.dev/edge=true")
    eventually(
        lambda: _bound(namespace, CLIENTS).get("digits-client-site-d") == edge_3,
        what="a client pod on the newly labelled node",
    )
    eventually(lambda: _status(namespace)["clients"]["desired"] == 4, what="4 desired")

    kubectl("label", "node", edge_3, "flotilla.dev/edge-")
    eventually(
        lambda: "digits-client-site-d" not in _bound(namespace, CLIENTS),
        what="the unlabelled node's pod deleted",
    )
    eventually(lambda: _status(namespace)["clients"]["desired"] == 3, what="3 desired")
    assert "lostNodes" not in _status(namespace)  # taken out on purpose: not lost

    kubectl("label", "node", edge_3, "flotilla.dev/edge=true")
    eventually(lambda: "digits-client-site-d" in _bound(namespace, CLIENTS), what="its pod back")
    kubectl("delete", "node", edge_3)
    eventually(
        lambda: _reason(namespace, "Scheduled") == "NodesLost", what="Scheduled=True NodesLost"
    )
    operator.wait_resyncs(5)  # a lost node was forgotten at the next resync
    status = _status(namespace)
    assert _reason(namespace, "Scheduled") == "NodesLost"
    assert [(e["node"], e["site"]) for e in status["lostNodes"]] == [(edge_3, "site-d")]
    assert status["clients"] == {"desired": 3, "ready": 3, "failed": 1}
    assert "digits-client-site-d" not in _bound(namespace, CLIENTS)
    # A site joined, left, came back and was lost: the aggregator was never replaced.
    assert _uids(namespace, AGGREGATOR) == aggregator
    assert {rs["metadata"]["uid"] for rs in items("replicasets", namespace=namespace)} == (
        replica_sets
    )

    # Four clients needed, three can run: said, naming the lost site.
    merge_patch("fj", "digits", {"spec": {"clients": {"minClients": 4}}}, namespace=namespace)
    eventually(
        lambda: _reason(namespace, "ClientsAvailable") == "TooFewClients", what="TooFewClients"
    )
    available = condition(get("fj", "digits", namespace=namespace), "ClientsAvailable")
    assert "3 of the 4 clients a round needs" in available["message"]
    assert "lost: site-d" in available["message"]

    fake_node(edge_3, {"flotilla.dev/site": "site-d", "flotilla.dev/edge": "true"})  # back
    eventually(
        lambda: _reason(namespace, "ClientsAvailable") == "EnoughClients", what="EnoughClients"
    )
    eventually(lambda: "lostNodes" not in _status(namespace), what="the lost node forgotten")


def test_an_operator_restart_makes_nothing_twice(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    apply(without_state(_job()), namespace=namespace)
    eventually(lambda: _reason(namespace, "Scheduled") == "AllScheduled", what="AllScheduled")
    pods = _uids(namespace, "flotilla.dev/job=digits")
    replica_sets = {rs["metadata"]["uid"] for rs in items("replicasets", namespace=namespace)}

    operator.restart()
    operator.wait_resyncs(5)

    assert _uids(namespace, "flotilla.dev/job=digits") == pods
    # Re-applied on resume: the real server's defaults kept the pod template as it was.
    assert {rs["metadata"]["uid"] for rs in items("replicasets", namespace=namespace)} == (
        replica_sets
    )
    assert _reason(namespace, "Scheduled") == "AllScheduled"


def test_suspend_keeps_the_aggregator_pod_and_resume_brings_the_clients_back(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    apply(without_state(_job()), namespace=namespace)
    eventually(lambda: _reason(namespace, "Scheduled") == "AllScheduled", what="AllScheduled")
    aggregator = _uids(namespace, AGGREGATOR)

    merge_patch("fj", "digits", {"spec": {"suspend": True}}, namespace=namespace)
    eventually(lambda: _status(namespace).get("phase") == "Suspended", what="phase Suspended")
    eventually(lambda: not _uids(namespace, CLIENTS), what="the client pods gone")
    operator.wait_resyncs(3)

    assert _uids(namespace, AGGREGATOR) == aggregator
    assert len(items("replicasets", namespace=namespace)) == 1
    scheduled = condition(get("fj", "digits", namespace=namespace), "Scheduled")
    assert (scheduled["reason"], scheduled["message"]) == (
        "Suspended",
        "the job is suspended; its client pods were removed",
    )

    merge_patch("fj", "digits", {"spec": {"suspend": False}}, namespace=namespace)
    eventually(lambda: len(_bound(namespace, CLIENTS)) == 3, what="the client pods back")
    eventually(lambda: _status(namespace).get("phase") == "Pending", what="phase Pending")
    # Every token rotated on resume: the aggregator re-reads them, its pod stays.
    assert _uids(namespace, AGGREGATOR) == aggregator
    assert len(items("replicasets", namespace=namespace)) == 1


def test_deleting_a_job_needs_no_operator_and_collects_everything(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    apply(_job(), namespace=namespace)
    eventually(lambda: len(_bound(namespace, CLIENTS)) == 3, what="three client pods")
    assert not get("fj", "digits", namespace=namespace)["metadata"].get("finalizers")

    operator.stop()
    try:
        kubectl("delete", "fj", "digits", "-n", namespace, "--timeout=30s")
        eventually(
            lambda: (
                not any(
                    items(kind, namespace=namespace, selector="flotilla.dev/job=digits")
                    for kind in ("pods", "deployments", "services", "secrets", "configmaps", "pvc")
                )
            ),
            what="everything the job owned collected by the garbage collector",
        )
    finally:
        operator.start()


def _crash_looping(restarts: int) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "aggregator",
                "image": "ghcr.io/flotilla-dev/flotilla:0.1.0",
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "startedAt": "2026-12-02T10:00:00Z",
                        "finishedAt": "2026-12-02T10:00:05Z",
                    }
                },
            }
        ]
    }


def test_a_job_that_fails_says_what_is_true_and_its_objects_go_after_the_ttl(
    operator: OperatorProcess, new_namespace: NewNamespace, cert_manager_crd: None
) -> None:
    namespace = new_namespace()
    job = _job(ttlSecondsAfterFinished=0, backoffLimit=0)
    job["spec"]["security"] = {
        "tls": {"mode": "certManager", "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}},
        "networkPolicy": {"enabled": True},
    }
    apply(job, namespace=namespace)
    kinds = ("deployment", "service", "secret", "configmap", "pvc", "networkpolicy", "certificate")
    eventually(
        lambda: all(items(kind, namespace=namespace, selector=AGGREGATOR) for kind in kinds),
        what="the aggregator's objects, NetworkPolicy and Certificate included",
    )
    merge_patch("fj", "digits", {"spec": {"rounds": 11}}, namespace=namespace)  # re-applies all
    eventually(
        lambda: _status(namespace).get("observedGeneration") == 2, what="the change reconciled"
    )

    pod = eventually(lambda: list(_uids(namespace, AGGREGATOR)), what="the aggregator pod")[0]
    merge_patch("pod", pod, {"status": _crash_looping(1)}, namespace=namespace, status=True)
    eventually(lambda: _status(namespace).get("phase") == "Failed", what="phase Failed")
    eventually(
        lambda: not any(items(kind, namespace=namespace, selector=AGGREGATOR) for kind in kinds),
        what="the aggregator's objects deleted after ttlSecondsAfterFinished",
    )
    operator.wait_resyncs(3)

    status = _status(namespace)
    assert status["phase"] == "Failed" and status["completionTime"]
    found = get("fj", "digits", namespace=namespace)
    failed = condition(found, "Failed")
    assert failed["reason"] == "AggregatorFailed"
    assert "CrashLoopBackOff, last exit code 1" in failed["message"]
    assert (condition(found, "Scheduled")["reason"], condition(found, "Running")["reason"]) == (
        "JobFinished",
        "Finished",
    )
    assert not _uids(namespace, CLIENTS)


@pytest.fixture(scope="session")
def cert_manager_crd(crd: None) -> None:
    """cert-manager's Certificate kind, without cert-manager: enough for the operator to make
    one (nothing issues it here)."""
    apply(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "certificates.cert-manager.io"},
            "spec": {
                "group": "cert-manager.io",
                "scope": "Namespaced",
                "names": {
                    "kind": "Certificate",
                    "plural": "certificates",
                    "singular": "certificate",
                },
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
    )
    kubectl(
        "wait", "--for=condition=Established", "crd/certificates.cert-manager.io", "--timeout=60s"
    )


def test_events_tell_the_story(operator: OperatorProcess, new_namespace: NewNamespace) -> None:
    namespace = new_namespace()
    apply(without_state(_job()), namespace=namespace)
    eventually(lambda: len(_bound(namespace, CLIENTS)) == 3, what="three client pods")

    events = eventually(
        lambda: [
            e["message"]
            for e in items("events", namespace=namespace)
            if e["involvedObject"]["kind"] == "FederatedJob"
        ],
        what="the job's events",
    )
    assert "Created client Pod for node edge-1" in events
    assert "Created Deployment digits-aggregator" in events
    assert json.dumps(events).count("Created client Pod") == 3
    # What the operator owns it applies server-side, under one field manager.
    shown = kubectl(
        "get", "deployment", "digits-aggregator", "-n", namespace, "-o", "json",
        "--show-managed-fields",
    )  # fmt: skip
    deployment = json.loads(shown.stdout)
    managers = {(m["manager"], m["operation"]) for m in deployment["metadata"]["managedFields"]}
    assert ("flotilla-operator", "Apply") in managers
