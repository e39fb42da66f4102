"""FederatedSchedules as the operator's loop runs them against KMock: probes go out and come
back, a changed digest makes a job, and the schedule carries no kopf bookkeeping."""

from __future__ import annotations

from typing import Any

import kmock
import pytest
import yaml

from tests.operator.conftest import (
    EDGE,
    NAMESPACE,
    ROOT,
    VERBS,
    call,
    eventually,
    node,
    operator,
)

SCHEDULES = "flotilla.dev/v1alpha1/federatedschedules"
V1, V2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64


@pytest.fixture
def schedules(cluster: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    cluster.resources[SCHEDULES] = kmock.ResourceInfo(
        kind="FederatedSchedule", namespaced=True, subresources={"status"}, verbs=VERBS
    )
    for name, site in (("edge-1", "site-a"), ("edge-2", "site-b")):
        cluster.objects["v1/nodes", None, name] = node(name, **EDGE, **{"flotilla.dev/site": site})
    return cluster


def _schedule() -> dict[str, Any]:
    job = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
    return {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedSchedule",
        # KMock keeps no uid, generation or creationTimestamp: given here.
        "metadata": {
            "name": "retrain",
            "namespace": NAMESPACE,
            "uid": "sched-uid",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"onDataChange": {"enabled": True}, "jobTemplate": {"spec": job["spec"]}},
    }


def _probes(server: kmock.KubernetesEmulator) -> dict[str, dict[str, Any]]:
    return {
        name: dict(obj)
        for (resource, _, name), obj in server.objects.items()
        if resource.plural == "pods"
        and not obj.deleted
        and obj["metadata"]["labels"].get("flotilla.dev/role") == "probe"
    }


def _status(server: kmock.KubernetesEmulator) -> dict[str, Any]:
    return dict(server.objects[SCHEDULES, NAMESPACE, "retrain"].get("status") or {})


def _jobs(server: kmock.KubernetesEmulator) -> dict[str, dict[str, Any]]:
    return {
        name: dict(obj)
        for (resource, _, name), obj in server.objects.items()
        if resource.plural == "federatedjobs" and not obj.deleted
    }


def _names(server: kmock.KubernetesEmulator, plural: str) -> set[str]:
    return {
        name
        for (resource, _, name), obj in server.objects.items()
        if resource.plural == plural and not obj.deleted
    }


async def _answer(server: kmock.KubernetesEmulator, digests: dict[str, str]) -> None:
    """Play the kubelet: every probe pod ends, its digest in its termination message."""
    await eventually(lambda: len(_probes(server)) == len(digests))
    for name, pod in _probes(server).items():
        digest = digests[pod["metadata"]["labels"]["flotilla.dev/site"]]
        terminated = {"exitCode": 0, "reason": "Completed", "message": digest}
        status = {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": terminated}}],
        }
        url = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status"
        await call(server, "PATCH", url, {"status": status})


@pytest.mark.asyncio
async def test_a_changed_digest_makes_a_job(schedules: kmock.KubernetesEmulator) -> None:
    schedules.objects[SCHEDULES, NAMESPACE, "retrain"] = _schedule()
    async with operator(schedules):
        await _answer(schedules, {"site-a": V1, "site-b": V1})
        await eventually(
            lambda: _status(schedules).get("lastDigests") == {"site-a": V1, "site-b": V1}
        )
        await eventually(lambda: not _probes(schedules))
        assert not _jobs(schedules), "the first probe only records"

        url = f"/apis/flotilla.dev/v1alpha1/namespaces/{NAMESPACE}/federatedschedules/retrain"
        annotate = {"metadata": {"annotations": {"flotilla.dev/check-data": "1"}}}
        await call(schedules, "PATCH", url, annotate)
        await _answer(schedules, {"site-a": V2, "site-b": V1})
        await eventually(lambda: len(_jobs(schedules)) == 1)

        ((name, job),) = _jobs(schedules).items()
        assert name.startswith("retrain-d")
        assert job["metadata"]["ownerReferences"][0]["uid"] == "sched-uid"
        assert job["metadata"]["labels"]["flotilla.dev/schedule"] == "retrain"
        await eventually(lambda: (_status(schedules).get("lastTrigger") or {}).get("job") == name)
        assert "site site-a changed" in _status(schedules)["lastTrigger"]["message"]
        assert [a["name"] for a in _status(schedules)["active"]] == [name]
        # The job operator takes the job as one of its own: it gets its aggregator.
        await eventually(lambda: f"{name}-aggregator" in _names(schedules, "deployments"))
    metadata = schedules.objects[SCHEDULES, NAMESPACE, "retrain"]["metadata"]
    assert not metadata.get("finalizers"), "kubectl delete fsched must not wait for the operator"
    assert not [key for key in metadata.get("annotations") or {} if "kopf" in key]
