"""The kopf wiring of FederatedJob: thin handlers over jobs.py. Only this module and
schedule_handlers.py import kopf (an import-linter contract holds it).

One reconcile for create, update and resume; a resync loop re-runs it for elasticity and
status every `resync_seconds`, and at once when a node changes in a way placement sees.
A failed reconcile, classified by failures.py, is raised as kopf's PermanentError (no
retry by kopf; the resync tries again later) or TemporaryError (with its delay).
Nodes, the jobs' pods and aggregator Deployments come from indexes (watches, no API call
per object). No kopf timer: a timer makes kopf put a finalizer on every job, so `kubectl
delete fj` would hang while the operator is down, and owner references already delete
everything a job owns. The operator is the only writer of status; kopf keeps its own
bookkeeping in annotations, not in status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

from flotilla.api import API_GROUP, FederatedJob
from flotilla.fl.tls import client_context
from flotilla.k8s import objects as o
from flotilla.k8s.api import Connection, KubeApi
from flotilla.k8s.client_pods import aggregator_url
from flotilla.k8s.failures import Failure
from flotilla.k8s.jobs import ALL_NODES, Failed, forget, reconcile_job, resync_forever
from flotilla.k8s.metrics import OperatorMetrics
from flotilla.k8s.reconcile import Poll
from flotilla.k8s.schedule_handlers import register_schedules
from flotilla.k8s.serving import ROLE

PLURAL = "federatedjobs"
VERSION = "v1alpha1"
RESYNC_SECONDS = 10.0
Login = Callable[..., kopf.ConnectionInfo | None]


async def poll_aggregator(job: FederatedJob, ca: str | None) -> Mapping[str, Any] | None:
    """The aggregator's /v1/status, or None while it does not answer. Over TLS, only with
    the job's CA (`ca`, PEM) and the Service's name verified: no CA yet, no poll."""
    timeout = aiohttp.ClientTimeout(total=3)
    trust: ssl.SSLContext | bool = False
    if job.spec.security.tls.enabled:
        if ca is None:
            return None
        trust = client_context(ca_data=ca)
    try:
        async with (
            aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(ssl=trust)
            ) as session,
            session.get(f"{aggregator_url(job)}/v1/status") as response,
        ):
            if response.status != 200:
                return None
            answer: Mapping[str, Any] = await response.json()
            return answer
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def register(
    registry: kopf.OperatorRegistry,
    *,
    login: Login = default_login,
    poll: Poll = poll_aggregator,
    resync_seconds: float = RESYNC_SECONDS,
    metrics: OperatorMetrics | None = None,
    metrics_port: int | None = None,
    defaults: o.ClusterDefaults = o.NO_DEFAULTS,
) -> OperatorMetrics:
    """Put every handler of the operator into `registry` (tests bring their own).

    Returns the metrics it keeps; with `metrics_port`, /metrics is served there.
    """
    metrics = metrics or OperatorMetrics()
    resource = (API_GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return login(**kwargs)

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
        # status.kopf would not fit the job's status schema: keep kopf's state in annotations.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=API_GROUP, key="last-handled-configuration"
        )
        info = login(settings=settings, **kwargs)
        if info is None:
            raise kopf.PermanentError(
                "no Kubernetes credentials: no service account, no kubeconfig"
            )

        def relogin() -> Connection | None:  # after a 401: a rotated token, say
            again = login(settings=settings, **kwargs)
            return _connection(again) if again is not None else None

        memo["api"] = KubeApi(_connection(info), login=relogin, on_error=metrics.api_error)
        memo["metrics"] = metrics
        memo["jobs"] = {}  # (namespace, name) -> JobMemory
        memo["nodes"] = {}  # name -> what placement reads of it
        memo["kick"] = asyncio.Event()
        memo["defaults"] = defaults
        if metrics_port is not None:
            memo["metrics_runner"] = await metrics.serve(host="0.0.0.0", port=metrics_port)
        # The indexes are kopf's, filled by its watches; the loop reads them as they are.
        memo["resync"] = asyncio.create_task(resync_forever(memo, kwargs, poll, resync_seconds))

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
        memo["stopping"] = True  # a handler that runs now must not use the closed session
        memo["resync"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await memo["resync"]
        await memo["api"].close()
        if "metrics_runner" in memo:
            await memo["metrics_runner"].cleanup()

    @kopf.index(*resource, id="jobs", registry=registry)
    def jobs(*, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
        return {(namespace, name): dict(body)}

    @kopf.index("nodes", id="nodes", registry=registry)
    def nodes(*, body: kopf.Body, **_: Any) -> Any:
        return {ALL_NODES: dict(body)}

    @kopf.index("pods", id="client_pods", labels={o.ROLE_LABEL: "client"}, registry=registry)
    def client_pods(
        *, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> Any:
        return {(namespace, labels.get(o.JOB_LABEL)): dict(body)}

    @kopf.index(
        "pods", id="aggregator_pods", labels={o.ROLE_LABEL: "aggregator"}, registry=registry
    )
    def aggregator_pods(
        *, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> Any:
        return {(namespace, labels.get(o.JOB_LABEL)): dict(body)}

    @kopf.index(
        "deployments",
        id="aggregator_deployments",
        labels={o.ROLE_LABEL: "aggregator"},
        registry=registry,
    )
    def aggregator_deployments(
        *, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> Any:
        return {(namespace, labels.get(o.JOB_LABEL)): dict(body)}

    @kopf.index(
        "deployments", id="serving_deployments", labels={o.ROLE_LABEL: ROLE}, registry=registry
    )
    def serving_deployments(
        *, body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any
    ) -> Any:
        return {(namespace, labels.get(o.JOB_LABEL)): dict(body)}

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, field="spec", registry=registry)
    async def _changed(
        *,
        body: kopf.Body,
        memo: kopf.Memo,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **kwargs: Any,
    ) -> None:
        # kopf calls these once its indexes are filled: from now on the loop may resync it.
        try:
            await reconcile_job(dict(body), memo, kwargs, poll=poll, change=True, logger=logger)
        except Failed as failed:
            raise _kopf_error(failed.failure) from failed

    # `when` filters keep kopf from logging a handler run for every event of every node.
    # No on.delete: it would put a finalizer on every job. Owner references delete its objects.
    @kopf.on.event(*resource, when=_deleted, registry=registry)
    def _job_deleted(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
        forget(memo, namespace, name)

    @kopf.on.event("nodes", when=_placement_changed, registry=registry)
    def _node_changed(
        *, event: Mapping[str, Any], body: kopf.Body, name: str, memo: kopf.Memo, **_: Any
    ) -> None:
        view = _placement_view(event, body)
        if view is None:  # deleted: forget it, or a fleet's churn would pile up names
            memo["nodes"].pop(name, None)
        else:
            memo["nodes"][name] = view
        memo["kick"].set()

    register_schedules(registry, interval=resync_seconds)
    return metrics


def _kopf_error(failure: Failure) -> kopf.PermanentError | kopf.TemporaryError:
    if failure.permanent:
        return kopf.PermanentError(failure.message)
    return kopf.TemporaryError(failure.message, delay=failure.delay)


def _deleted(*, event: Mapping[str, Any], **_: Any) -> bool:
    return event.get("type") == "DELETED"


def _placement_changed(
    *, event: Mapping[str, Any], body: kopf.Body, name: str, memo: kopf.Memo, **_: Any
) -> bool:
    known = memo.get("nodes")
    return known is not None and known.get(name) != _placement_view(event, body)


def _placement_view(event: Mapping[str, Any], node: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What placement reads of a node: a change in it is worth a resync now."""
    if event.get("type") == "DELETED":
        return None
    spec, status = node.get("spec") or {}, node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    labels = tuple(sorted((node.get("metadata", {}).get("labels") or {}).items()))
    capacity = tuple(sorted((status.get("capacity") or {}).items()))
    return labels, bool(spec.get("unschedulable")), tuple(ready), capacity


def _connection(info: kopf.ConnectionInfo) -> Connection:
    """What kopf logged in with, for the API client (api.py knows no kopf)."""

    def text(value: object) -> str | None:
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    return Connection(
        server=info.server,
        token=info.token,
        scheme=info.scheme,
        username=info.username,
        password=info.password,
        ca_path=text(info.ca_path),
        ca_data=text(info.ca_data),
        insecure=bool(info.insecure),
        certificate_path=text(info.certificate_path),
        certificate_data=text(info.certificate_data),
        private_key_path=text(info.private_key_path),
        private_key_data=text(info.private_key_data),
        proxy_url=info.proxy_url,
    )
