"""What the operator does when the API server fails a call: a 422 is not retried and says so
in the job's status; a 503 is retried after the server's Retry-After, and heals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import kmock as km
import pytest

from flotilla.k8s.failures import TEMPORARY_DELAY
from tests.operator.conftest import (
    JOBS,
    NAMESPACE,
    client_pods,
    eventually,
    five_nodes,
    job_body,
    job_status,
    operator,
    requests_of,
    status_object,
)

STATUS = f"/apis/{JOBS.rsplit('/', 1)[0]}/namespaces/{NAMESPACE}/federatedjobs/digits/status"
TOKENS = f"/api/v1/namespaces/{NAMESPACE}/secrets/digits-tokens"
INVALID = (
    'FederatedJob.flotilla.dev "digits" is invalid: status.clients.desired: '
    "Invalid value: 3: must be less than or equal to 2"
)


def _condition(server: km.KubernetesEmulator, kind: str) -> dict[str, Any] | None:
    """The job's condition of that type, as KMock stores the status."""
    conditions = job_status(server).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


@pytest.mark.asyncio
async def test_a_422_is_written_into_the_status_and_not_retried(
    cluster: km.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body()

    # The CRD on the server refuses the status the operator writes (a version skew, say);
    # a patch of the failure's condition alone passes.
    def whole_status(request: km.Request) -> bool:
        return "clients" in ((request.data or {}).get("status") or {})

    refused = cluster[f"patch {STATUS}"][whole_status]
    refused << 422 << status_object(422, "Invalid", INVALID)

    def written() -> list[dict[str, Any]]:  # KMock stores even what it answers 422 to
        return [
            r.data["status"]
            for r in requests_of(cluster)
            if r.method == "PATCH" and r.url.path == STATUS and not whole_status(r)
        ]

    async with operator(cluster):
        await eventually(lambda: bool(written()))
        # KMock keeps no resourceVersion, so kopf may take events from before its own
        # patches for a new creation, and run the handler again at once: no retry, that.
        tried = await _quiet(lambda: len(list(refused)), seconds=2)
        await asyncio.sleep(TEMPORARY_DELAY + 1)  # a temporary failure would be tried by now

        assert len(list(refused)) == tried  # permanent: neither kopf nor the resync retried
        assert len(client_pods(cluster)) == 3  # what was applied before the failure stays
    assert len(written()) == 1  # once: the condition holds in the operator's memory
    condition = written()[0]["conditions"][-1]
    assert condition["type"] == "ReconcileFailure" and condition["status"] == "True"
    assert condition["reason"] == "Invalid"
    assert condition["message"] == f"FederatedJob digits (status): {INVALID}"
    events = [r.data for r in requests_of(cluster) if r.url.path.endswith("/events")]
    warnings = [e for e in events if e.get("reason") == "ReconcileFailure"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert warnings[0]["message"] == condition["message"]


@pytest.mark.asyncio
async def test_a_503_is_retried_after_its_retry_after_and_heals(
    cluster: km.KubernetesEmulator,
) -> None:
    five_nodes(cluster)
    cluster.objects[JOBS, NAMESPACE, "digits"] = job_body()
    answered: list[float] = []  # when each 503 went out

    def failing(request: km.Request) -> bool:  # for a second after the first 503
        return not answered or time.monotonic() - answered[0] < 1

    def unavailable() -> km.Response:
        answered.append(time.monotonic())
        return km.Response(
            status=503,
            headers={"Retry-After": "2"},
            payload=status_object(503, "ServiceUnavailable", "etcd leader changed"),
        )

    cluster[f"get {TOKENS}"][failing] << unavailable

    def reads() -> int:
        return sum(1 for r in requests_of(cluster) if r.method == "GET" and r.url.path == TOKENS)

    async with operator(cluster):
        await eventually(lambda: bool(answered))
        # Replays of stale events (KMock keeps no resourceVersion) may ask again at once.
        failed = await _quiet(reads, seconds=0.5)
        await eventually(lambda: reads() > failed)
        healed = time.monotonic()
        await eventually(lambda: len(client_pods(cluster)) == 3)
        await eventually(lambda: job_status(cluster).get("clientsReady") == "0/3")

    assert failed == len(answered)  # nothing came back during the second the API failed
    assert healed - answered[0] >= 1.9  # neither kopf nor the resync before Retry-After
    assert _condition(cluster, "ReconcileFailure") is None  # temporary: never a condition


async def _quiet(count: Callable[[], int], *, seconds: float) -> int:
    """Wait until `count` has not changed for `seconds`; its value then."""
    last, since = count(), time.monotonic()
    while time.monotonic() - since < seconds:
        await asyncio.sleep(0.05)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return last
