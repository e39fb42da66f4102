"""The operator against KMock, an HTTP double of the Kubernetes API (by kopf's author).

kopf runs in a thread with its own event loop (in the test's loop it would cancel the
test's tasks when it stops); KMock serves from the test's loop. KMock keeps no uid,
generation or label selectors and registers no CRD: the fixtures below fill in what the
operator needs, and the operator filters by labels itself. KMock takes a server-side apply
for a merge patch, and answers 404 to one of an object that is not there: the fixture
makes such an apply create the object, as a real API server does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
import yaml

from flotilla.api import FederatedJob
from flotilla.k8s.handlers import register
from flotilla.k8s.metrics import OperatorMetrics

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "ml"
EDGE = {"flotilla.dev/edge": "true"}
JOBS = "flotilla.dev/v1alpha1/federatedjobs"
NAMESPACED = {
    "v1/pods": "Pod",
    "v1/services": "Service",
    "v1/secrets": "Secret",
    "v1/configmaps": "ConfigMap",
    "v1/persistentvolumeclaims": "PersistentVolumeClaim",
    "v1/events": "Event",
    "apps/v1/deployments": "Deployment",
    "networking.k8s.io/v1/networkpolicies": "NetworkPolicy",
    "cert-manager.io/v1/certificates": "Certificate",
}
# kopf waits for namespaces and CRDs to be discoverable before it starts any watch.
CLUSTER_WIDE = {
    "v1/nodes": "Node",
    "v1/namespaces": "Namespace",
    "apiextensions.k8s.io/v1/customresourcedefinitions": "CustomResourceDefinition",
}
VERBS = {"get", "list", "watch", "create", "patch", "delete"}


@pytest.fixture
def cluster(
    kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> kmock.KubernetesEmulator:
    _fast_membership(monkeypatch)
    _apply_creates(monkeypatch)
    kmock.resources[JOBS] = kmock.ResourceInfo(
        kind="FederatedJob", namespaced=True, subresources={"status"}, verbs=VERBS
    )
    for resource, kind in CLUSTER_WIDE.items():
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=VERBS)
    for resource, kind in NAMESPACED.items():
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=VERBS)
    return kmock


def _fast_membership(monkeypatch: pytest.MonkeyPatch) -> None:
    """KMock picks the reaction for a request by asking each reaction's view whether the
    request is in it, and a view answers by scanning every request the server ever took:
    quadratic, minutes for the few thousand requests of a hundred jobs. For the views its
    own reactions are made of (the server, filters and priorities on it) the answer is the
    filters' criteria; any other view (slices, groups) is asked as KMock asks it."""
    scan = kmock.View.__contains__

    def member(view: kmock.View, request: kmock.Request) -> bool | None:
        if isinstance(view, kmock.Root):
            taken = view._requests
            return request.id < len(taken) and taken[request.id] is request
        if type(view) is kmock.Filter:
            inner = member(view._source, request)
            return None if inner is None else inner and bool(view.criteria(request))
        if type(view) is kmock.Priority:
            return member(view._source, request)
        return None

    def contains(view: kmock.View, item: Any) -> bool:
        known = member(view, item) if isinstance(item, kmock.Request) else None
        return scan(view, item) if known is None else known

    monkeypatch.setattr(kmock.View, "__contains__", contains)


