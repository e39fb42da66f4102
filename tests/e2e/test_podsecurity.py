"""Namespaces that refuse pods: PodSecurity levels and quotas, as tenant namespaces have them.
The job's status names what was refused and why, in the API server's words; a job whose
sites' data is in claims runs under `restricted`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NODES, NewNamespace
from tests.e2e.kube import apply, condition, eventually, get, items, load, without_state
from tests.e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ENFORCE = "pod-security.kubernetes.io/enforce"
CLIENTS = "flotilla.dev/job=digits,flotilla.dev/role=client"
AGGREGATOR = "flotilla.dev/job=digits,flotilla.dev/role=aggregator"


def _scheduled(namespace: str) -> dict[str, Any]:
    return condition(get("fj", "digits", namespace=namespace), "Scheduled")


def test_a_baseline_namespace_refuses_host_path_and_the_status_says_so(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace(**{ENFORCE: "baseline"})
    apply(load(ROOT / "examples" / "federatedjob.yaml"), namespace=namespace)

    scheduled = eventually(
        lambda: (found := _scheduled(namespace)).get("reason") == "PodsRefused" and found,
        what="Scheduled=False PodsRefused",
    )
    assert (
        'violates PodSecurity "baseline:latest": hostPath volumes (volume "data")'
        in (scheduled["message"])
    )
    assert "site-a: pod digits-client-site-a" in scheduled["message"]
    available = condition(get("fj", "digits", namespace=namespace), "ClientsAvailable")
    assert available["reason"] == "TooFewClients"
    assert "refused: site-a, site-b, site-c" in available["message"]
    assert get("fj", "digits", namespace=namespace)["status"]["phase"] == "Pending"
    warnings = [
        e["message"]
        for e in items("events", namespace=namespace)
        if e["type"] == "Warning" and e["reason"] == "PodRefused"
    ]
    assert len(warnings) == 3  # once per site, not at every resync
    operator.wait_resyncs(3)
    assert (
        len([e for e in items("events", namespace=namespace) if e["reason"] == "PodRefused"]) == 3
    )


def _claim_and_volume(namespace: str, claim: str, node: str) -> list[dict[str, Any]]:
    """A site's claim bound to a node-local volume on its node, as a site operator makes it."""
    volume = f"{namespace}-{claim}"
    on_node = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "local": {"path": "/var/lib/flotilla/digits"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [on_node]}},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]  # fmt: skip


def test_a_restricted_namespace_runs_a_job_whose_sites_read_their_claims(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace(**{ENFORCE: "restricted"})
    site_nodes = {labels["flotilla.dev/site"]: node for node, (labels, _, _) in NODES.items()
                  if "flotilla.dev/site" in labels}  # fmt: skip
    for site, node in site_nodes.items():
        for document in _claim_and_volume(namespace, f"digits-data-{site}", node):
            apply(document)
    state = _claim_and_volume(namespace, "digits-aggregator-state", "cpu-1")[0]
    apply(state)  # the aggregator's own claim is the operator's: only its volume here

    apply(load(ROOT / "examples" / "federatedjob-restricted.yaml"), namespace=namespace)

    eventually(
        lambda: _scheduled(namespace).get("reason") == "AllScheduled",
        what="every pod admitted under restricted and bound",
    )
    bound = {
        p["metadata"]["name"]: p["spec"]["nodeName"] for p in items("pods", namespace=namespace)
    }
    assert bound["digits-client-site-a"] == "edge-1" and bound["digits-client-site-c"] == "gpu-1"
    (aggregator,) = [name for name in bound if name.startswith("digits-aggregator-")]
    assert bound[aggregator] == "cpu-1"  # its own nodeSelector


def test_a_quota_that_refuses_pods_is_named_for_the_aggregator_too(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-pods"},
            "spec": {"hard": {"pods": "0"}},
        },
        namespace=namespace,
    )
    job = copy.deepcopy(load(ROOT / "examples" / "federatedjob.yaml"))
    without_state(job)

    apply(job, namespace=namespace)

    scheduled = eventually(
        lambda: (found := _scheduled(namespace)).get("reason") == "AggregatorRefused" and found,
        what="Scheduled=False AggregatorRefused from the Deployment's ReplicaFailure",
    )
    assert "exceeded quota: no-pods" in scheduled["message"]
    assert not items("pods", namespace=namespace, selector=AGGREGATOR)
    assert not items("pods", namespace=namespace, selector=CLIENTS)


def test_an_aggregator_the_api_server_refuses_is_named_until_the_spec_is_fixed(
    operator: OperatorProcess, new_namespace: NewNamespace
) -> None:
    namespace = new_namespace()
    job = copy.deepcopy(load(ROOT / "examples" / "federatedjob.yaml"))
    without_state(job)
    # Passed to the pod as it is: the API server, not the CRD, knows it is invalid.
    no_terms = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
    job["spec"]["runtime"]["aggregator"]["affinity"] = {"nodeAffinity": no_terms}

    apply(job, namespace=namespace)

    scheduled = eventually(
        lambda: (found := _scheduled(namespace)).get("reason") == "AggregatorRefused" and found,
        what="Scheduled=False AggregatorRefused",
    )
    assert scheduled["message"].startswith("aggregator: Deployment digits-aggregator refused: ")
    assert "nodeSelectorTerms: Required value" in scheduled["message"]
    operator.wait_resyncs(3)
    assert _scheduled(namespace)["reason"] == "AggregatorRefused"  # said at every resync

    del job["spec"]["runtime"]["aggregator"]["affinity"]
    apply(job, namespace=namespace)

    eventually(
        lambda: items("deployments", namespace=namespace, selector=AGGREGATOR),
        what="the Deployment made once the spec is fixed",
    )
    eventually(
        lambda: _scheduled(namespace).get("reason") != "AggregatorRefused",
        what="the refusal gone from status",
    )
