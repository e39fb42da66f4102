"""What the operator keeps of each job goes with the job: after 100 jobs come and go, its
memo and its metrics hold none of them, though the resync ran all along."""

from __future__ import annotations

import asyncio

import kmock
import kopf
import pytest

from tests.operator.conftest import JOBS, NAMESPACE, call, eventually, job_body, operator

COUNT = 100
PLURAL = f"/apis/{JOBS.rsplit('/', 1)[0]}/namespaces/{NAMESPACE}/federatedjobs"


@pytest.mark.asyncio
async def test_a_hundred_jobs_created_and_deleted_leave_nothing_behind(
    cluster: kmock.KubernetesEmulator,
) -> None:
    # KMock files a job under the namespace of its URL only when it is stored directly:
    # every job is there before the operator starts. No nodes: no client pods.
    for n in range(COUNT):
        job = job_body(
            security={"tls": {"mode": "disabled"}},  # no key to draw for each
            runtime={"aggregator": {"storage": {"ephemeral": True}}},
        )
        job["metadata"] |= {"name": f"job-{n}", "uid": f"uid-{n}"}
        cluster.objects[JOBS, NAMESPACE, f"job-{n}"] = job
    memo = kopf.Memo()

    async with operator(cluster, memo=memo) as metrics:
        await eventually(lambda: len(memo.get("jobs", {})) == COUNT, timeout=60)
        await eventually(lambda: len(metrics._jobs) == COUNT, timeout=120)  # each reconciled

        # Deleted as the resync goes on: a resync of a job that waited for a lane, or a
        # handler kopf runs once more, must not bring back the memory of a deleted job.
        await asyncio.gather(*(call(cluster, "DELETE", f"{PLURAL}/job-{n}") for n in range(COUNT)))
        await eventually(lambda: not memo["jobs"], timeout=150)
        await asyncio.sleep(2)  # a few more resync rounds

        assert memo["jobs"] == {}
        assert metrics._jobs == {}
        sample = metrics.registry.get_sample_value
        assert sample("flotilla_operator_jobs", {"phase": "Pending"}) == 0
