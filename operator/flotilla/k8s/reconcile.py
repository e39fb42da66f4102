"""One level-based reconcile of a FederatedJob: observe -> plan (pure) -> apply -> status.

Called on create, update and resume, and by a timer (elasticity and status). Idempotent:
objects that exist are left alone or patched, pods are created or deleted, never patched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from flotilla.api import FederatedJob, SpecError
from flotilla.fl.certs import TlsMaterial
from flotilla.k8s import objects as o
from flotilla.k8s.aggregator_objects import ROTATE_ANNOTATION, TOKENS_KEY
from flotilla.k8s.api import AlreadyExists, KubeApi, path
from flotilla.k8s.nodes import NodeInfo
from flotilla.k8s.plan import Plan, plan_job
from flotilla.k8s.security_objects import CA_KEY, CERT_KEY, PRIVATE_KEY
from flotilla.k8s.status import AggregatorPodView, Observation, PodView, compute_status

REPLACEMENTS_ANNOTATION = "flotilla.dev/client-replacements"
_KEEP_ON_UPDATE = {"PersistentVolumeClaim"}  # its spec is immutable once bound


class Recorder(Protocol):
    def info(self, reason: str, message: str) -> None: ...

    def warn(self, reason: str, message: str) -> None: ...


@dataclass
class Context:
    api: KubeApi
    recorder: Recorder
    # The aggregator's /v1/status, over HTTPS verified against the CA given (PEM), if any.
    poll: Callable[[FederatedJob, str | None], Awaitable[Mapping[str, Any] | None]]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass
class Outcome:
    status: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)


async def reconcile(
    ctx: Context,
    body: Mapping[str, Any],
    *,
    pods: Sequence[Mapping[str, Any]],
    full: bool,
    aggregator_pods: Sequence[Mapping[str, Any]] = (),
    replacements: dict[str, int] | None = None,
) -> Outcome:
    """`replacements` (site -> failed pods replaced) is updated in place; the job's
    annotation keeps it across operator restarts."""
    previous = dict(body.get("status") or {})
    generation = body.get("metadata", {}).get("generation")
    now = ctx.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        job = FederatedJob.from_dict({k: v for k, v in body.items() if k != "status"})
    except SpecError as error:
        invalid = "; ".join(error.problems)
        ctx.recorder.warn("InvalidSpec", f"nothing created: {invalid}")
        observed = Observation(desired_sites=[], pods=[], aggregator=None, invalid=invalid)
        return Outcome(
            compute_status(None, observed, previous=previous, generation=generation, now=now)
        )
    namespace = job.metadata.namespace or "default"
    nodes = [NodeInfo.from_api(n) for n in await ctx.api.list(path("Node"))]
    secret = await ctx.api.get(path("Secret", namespace=namespace, name=o.tokens_secret_name(job)))
    tokens = _tokens(secret)
    # Resumed after a suspension: every site gets a new token (the old ones may have leaked
    # while the job sat idle; the client pods are all new anyway).
    rotate = not job.spec.suspend and _annotation(secret, ROTATE_ANNOTATION) == "true"
    tls_secret = None
    if job.spec.security.tls.enabled:
        tls_secret = await ctx.api.get(
            path("Secret", namespace=namespace, name=o.tls_secret_name(job))
        )
    existing_tls = _tls_material(tls_secret)
    answer = await ctx.poll(job, existing_tls.ca if existing_tls else None)
    finished = previous.get("phase") in ("Succeeded", "Failed") or (answer or {}).get("phase") in (
        "done",
        "failed",
    )
    plan = plan_job(
        job,
        nodes,
        existing_tokens={} if rotate else tokens,
        existing_tls=existing_tls,
        finished=finished,
    )
    missing_tls = job.spec.security.tls.mode == "operator" and existing_tls is None
    if _expired(job, previous, ctx.now()):
        await _clean_up(ctx, plan, namespace)
    elif full or secret is None or rotate or missing_tls or sorted(tokens) != plan.sites:
        if rotate:
            ctx.recorder.info("TokensRotated", "New client tokens: the job resumed")
        await _apply_aggregator(ctx, plan, namespace)
    for problem in plan.problems:
        ctx.recorder.warn("NoDataSource", problem)
    annotated = body["metadata"].get("annotations", {}).get(REPLACEMENTS_ANNOTATION)
    replacements = replacements if replacements is not None else {}
    for site, count in json.loads(annotated or "{}").items():
        replacements[site] = max(replacements.get(site, 0), int(count))
    views, lost = await _sync_pods(ctx, job, plan, pods, nodes, replacements)
    observed = Observation(
        desired_sites=plan.sites,
        pods=views,
        aggregator=answer,
        lost_nodes=lost,
        aggregator_pods=[AggregatorPodView.from_api(pod) for pod in aggregator_pods],
    )
    status = compute_status(job, observed, previous=previous, generation=generation, now=now)
    return Outcome(status, {REPLACEMENTS_ANNOTATION: json.dumps(replacements, sort_keys=True)})


def _tokens(secret: Mapping[str, Any] | None) -> dict[str, str]:
    if not secret:
        return {}
    if TOKENS_KEY in (secret.get("data") or {}):
        raw = base64.b64decode(secret["data"][TOKENS_KEY]).decode()
    else:  # as written, before the API server moved stringData to data
        raw = (secret.get("stringData") or {}).get(TOKENS_KEY, "{}")
    tokens: dict[str, str] = json.loads(raw)
    return tokens


def _annotation(obj: Mapping[str, Any] | None, key: str) -> str | None:
    value = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return value.get(key)


def _tls_material(secret: Mapping[str, Any] | None) -> TlsMaterial | None:
    """What a TLS Secret holds, whoever wrote it (we, or cert-manager); None if incomplete."""
    if not secret:
        return None
    data = secret.get("data") or {}
    plain = dict(secret.get("stringData") or {})
    for key, value in data.items():
        plain[key] = base64.b64decode(value).decode()
    if not all(plain.get(key) for key in (CERT_KEY, PRIVATE_KEY, CA_KEY)):
        return None
    return TlsMaterial(cert=plain[CERT_KEY], key=plain[PRIVATE_KEY], ca=plain[CA_KEY])


async def _apply_aggregator(ctx: Context, plan: Plan, namespace: str) -> None:
    for obj in plan.aggregator:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            await ctx.api.create(path(kind, namespace=namespace), obj)
            ctx.recorder.info("Created", f"Created {kind} {name}")
        except AlreadyExists:
            if kind in _KEEP_ON_UPDATE:
                continue
            update = {
                k: v for k, v in obj.items() if k in ("metadata", "spec", "stringData", "data")
            }
            await ctx.api.merge_patch(path(kind, namespace=namespace, name=name), update)


async def _clean_up(ctx: Context, plan: Plan, namespace: str) -> None:
    for obj in plan.aggregator:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if await ctx.api.delete(path(kind, namespace=namespace, name=name)):
            ctx.recorder.info("Deleted", f"Deleted {kind} {name}: ttlSecondsAfterFinished passed")


async def _sync_pods(
    ctx: Context,
    job: FederatedJob,
    plan: Plan,
    pods: Sequence[Mapping[str, Any]],
    nodes: Sequence[NodeInfo],
    replacements: dict[str, int],
) -> tuple[list[PodView], list[str]]:
    """Delete what should not run, replace failed pods within backoffLimit, create the rest."""
    namespace = job.metadata.namespace or "default"
    node_names = {n.name for n in nodes}
    views: list[PodView] = []
    lost: list[str] = []
    going: set[str] = set()  # sites whose pod is being deleted: replaced once it is gone
    for pod in pods:
        view = PodView.from_api(pod)
        name = pod["metadata"]["name"]
        if pod["metadata"].get("deletionTimestamp"):
            going.add(view.site)
            continue
        gone = view.node not in node_names
        unwanted = view.site not in plan.clients
        retry = view.phase == "Failed" and replacements.get(view.site, 0) < job.spec.backoff_limit
        if gone:
            lost.append(view.node)
        if gone or unwanted or retry:
            await ctx.api.delete(path("Pod", namespace=namespace, name=name))
            going.add(view.site)
            reason = "node gone" if gone else "failed" if retry else "no longer wanted"
            ctx.recorder.info("Deleted", f"Deleted client Pod for node {view.node}: {reason}")
            if retry:
                replacements[view.site] = replacements.get(view.site, 0) + 1
            continue
        views.append(view)
    present = {v.site for v in views} | going
    for site, pod in plan.clients.items():
        if site in present:
            continue
        node = pod["metadata"]["labels"][o.NODE_LABEL]
        try:
            await ctx.api.create(path("Pod", namespace=namespace), pod)
            ctx.recorder.info("Created", f"Created client Pod for node {node}")
        except AlreadyExists:
            pass  # created by an earlier pass the pod index has not shown yet
        views.append(PodView(site=site, node=node, phase="Pending", ready=False))
    return views, lost


def _expired(job: FederatedJob, previous: Mapping[str, Any], now: datetime) -> bool:
    ttl, completed = job.spec.ttl_seconds_after_finished, previous.get("completionTime")
    if ttl is None or not completed:
        return False
    finished_at = datetime.strptime(completed, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (now - finished_at).total_seconds() >= ttl