def _apply_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server-side apply of an object that is not there creates it and answers 201, as a
    real API server does (KMock's own handling of the PATCH then applies it again, as a
    merge: close enough for objects that only the operator writes)."""
    handle = kmock.KubernetesEmulator._handle

    async def applied(server: kmock.KubernetesEmulator, request: kmock.Request) -> Any:
        apply = request.headers.get("Content-Type") == "application/apply-patch+yaml"
        created = False
        if apply and request.resource and request.name and not request.subresource:
            key = (request.resource, request.namespace, request.name)
            async with server._lock:
                if key not in server._objects:
                    server._objects[key] = request.data
                    created = True
                elif server._objects[key].deleted:
                    server._objects[key].create(request.data)
                    created = True
                if created:
                    raw = server._objects[key].raw
                    await server._buses[request.resource].put({"type": "ADDED", "object": raw})
        response = await handle(server, request)
        if created and response.status == 200 and not response.prepared:
            response.set_status(201)
        return response

    monkeypatch.setattr(kmock.KubernetesEmulator, "_handle", applied)


def node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


Poll = Callable[[FederatedJob, str | None], Any]


def run_kopf(
    registry: kopf.OperatorRegistry,
    *,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    memo: kopf.Memo | None = None,
) -> None:
    """kopf serving NAMESPACE with `registry` until `stop`, as the tests and benches run it."""
    settings = kopf.OperatorSettings()
    # KMock serves no CRD and namespace watches: discover the resources once instead.
    settings.scanning.disabled = True
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=False,
            namespaces=[NAMESPACE],
            stop_flag=stop,
            ready_flag=ready,
            memo=memo,
        )
    )


def status_object(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A `Status` refusal as the API server writes one."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
        "details": details,
    }


@asynccontextmanager
async def operator(
    server: kmock.KubernetesEmulator,
    *,
    poll: Poll | None = None,
    memo: kopf.Memo | None = None,
    resync_seconds: float = 0.3,
) -> AsyncIterator[OperatorMetrics]:
    """The operator, serving `server`; `memo`, if given, is the one its handlers share."""

    async def no_aggregator(job: FederatedJob, ca: str | None) -> Mapping[str, Any] | None:
        return None

    registry = kopf.OperatorRegistry()
    url = str(server.url)
    metrics = register(
        registry,
        login=lambda **_: kopf.ConnectionInfo(server=url),
        poll=poll or no_aggregator,
        resync_seconds=resync_seconds,
    )
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_kopf(registry, stop=stop, ready=ready, memo=memo)
        except BaseException as error:  # surfaced in the test, not lost in the thread
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # Never block this loop: the mock API the operator talks to is served from it.
    await eventually(lambda: ready.is_set() or bool(errors), timeout=30)
    assert not errors, errors
    try:
        yield metrics
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive(), "the operator did not stop"
        assert not errors, errors


async def eventually(check: Callable[[], bool], *, timeout: float = 20.0) -> None:
    """Let the mock server serve (it runs on this loop) until `check` holds."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the operator")
        await asyncio.sleep(0.05)


def job_body(**spec: Any) -> dict[str, Any]:
    """examples/federatedjob.yaml in NAMESPACE, with `spec` merged in."""
    document: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
    # KMock keeps no uid, generation or resourceVersion (kopf patches with a test on it).
    document["metadata"] |= {
        "namespace": NAMESPACE,
        "uid": "job-uid-1",
        "generation": 1,
        "resourceVersion": "1",
    }
    document["spec"] |= spec
    return document


def client_pods(server: kmock.KubernetesEmulator) -> dict[str, dict[str, Any]]:
    return {
        name: dict(obj)
        for (resource, _, name), obj in server.objects.items()
        if resource.plural == "pods" and not obj.deleted
    }


def job_status(server: kmock.KubernetesEmulator, name: str = "digits") -> dict[str, Any]:
    job = server.objects[JOBS, NAMESPACE, name]
    return dict(job.get("status") or {})


def five_nodes(server: kmock.KubernetesEmulator) -> None:
    nodes = [
        node("edge-1", **EDGE, **{"flotilla.dev/site": "site-a"}),
        node("edge-2", **EDGE, **{"nvidia.com/gpu.present": "true"}),
        node("edge-3", **EDGE, **{"kubernetes.io/arch": "arm64"}),
        node("core-1"),
        node("core-2", **{"kubernetes.io/arch": "arm64"}),
    ]
    for each in nodes:
        server.objects["v1/nodes", None, each["metadata"]["name"]] = each


async def call(server: kmock.KubernetesEmulator, method: str, url: str, body: Any = None) -> None:
    """A request to the double, as kubectl would make it: the operator's watches see it."""
    headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{server.url}{url}", json=body, headers=headers) as response,
    ):
        assert response.status < 300, await response.text()


def requests_of(server: kmock.KubernetesEmulator) -> list[kmock.Request]:
    return list(server)  # every request the double answered, in order
