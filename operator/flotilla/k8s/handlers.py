"""The kopf wiring, and the only module that imports kopf: thin handlers over `reconcile`.

One reconcile for create, update and resume; a timer re-runs it for elasticity and status,
with the job's client pods from an index (no API call per pod). The operator is the only
writer of status; kopf keeps its own bookkeeping in annotations, not in status.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf

from flotilla.api import API_GROUP, FederatedJob
from flotilla.fl.tls import client_context
from flotilla.k8s import objects as o
from flotilla.k8s.api import Connection, KubeApi
from flotilla.k8s.client_pods import aggregator_url
from flotilla.k8s.metrics import OperatorMetrics
from flotilla.k8s.reconcile import Context, Outcome, reconcile

PLURAL = "federatedjobs"
VERSION = "v1alpha1"
TIMER_SECONDS = 10.0
Poll = Callable[[FederatedJob, str | None], Awaitable[Mapping[str, Any] | None]]
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


class _Events:
    def __init__(
        self, body: kopf.Body, logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        self.body, self.logger = body, logger

    def info(self, reason: str, message: str) -> None:
        self.logger.info(message)
        kopf.info(self.body, reason=reason, message=message)

    def warn(self, reason: str, message: str) -> None:
        self.logger.warning(message)
        kopf.warn(self.body, reason=reason, message=message)


def register(
    registry: kopf.OperatorRegistry,
    *,
    login: Login = default_login,
    poll: Poll = poll_aggregator,
    timer_seconds: float = TIMER_SECONDS,
    metrics: OperatorMetrics | None = None,
    metrics_port: int | None = None,
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
        if metrics_port is not None:
            memo["metrics_runner"] = await metrics.serve(host="0.0.0.0", port=metrics_port)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
        memo["stopping"] = True  # a timer that fires now must not use the closed session
        await memo["api"].close()
        if "metrics_runner" in memo:
            await memo["metrics_runner"].cleanup()

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

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, field="spec", registry=registry)
    async def _changed(**kwargs: Any) -> None:
        await _reconcile(full=True, poll=poll, **kwargs)

    @kopf.timer(*resource, interval=timer_seconds, registry=registry)
    async def _tick(**kwargs: Any) -> None:
        await _reconcile(full=False, poll=poll, **kwargs)

    @kopf.on.delete(*resource, optional=True, registry=registry)
    def _deleted(*, namespace: str | None, name: str, **_: Any) -> None:
        metrics.forget(namespace or "", name)  # owner references delete its objects

    return metrics


async def _reconcile(
    *,
    full: bool,
    poll: Poll,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    client_pods: kopf.Index[tuple[str, str], dict[str, Any]],
    aggregator_pods: kopf.Index[tuple[str, str], dict[str, Any]],
    namespace: str,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    if memo.get("stopping"):
        return
    key = (namespace, name)
    # The timer and the change handlers may fire together: one reconcile of a job at a time.
    async with memo.setdefault("locks", {}).setdefault(key, asyncio.Lock()):
        context = Context(api=memo["api"], recorder=_Events(body, logger), poll=poll)
        pods = list(client_pods.get(key, []))
        aggregators = list(aggregator_pods.get(key, []))
        # Replacements counted in this process win over a body that does not show them yet.
        counted = memo.setdefault("replacements", {}).setdefault(key, {})
        metrics: OperatorMetrics = memo["metrics"]
        trigger = "change" if full else "timer"
        with metrics.reconcile_seconds.labels(trigger).time():
            try:
                outcome: Outcome = await reconcile(
                    context,
                    dict(body),
                    pods=pods,
                    aggregator_pods=aggregators,
                    full=full,
                    replacements=counted,
                )
            except Exception as error:
                metrics.reconcile_errors.labels(type(error).__name__).inc()
                raise
    metrics.observed(namespace, name, outcome.status)
    patch.status.update(outcome.status)
    for annotation, value in outcome.annotations.items():
        if body.metadata.annotations.get(annotation) != value:
            patch.metadata.annotations[annotation] = value


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
