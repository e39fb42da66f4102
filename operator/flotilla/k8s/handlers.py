"""The kopf wiring, and the only module that imports kopf: thin handlers over `reconcile`.

One reconcile for create, update and resume; a resync loop re-runs it for elasticity and
status every `resync_seconds`, and at once when a node changes in a way placement sees.
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
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
import kopf

from flotilla.api import API_GROUP, FederatedJob
from flotilla.fl.tls import client_context
from flotilla.k8s import objects as o
from flotilla.k8s.api import ApiError, Connection, KubeApi, path
from flotilla.k8s.client_pods import aggregator_url
from flotilla.k8s.events import EventLog, event
from flotilla.k8s.metrics import OperatorMetrics
from flotilla.k8s.reconcile import Context, JobMemory, Seen, reconcile
from flotilla.k8s.serving import ROLE, newest_versions
from flotilla.k8s.status import status_patch

PLURAL = "federatedjobs"
VERSION = "v1alpha1"
RESYNC_SECONDS = 10.0
RESYNC_CONCURRENCY = 16
Poll = Callable[[FederatedJob, str | None], Awaitable[Mapping[str, Any] | None]]
Login = Callable[..., kopf.ConnectionInfo | None]
log = logging.getLogger(__name__)
_ALL = "all"  # the one key of the nodes index


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
        memo["api"] = KubeApi(_connection(info), on_error=metrics.api_error)
        memo["metrics"] = metrics
        memo["jobs"] = {}  # (namespace, name) -> JobMemory
        memo["nodes"] = {}  # name -> what placement reads of it
        memo["kick"] = asyncio.Event()
        memo["defaults"] = defaults
        if metrics_port is not None:
            memo["metrics_runner"] = await metrics.serve(host="0.0.0.0", port=metrics_port)
        # The indexes are kopf's, filled by its watches; the loop reads them as they are.
        memo["resync"] = asyncio.create_task(_resync_forever(memo, kwargs, poll, resync_seconds))

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
        return {_ALL: dict(body)}

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
        await _reconcile(dict(body), memo, kwargs, poll=poll, full=True, logger=logger)

    # `when` filters keep kopf from logging a handler run for every event of every node.
    @kopf.on.event(*resource, when=_deleted, registry=registry)
    def _job_deleted(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
        metrics.forget(namespace or "", name)  # owner references delete its objects
        memo.get("jobs", {}).pop((namespace, name), None)

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

    return metrics


async def _resync_forever(
    memo: kopf.Memo, indexes: Mapping[str, Any], poll: Poll, interval: float
) -> None:
    """Reconcile every job kopf has handled, each `interval` or when a node changes."""
    kick: asyncio.Event = memo["kick"]
    # Jobs side by side, a bounded number at once: one whose aggregator does not answer
    # (its poll waits out a timeout) must not hold up the status of the others.
    lanes = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def resync(key: tuple[str, str], body: Mapping[str, Any]) -> None:
        async with lanes:
            try:
                await _reconcile(dict(body), memo, indexes, poll=poll, full=False)
            except Exception:  # one job's trouble must not stop the others' resync
                log.exception("resync of FederatedJob %s/%s failed", *key)

    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):  # wait_for may swallow a cancellation (3.11)
                await kick.wait()
        kick.clear()
        due = [
            resync(key, body)
            for key, bodies in list(indexes["jobs"].items())
            # Not yet handled by kopf in this process: its indexes may still be filling.
            if key in memo["jobs"] and (body := next(iter(bodies), None)) is not None
        ]
        await asyncio.gather(*due)


async def _reconcile(
    body: dict[str, Any],
    memo: kopf.Memo,
    indexes: Mapping[str, Any],
    *,
    poll: Poll,
    full: bool,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> None:
    if memo.get("stopping"):
        return
    metadata = body["metadata"]
    key = (metadata.get("namespace"), metadata["name"])
    memory: JobMemory = memo["jobs"].setdefault(key, JobMemory())
    metrics: OperatorMetrics = memo["metrics"]
    api: KubeApi = memo["api"]
    # The resync and the change handlers may fire together: one reconcile of a job at a time.
    async with memory.lock:
        seen = Seen(
            nodes=list(indexes["nodes"].get(_ALL, [])),
            pods=list(indexes["client_pods"].get(key, [])),
            aggregator_pods=list(indexes["aggregator_pods"].get(key, [])),
            deployment=next(iter(indexes["aggregator_deployments"].get(key, [])), None),
            serving_deployment=next(iter(indexes["serving_deployments"].get(key, [])), None),
            newest_models=newest_versions(
                job for bodies in indexes["jobs"].values() for job in bodies
            ),
        )
        events = EventLog(logger)
        context = Context(api=api, recorder=events, poll=poll, defaults=memo["defaults"])
        trigger = "change" if full else "resync"
        with metrics.reconcile_seconds.labels(trigger).time():
            try:
                outcome = await reconcile(context, body, seen=seen, full=full, memory=memory)
            except Exception as error:
                metrics.reconcile_errors.labels(type(error).__name__).inc()
                raise
            finally:
                await _post(api, body, events, now=context.now())
        before = memory.status or body.get("status") or {}
        url = path("FederatedJob", namespace=key[0], name=key[1])
        patch = status_patch(before, outcome.status)
        if patch:
            await api.merge_patch(f"{url}/status", {"status": patch})
        memory.status = outcome.status
        annotations = metadata.get("annotations") or {}
        changed = {k: v for k, v in outcome.annotations.items() if annotations.get(k) != v}
        if changed:
            await api.merge_patch(url, {"metadata": {"annotations": changed}})
    metrics.observed(key[0] or "", key[1], outcome.status)


async def _post(api: KubeApi, body: Mapping[str, Any], events: EventLog, *, now: datetime) -> None:
    """Post what the reconcile recorded; an event that cannot be posted is only logged."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    url = path("Event", namespace=body["metadata"].get("namespace") or "default")
    for kind, reason, message in events.pending:
        try:
            await api.create(url, event(body, type=kind, reason=reason, message=message, now=stamp))
        except (ApiError, aiohttp.ClientError, TimeoutError) as error:
            log.warning("could not post the event %r: %s", message, error)


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
    def text(value: object) -> str | None:
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    return Connection(
        server=info.server,
        token=info.token,
        ca_path=text(info.ca_path),
        ca_data=text(info.ca_data),
        insecure=bool(info.insecure),
        certificate_path=text(info.certificate_path),
        private_key_path=text(info.private_key_path),
    )
