"""kubectl apply, as the operator sees it: objects appear, nodes come and go, restarts."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import kmock
import pytest

from tests.operator.conftest import (
    EDGE,
    JOBS,
    NAMESPACE,
    call,
    client_pods,
    eventually,
    five_nodes,
    job_body,
    job_status,
    node,
    operator,
    requests_of,
)


@pytest.mark.asyncio
async def test_a_job_on_three_of_five_nodes_then_a_fourth_then_one_gone(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body()

    async with operator(cluster) as metrics:
        await eventually(lambda: len(client_pods(cluster)) == 3)
        pods = client_pods(cluster)
        assert sorted(pods) == [
            "digits-client-edge-2",
            "digits-client-edge-3",
            "digits-client-site-a",
        ]
        for kind, name in [
            ("apps/v1/deployments", "digits-aggregator"),
            ("v1/services", "digits-aggregator"),
            ("v1/secrets", "digits-tokens"),
            ("v1/configmaps", "digits-job"),
        ]:
            owners = cluster.objects[kind, NAMESPACE, name]["metadata"]["ownerReferences"]
            assert owners[0]["uid"] == "job-uid-1" and owners[0]["kind"] == "FederatedJob"
        gpu = pods["digits-client-edge-2"]["spec"]
        assert gpu["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ][0]["matchFields"][0]["values"] == ["edge-2"]
        assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert "--max-seconds=120" in pods["digits-client-edge-3"]["spec"]["containers"][0]["args"]
        await eventually(lambda: job_status(cluster).get("clientsReady") == "0/3")
        assert job_status(cluster)["phase"] == "Pending"
        # No finalizer: `kubectl delete fj` must not wait for the operator.
        assert not cluster.objects[JOBS, NAMESPACE, "digits"]["metadata"].get("finalizers")

        # Through the API, as kubectl would: the operator watches nodes.
        await call(cluster, "POST", "/api/v1/nodes", node("edge-4", **EDGE))
        await eventually(lambda: "digits-client-edge-4" in client_pods(cluster))

        await call(cluster, "DELETE", "/api/v1/nodes/edge-3")
        await eventually(lambda: "digits-client-edge-3" not in client_pods(cluster))
        await eventually(lambda: job_status(cluster).get("clients", {}).get("desired") == 3)
        lost = job_status(cluster)["lostNodes"]
        assert [(e["node"], e["site"]) for e in lost] == [("edge-3", "edge-3")]
        assert job_status(cluster)["clients"]["failed"] == 1
        sample = metrics.registry.get_sample_value
        assert sample("flotilla_operator_jobs", {"phase": "Pending"}) == 1
        # Counted once the status is written: the patch may be seen first.
        await eventually(lambda: sample("flotilla_operator_client_pods", {"state": "desired"}) == 3)
        assert sample("flotilla_operator_reconcile_duration_seconds_count", {"trigger": "resync"})
        assert sample("flotilla_operator_reconcile_duration_seconds_count", {"trigger": "change"})
    # Every event the operator posted (KMock ignores generateName, so it stores only the first).
    messages = [r.data.get("message", "") for r in requests_of(cluster) if "/events" in str(r.url)]
    assert "Created client Pod for node edge-4" in messages
    assert "Deleted client Pod for node edge-3: node gone" in messages


@pytest.mark.asyncio
async def test_an_operator_restart_creates_nothing_twice(cluster: kmock.KubernetesEmulator) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body()
    async with operator(cluster):
        await eventually(lambda: len(client_pods(cluster)) == 3)
    creates = _pod_creations(cluster)

    async with operator(cluster):
        await eventually(lambda: job_status(cluster).get("clientsReady") == "0/3")
        seen = len(requests_of(cluster))
        await eventually(lambda: len(requests_of(cluster)) > seen + 20)  # a few timer ticks

    assert len(client_pods(cluster)) == 3
    assert _pod_creations(cluster) == creates


def _pod_creations(server: kmock.KubernetesEmulator) -> list[kmock.Request]:
    return [
        r
        for r in requests_of(server)
        if r.action == kmock.action.CREATE and r.resource and r.resource.plural == "pods"
    ]


@pytest.mark.asyncio
async def test_an_invalid_spec_fails_the_job_and_creates_nothing(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    bad = job_body()
    bad["spec"] = copy.deepcopy(bad["spec"]) | {"rounds": 0}
    cluster.objects[JOBS, NAMESPACE, "digits"] = bad

    async with operator(cluster):
        await eventually(lambda: job_status(cluster).get("phase") == "Failed")

    failed = next(c for c in job_status(cluster)["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.rounds" in failed["message"]
    created = [
        r
        for r in requests_of(cluster)
        if r.action == kmock.action.CREATE and r.resource and r.resource.plural != "events"
    ]
    assert created == []


def _plain(value: Any) -> Any:
    """KMock's stored objects as plain dicts and lists, to edit and store back."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _set_job(server: kmock.KubernetesEmulator, **spec: Any) -> None:
    job = _plain(server.objects[JOBS, NAMESPACE, "digits"])
    job["spec"] |= spec
    job["metadata"]["generation"] += 1
    server.objects[JOBS, NAMESPACE, "digits"] = job


