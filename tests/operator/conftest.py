"""The operator against KMock, an HTTP double of the Kubernetes API (by kopf's author).

kopf runs in a thread with its own event loop (in the test's loop it would cancel the
test's tasks when it stops); KMock serves from the test's loop. KMock keeps no uid,
generation or label selectors and registers no CRD: the fixtures below fill in what the
operator needs, and the operator filters by labels itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import kmock
import kopf
import pytest

from flotilla.api import FederatedJob
from flotilla.k8s.handlers import register
from flotilla.k8s.metrics import OperatorMetrics

NAMESPACE = "ml"
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
def cluster(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    kmock.resources[JOBS] = kmock.ResourceInfo(
        kind="FederatedJob", namespaced=True, subresources={"status"}, verbs=VERBS
    )
    for resource, kind in CLUSTER_WIDE.items():
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=VERBS)
    for resource, kind in NAMESPACED.items():
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=VERBS)
    return kmock


def node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


Poll = Callable[[FederatedJob, str | None], Any]


@asynccontextmanager
async def operator(
    server: kmock.KubernetesEmulator, *, poll: Poll | None = None
) -> AsyncIterator[OperatorMetrics]:
    async def no_aggregator(job: FederatedJob, ca: str | None) -> Mapping[str, Any] | None:
        return None

    registry = kopf.OperatorRegistry()
    url = str(server.url)
    metrics = register(
        registry,
        login=lambda **_: kopf.ConnectionInfo(server=url),
        poll=poll or no_aggregator,
        resync_seconds=0.3,
    )
    settings = kopf.OperatorSettings()
    # KMock serves no CRD and namespace watches: discover the resources once instead.
    settings.scanning.disabled = True
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    standalone=True,
                    clusterwide=False,
                    namespaces=[NAMESPACE],
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
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
