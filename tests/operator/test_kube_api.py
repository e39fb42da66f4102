"""The API client (api.py) against KMock: server-side apply under the operator's field
manager, what a refused call carries to the failure classifier, a second login after a 401,
a kind the server does not serve, no answer at all.

KMock serves from the test's own event loop, so each awaited call here is also the proof
that the client never blocks the loop it is awaited from: it would wait forever for a
server that cannot run.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import kmock as km
import pytest
import pytest_asyncio

from flotilla.k8s.api import FIELD_MANAGER, AlreadyExists, ApiError, Connection, KubeApi, Ref
from flotilla.k8s.failures import classify
from tests.operator.conftest import JOBS, NAMESPACE, requests_of, status_object

CONFIG_MAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
SECRET = Ref("v1", "Secret", "digits-tokens", NAMESPACE)


def _config_map(value: str) -> dict[str, Any]:
    metadata = {"name": "digits-job", "namespace": NAMESPACE}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"k": value}}


class Errors(list[int]):
    def __call__(self, status: int) -> None:
        self.append(status)


@pytest_asyncio.fixture
async def api(cluster: km.KubernetesEmulator) -> AsyncIterator[tuple[KubeApi, Errors]]:
    errors = Errors()
    client = KubeApi(Connection(server=str(cluster.url), token="first"), on_error=errors)
    yield client, errors
    await client.close()


@pytest.mark.asyncio
async def test_apply_creates_then_updates_under_the_operators_field_manager(
    cluster: km.KubernetesEmulator, api: tuple[KubeApi, Errors]
) -> None:
    client, errors = api

    assert await client.apply(_config_map("a")) is True  # 201: created
    assert await client.apply(_config_map("b")) is False  # 200: applied over

    assert cluster.objects["v1/configmaps", NAMESPACE, "digits-job"]["data"] == {"k": "b"}
    applies = [r for r in requests_of(cluster) if r.url.path == f"{CONFIG_MAPS}/digits-job"]
    assert len(applies) == 2
    for request in applies:
        assert request.method == "PATCH"
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.params == {"fieldManager": FIELD_MANAGER, "force": "True"}
        assert request.headers["Authorization"] == "Bearer first"
    assert errors == []


@pytest.mark.asyncio
async def test_a_create_that_finds_its_object_is_already_exists_and_no_error(
    cluster: km.KubernetesEmulator, api: tuple[KubeApi, Errors]
) -> None:
    client, errors = api
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": NAMESPACE}}

    await client.create(pod)
    with pytest.raises(AlreadyExists) as raised:
        await client.create(pod)

    assert raised.value.target == "Pod p" and raised.value.creates
    assert errors == []  # an answer the caller expects, not a failed call
    assert await client.delete(Ref("v1", "Pod", "p", NAMESPACE)) is True
    assert await client.delete(Ref("v1", "Pod", "p", NAMESPACE)) is False
    assert await client.get(Ref("v1", "Pod", "p", NAMESPACE)) is None


@pytest.mark.asyncio
async def test_a_refused_apply_carries_what_the_classifier_needs(
    cluster: km.KubernetesEmulator, api: tuple[KubeApi, Errors]
) -> None:
    client, errors = api
    message = 'Deployment.apps "digits-aggregator" is invalid: spec.selector: field is immutable'
    refusal = status_object(422, "Invalid", message, kind="deployments")
    cluster[f"patch {DEPLOYMENTS}/digits-aggregator"] << 422 << refusal
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "digits-aggregator"},
    }

    with pytest.raises(ApiError) as raised:
        await client.apply(deployment, namespace=NAMESPACE)

    error = raised.value
    assert (error.status, error.reason, error.detail) == (422, "Invalid", message)
    assert (error.method, error.target, error.creates) == (
        "PATCH",
        "Deployment digits-aggregator",
        True,
    )
    failure = classify(error)
    assert failure is not None and failure.permanent and failure.reason == "Invalid"
    assert failure.message == f"Deployment digits-aggregator: {message}"
    assert errors == [422]


@pytest.mark.asyncio
async def test_retry_after_and_the_status_subresource(
    cluster: km.KubernetesEmulator, api: tuple[KubeApi, Errors]
) -> None:
    client, _ = api
    job = Ref("flotilla.dev/v1alpha1", "FederatedJob", "digits", NAMESPACE)
    path = f"/apis/flotilla.dev/v1alpha1/namespaces/{NAMESPACE}/federatedjobs/digits/status"
    cluster.objects[JOBS, NAMESPACE, "digits"] = {"metadata": {"name": "digits"}}
    busy = status_object(503, "ServiceUnavailable", "etcd leader changed")
    cluster[f"patch {path}"] << km.Response(status=503, headers={"Retry-After": "2"}, payload=busy)

    with pytest.raises(ApiError) as raised:
        await client.merge_patch(job, {"status": {"phase": "Running"}}, subresource="status")

    error = raised.value
    assert (error.status, error.retry_after, error.target) == (
        503,
        2.0,
        "FederatedJob digits (status)",
    )
    failure = classify(error)
    assert failure is not None and not failure.permanent and failure.delay == 2.0
    patch = next(r for r in requests_of(cluster) if r.url.path == path)
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.data == {"status": {"phase": "Running"}}


@pytest.mark.asyncio
async def test_a_401_logs_in_again_once_and_repeats_the_call(
    cluster: km.KubernetesEmulator,
) -> None:
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/digits-tokens"
    cluster.objects["v1/secrets", NAMESPACE, "digits-tokens"] = {"metadata": {"name": "x"}}
    expired = status_object(401, "Unauthorized", "Unauthorized")

    def first_token(request: km.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer first"

    cluster[f"get {path}"][first_token] << 401 << expired
    logins: list[str] = []

    def login() -> Connection:
        logins.append("again")
        return Connection(server=str(cluster.url), token="rotated")

    errors = Errors()
    connection = Connection(server=str(cluster.url), token="first")
    client = KubeApi(connection, login=login, on_error=errors)
    try:
        assert await client.get(SECRET) == {"metadata": {"name": "x"}}
        assert await client.get(SECRET) is not None  # the new token stays
    finally:
        await client.close()

    reads = [r.headers["Authorization"] for r in requests_of(cluster) if r.url.path == path]
    assert reads == ["Bearer first", "Bearer rotated", "Bearer rotated"]
    assert logins == ["again"] and errors == []


@pytest.mark.asyncio
async def test_a_kind_the_server_does_not_serve(
    cluster: km.KubernetesEmulator, api: tuple[KubeApi, Errors]
) -> None:
    client, _ = api
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "digits", "namespace": NAMESPACE},
    }

    with pytest.raises(ApiError) as raised:
        await client.apply(monitor)
    assert (
        await client.get(Ref("monitoring.coreos.com/v1", "ServiceMonitor", "d", NAMESPACE)) is None
    )
    assert not await client.delete(
        Ref("monitoring.coreos.com/v1", "ServiceMonitor", "d", NAMESPACE)
    )

    error = raised.value
    assert (error.status, error.missing, error.creates) == (404, "ServiceMonitor", True)
    failure = classify(error)
    assert failure is not None and failure.permanent  # until the cluster changes
    assert failure.message == (
        "ServiceMonitor digits: the server does not serve ServiceMonitor (monitoring.coreos.com/v1)"
    )
    discovery = [r for r in requests_of(cluster) if r.url.path == "/apis"]
    assert len(discovery) == 2  # at the start, and once for the miss: not for every call


@pytest.mark.asyncio
async def test_no_answer_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    client = KubeApi(Connection(server=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(ConnectionError) as raised:
            await client.get(SECRET)
    finally:
        await client.close()

    failure = classify(raised.value)
    assert failure is not None and failure.reason == "Unreachable" and not failure.permanent


@pytest.mark.asyncio
async def test_the_loop_runs_while_a_call_waits(
    cluster: km.KubernetesEmulator, api: tuple[KubeApi, Errors]
) -> None:
    client, _ = api

    async def slow() -> dict[str, Any]:
        await asyncio.sleep(0.5)
        return {"metadata": {"name": "digits-tokens"}}

    cluster[f"get /api/v1/namespaces/{NAMESPACE}/secrets/digits-tokens"] << slow
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(ticker())
    start = time.monotonic()
    try:
        assert await client.get(SECRET) == {"metadata": {"name": "digits-tokens"}}
    finally:
        beat.cancel()
    assert time.monotonic() - start >= 0.5
    assert ticks >= 20  # the loop went on: ~50 ticks of 10 ms, less what the machine steals