@pytest.mark.asyncio
async def test_suspend_removes_the_clients_and_keeps_the_aggregator_then_resume(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body()
    async with operator(cluster):
        await eventually(lambda: len(client_pods(cluster)) == 3)

        _set_job(cluster, suspend=True)
        await eventually(lambda: job_status(cluster).get("phase") == "Suspended")
        await eventually(lambda: client_pods(cluster) == {})
        assert not cluster.objects["apps/v1/deployments", NAMESPACE, "digits-aggregator"].deleted

        _set_job(cluster, suspend=False)
        await eventually(lambda: len(client_pods(cluster)) == 3)


def _tokens(server: kmock.KubernetesEmulator) -> dict[str, str]:
    secret = server.objects["v1/secrets", NAMESPACE, "digits-tokens"]
    tokens: dict[str, str] = json.loads(secret["stringData"]["tokens.json"])
    return tokens


def _template(server: kmock.KubernetesEmulator) -> dict[str, Any]:
    deployment = server.objects["apps/v1/deployments", NAMESPACE, "digits-aggregator"]
    return dict(_plain(deployment["spec"]["template"]))


@pytest.mark.asyncio
async def test_resuming_rotates_every_token_keeping_the_aggregator_pod_and_the_ca(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body()
    async with operator(cluster):
        await eventually(lambda: len(client_pods(cluster)) == 3)
        before, ca = _tokens(cluster), _ca(cluster)
        await eventually(lambda: len(requests_of(cluster)) > 40)  # timer ticks change nothing
        assert _tokens(cluster) == before

        _set_job(cluster, suspend=True)
        await eventually(lambda: client_pods(cluster) == {})
        assert _tokens(cluster) == before  # suspending alone rotates nothing
        template = _template(cluster)

        _set_job(cluster, suspend=False)
        await eventually(lambda: len(client_pods(cluster)) == 3)

    after = _tokens(cluster)
    assert sorted(after) == sorted(before)
    assert all(after[site] != before[site] for site in before)
    # The aggregator re-reads its mounted tokens file: its pod is not replaced.
    assert _template(cluster) == template
    assert _ca(cluster) == ca  # the TLS Secret is made once
    secret = cluster.objects["v1/secrets", NAMESPACE, "digits-tokens"]
    assert secret["metadata"]["annotations"]["flotilla.dev/rotate-on-resume"] == "false"


def _ca(server: kmock.KubernetesEmulator) -> str:
    ca: str = server.objects["v1/secrets", NAMESPACE, "digits-tls"]["stringData"]["ca.crt"]
    return ca


@pytest.mark.asyncio
async def test_a_failed_client_pod_is_replaced_within_the_backoff_limit(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body(backoffLimit=1)
    async with operator(cluster):
        await eventually(lambda: len(client_pods(cluster)) == 3)
        name = "digits-client-site-a"

        async def fail() -> None:  # through the API, as a kubelet would: watchers see it
            url = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status"
            await call(cluster, "PATCH", url, {"status": {"phase": "Failed"}})

        def replaced() -> bool:
            pod = client_pods(cluster).get(name)
            return pod is not None and "status" not in pod  # a fresh pod, not the failed one

        await fail()  # within backoffLimit=1: deleted and created again
        await eventually(replaced)
        await fail()  # beyond it: left failed, and counted
        await eventually(lambda: job_status(cluster)["clients"]["failed"] == 1)
        seen = len(requests_of(cluster))
        await eventually(lambda: len(requests_of(cluster)) > seen + 20)  # a few timer ticks
        assert client_pods(cluster)[name]["status"]["phase"] == "Failed"
    job = cluster.objects[JOBS, NAMESPACE, "digits"]
    assert job["metadata"]["annotations"]["flotilla.dev/client-replacements"] == '{"site-a": 1}'


@pytest.mark.asyncio
async def test_a_finished_job_removes_its_clients_then_its_aggregator_after_the_ttl(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body(ttlSecondsAfterFinished=1)
    answer: dict[str, Any] = {
        "phase": "training",
        "completedRounds": 4,
        "message": "round 5: training on 3 clients",
        "lastRound": {"round": 4, "loss": 0.3, "accuracy": 0.91},
        "tracking": {"enabled": True, "state": "synced", "runId": "run-42"},
    }

    async def poll(job: Any, ca: str | None) -> dict[str, Any]:
        return answer

    async with operator(cluster, poll=poll):
        await eventually(lambda: job_status(cluster).get("progress") == "4/10")
        status = job_status(cluster)
        assert status["metrics"] == {"loss": 0.3, "accuracy": 0.91}
        assert status["mlflowRunId"] == "run-42"

        answer.update(phase="done", completedRounds=10)
        await eventually(lambda: job_status(cluster).get("phase") == "Succeeded")
        await eventually(lambda: client_pods(cluster) == {})
        await eventually(
            lambda: cluster.objects["apps/v1/deployments", NAMESPACE, "digits-aggregator"].deleted,
            timeout=30,
        )
    assert job_status(cluster)["completionTime"]


@pytest.mark.asyncio
async def test_a_crash_looping_aggregator_pod_shows_as_aggregator_failed(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body()
    # What the Deployment's ReplicaSet would have made, as the kubelet reports it.
    cluster.objects["v1/pods", NAMESPACE, "digits-aggregator-7d9f-x2x"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "digits-aggregator-7d9f-x2x",
            "namespace": NAMESPACE,
            "labels": {"flotilla.dev/job": "digits", "flotilla.dev/role": "aggregator"},
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "aggregator",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
        },
    }

    async def unreachable(job: Any, ca: str | None) -> None:
        return None

    async with operator(cluster, poll=unreachable):

        def running_reason() -> str | None:
            conditions = job_status(cluster).get("conditions") or []
            return next((c["reason"] for c in conditions if c["type"] == "Running"), None)

        await eventually(lambda: running_reason() == "AggregatorFailed")
    running = next(c for c in job_status(cluster)["conditions"] if c["type"] == "Running")
    assert "last exit code 137" in running["message"]
    assert job_status(cluster)["phase"] == "Pending"  # within backoffLimit: not failed yet


def _deployment(server: kmock.KubernetesEmulator, name: str) -> dict[str, Any] | None:
    try:
        deployment = server.objects["apps/v1/deployments", NAMESPACE, name]
    except KeyError:
        return None
    return None if deployment.deleted else dict(deployment)


def _served_version(server: kmock.KubernetesEmulator, name: str) -> str | None:
    deployment = _deployment(server, name)
    if deployment is None:
        return None
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get("flotilla.dev/model-version")


@pytest.mark.asyncio
async def test_a_succeeded_job_serves_its_model_and_a_later_version_rolls_it(
    cluster: kmock.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body(ttlSecondsAfterFinished=1)
    # A second job that registers the same model under the same alias, later.
    second = job_body()
    second["metadata"] |= {"name": "digits-2", "uid": "job-uid-2"}
    cluster.objects[JOBS, NAMESPACE, "digits-2"] = second
    training = {"phase": "training", "completedRounds": 9, "tracking": {"enabled": True}}
    answers: dict[str, dict[str, Any]] = {"digits": dict(training), "digits-2": dict(training)}

    async def poll(job: Any, ca: str | None) -> dict[str, Any] | None:
        return answers.get(job.metadata.name)

    async with operator(cluster, poll=poll):
        await eventually(lambda: job_status(cluster).get("progress") == "9/10")
        assert _deployment(cluster, "digits-model") is None  # nothing before success

        # Done; the exporter registers the model a moment later.
        answers["digits"] |= {"phase": "done", "completedRounds": 10}
        await eventually(lambda: job_status(cluster).get("phase") == "Succeeded")
        serving = next(c for c in job_status(cluster)["conditions"] if c["type"] == "Serving")
        assert serving["reason"] == "NoRegisteredModel"
        registered = {"name": "digits-cnn", "version": "1", "round": 10}
        answers["digits"]["tracking"] = {"enabled": True, "registeredModel": registered}
        await eventually(lambda: _served_version(cluster, "digits-model") == "1")
        service = cluster.objects["v1/services", NAMESPACE, "digits-model"]
        assert service["spec"]["selector"] == {
            "flotilla.dev/job": "digits",
            "flotilla.dev/role": "model",
        }
        args = _deployment(cluster, "digits-model")["spec"]["template"]["spec"]["containers"][0]
        assert args["args"][:2] == ["serve", "--model-uri=models:/digits-cnn@candidate"]
        await eventually(lambda: "servingEndpoint" in job_status(cluster))
        status = job_status(cluster)
        assert status["model"] == {"name": "digits-cnn", "version": "1", "alias": "candidate"}
        assert status["servingEndpoint"] == "http://digits-model.ml.svc:8080/invocations"

        # The second job registers version 2.
        answers["digits-2"] = {
            "phase": "done",
            "completedRounds": 10,
            "tracking": {"enabled": True, "registeredModel": registered | {"version": "2"}},
        }
        await eventually(lambda: _served_version(cluster, "digits-2-model") == "2")
        await eventually(lambda: _served_version(cluster, "digits-model") == "2")

        # The aggregator goes after the TTL; the served model stays.
        await eventually(lambda: _deployment(cluster, "digits-aggregator") is None, timeout=30)
        assert _served_version(cluster, "digits-model") == "2"
