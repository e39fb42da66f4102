"""One level-based reconcile of a FederatedJob: observe -> plan (pure) -> apply -> status.

Called on create, update and resume, and by the operator's resync loop (elasticity and
status). Idempotent: objects that exist are left alone or patched, pods are created or
deleted, never patched. What the cluster refuses (admission, quota, validation) does not
stop it: the refusal goes into the job's status and an event, and the rest goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from flotilla.api import FederatedJob, SpecError
from flotilla.k8s import objects as o
from flotilla.k8s import serving
from flotilla.k8s.aggregator_objects import ROTATE_ANNOTATION
from flotilla.k8s.api import AlreadyExists, ApiError, KubeApi, path
from flotilla.k8s.lost_nodes import track_lost_nodes
from flotilla.k8s.nodes import NodeInfo
from flotilla.k8s.plan import Plan, plan_job
from flotilla.k8s.status import compute_status, finished_before
from flotilla.k8s.views import (
    AggregatorPodView,
    Observation,
    PodView,
    annotation,
    replica_failure,
    tls_in,
    tokens_in,
)

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
    defaults: o.ClusterDefaults = o.NO_DEFAULTS


@dataclass(frozen=True)
class Seen:
    """What the operator's indexes hold for the job: no API call per object."""

    nodes: Sequence[Mapping[str, Any]]
    pods: Sequence[Mapping[str, Any]] = ()  # the job's client pods
    aggregator_pods: Sequence[Mapping[str, Any]] = ()
    deployment: Mapping[str, Any] | None = None  # the aggregator's
    serving_deployment: Mapping[str, Any] | None = None
    # The newest version each model and alias has, from every job's status.model.
    newest_models: Mapping[serving.ModelKey, str] = field(default_factory=dict)


@dataclass
class JobMemory:
    """What this operator process keeps of one job between reconciles."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # site -> failed pods replaced; the job's annotation keeps it across operator restarts.
    replacements: dict[str, int] = field(default_factory=dict)
    placements: dict[str, str] = field(default_factory=dict)  # site -> node, as last planned
    warned: frozenset[str] = frozenset()  # warnings already posted as events
    status: dict[str, Any] | None = None  # the last status written, newer than an index's


@dataclass
class Outcome:
    status: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class _Warnings:
    """Warnings for events, posted once while they hold rather than at every resync."""

    memory: JobMemory
    recorder: Recorder
    now: set[str] = field(default_factory=set)

    def warn(self, reason: str, message: str) -> None:
        key = f"{reason}: {message}"
        if key not in self.memory.warned:
            self.recorder.warn(reason, message)
        self.now.add(key)

    def done(self) -> None:
        self.memory.warned = frozenset(self.now)


async def reconcile(
    ctx: Context, body: Mapping[str, Any], *, seen: Seen, full: bool, memory: JobMemory
) -> Outcome:
    previous = dict(memory.status or body.get("status") or {})
    generation = body.get("metadata", {}).get("generation")
    now = ctx.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    warnings = _Warnings(memory, ctx.recorder)
    try:
        job = FederatedJob.from_dict({k: v for k, v in body.items() if k != "status"})
    except SpecError as error:
        invalid = "; ".join(error.problems)
        warnings.warn("InvalidSpec", f"nothing created: {invalid}")
        warnings.done()
        observed = Observation(desired_sites=[], pods=[], aggregator=None, invalid=invalid)
        return Outcome(
            compute_status(None, observed, previous=previous, generation=generation, now=now)
        )
    namespace = o.namespace(job)
    nodes = [NodeInfo.from_api(n) for n in seen.nodes]
    secret = await ctx.api.get(path("Secret", namespace=namespace, name=o.tokens_secret_name(job)))
    tokens = tokens_in(secret)
    # Resumed after a suspension: every site gets a new token (the old ones may have leaked
    # while the job sat idle; the client pods are all new anyway).
    rotate = not job.spec.suspend and annotation(secret, ROTATE_ANNOTATION) == "true"
    tls_secret = None
    if job.spec.security.tls.enabled:
        tls_secret = await ctx.api.get(
            path("Secret", namespace=namespace, name=o.tls_secret_name(job))
        )
    existing_tls = tls_in(tls_secret)
    answer = await ctx.poll(job, existing_tls.ca if existing_tls else None)
    finished = finished_before(previous) or (answer or {}).get("phase") in ("done", "failed")
    succeeded = previous.get("phase") == "Succeeded" or (answer or {}).get("phase") == "done"
    model = _registered_model(job, answer, previous)
    served = serving.to_serve(job, model, seen.newest_models) if succeeded else None
    plan = plan_job(
        job,
        nodes,
        existing_tokens={} if rotate else tokens,
        existing_tls=existing_tls,
        finished=finished,
        defaults=ctx.defaults,
        served=served,
    )
    missing_tls = job.spec.security.tls.mode == "operator" and existing_tls is None
    aggregator_refused = None
    if _expired(job, previous, ctx.now()):
        await _clean_up(ctx, plan, namespace)
    elif (
        full
        or secret is None
        or seen.deployment is None  # never made, refused, or deleted by someone
        or rotate
        or missing_tls
        or sorted(tokens) != plan.sites
    ):
        if rotate:
            ctx.recorder.info("TokensRotated", "New client tokens: the job resumed")
        aggregator_refused = await _apply_all(ctx, plan.aggregator, namespace)
    aggregator_refused = aggregator_refused or replica_failure(seen.deployment)
    if aggregator_refused:
        warnings.warn("AggregatorRefused", aggregator_refused)
    for site, problem in plan.unplaceable.items():
        warnings.warn("NoDataSource", f"site {site} ({problem})")
    serving_refused = await _sync_serving(ctx, plan, seen.serving_deployment, namespace, full=full)
    serving_refused = serving_refused or (
        replica_failure(seen.serving_deployment) if plan.serving else None
    )
    if serving_refused:
        warnings.warn("ServingRefused", serving_refused)
    annotated = body["metadata"].get("annotations", {}).get(REPLACEMENTS_ANNOTATION)
    replacements = memory.replacements
    for site, count in json.loads(annotated or "{}").items():
        replacements[site] = max(replacements.get(site, 0), int(count))
    synced = await _sync_pods(ctx, job, plan, seen.pods, nodes, replacements)
    for site, message in synced.refused.items():
        warnings.warn("PodRefused", f"client pod of site {site}: {message}")
    warnings.done()
    gone = synced.gone | _gone_since_last_plan(memory.placements, nodes)
    memory.placements = {p.site: p.node for p in plan.placements}
    lost: list[dict[str, Any]] = []
    if not (job.spec.suspend or finished):
        lost = track_lost_nodes(
            previous.get("lostNodes") or [],
            gone=gone,
            placed_sites=plan.sites,
            node_selector=job.spec.clients.node_selector,
            reachable=lambda site: _reachable(job, site),
            now=now,
        )
    observed = Observation(
        desired_sites=plan.sites,
        pods=synced.views,
        aggregator=answer,
        lost_nodes=lost,
        aggregator_pods=[AggregatorPodView.from_api(pod) for pod in seen.aggregator_pods],
        refused=synced.refused,
        aggregator_refused=aggregator_refused,
        unplaceable=plan.unplaceable,
        model=model,
        served=served,
        serving_deployment=seen.serving_deployment,
        serving_refused=serving_refused,
    )
    status = compute_status(job, observed, previous=previous, generation=generation, now=now)
    return Outcome(status, {REPLACEMENTS_ANNOTATION: json.dumps(replacements, sort_keys=True)})


def _registered_model(
    job: FederatedJob, answer: Mapping[str, Any] | None, previous: Mapping[str, Any]
) -> dict[str, Any] | None:
    """What the aggregator says it registered, else what the status kept (after the TTL the
    aggregator is gone, and the model stays registered)."""
    registered = ((answer or {}).get("tracking") or {}).get("registeredModel") or {}
    if registered.get("name") and registered.get("version") is not None:
        return {
            "name": str(registered["name"]),
            "version": str(registered["version"]),
            "alias": job.spec.tracking.alias,
        }
    kept = previous.get("model")
    return dict(kept) if kept else None


async def _sync_serving(
    ctx: Context,
    plan: Plan,
    deployment: Mapping[str, Any] | None,
    namespace: str,
    *,
    full: bool,
) -> str | None:
    """Apply the serving objects when they changed (their hash is on the Deployment), or
    delete them when the spec no longer wants the model served; the refusal, if any."""
    if not plan.serving:
        if deployment is not None:
            for kind in ("Deployment", "Service"):
                name = deployment["metadata"]["name"]
                if await ctx.api.delete(path(kind, namespace=namespace, name=name)):
                    ctx.recorder.info("Deleted", f"Deleted {kind} {name}: serving is off")
        return None
    digest = o.content_hash(plan.serving)
    if not full and annotation(deployment, o.HASH_ANNOTATION) == digest:
        return None
    stamped = [
        {**obj, "metadata": {**obj["metadata"], "annotations": {o.HASH_ANNOTATION: digest}}}
        if obj["kind"] == "Deployment"
        else obj
        for obj in plan.serving
    ]
    return await _apply_all(ctx, stamped, namespace)


def _gone_since_last_plan(
    placements: Mapping[str, str], nodes: Sequence[NodeInfo]
) -> dict[str, str]:
    """Sites whose node was deleted since the last plan, its pod maybe already collected."""
    names = {node.name for node in nodes}
    return {site: node for site, node in placements.items() if node not in names}


def _reachable(job: FederatedJob, site: str) -> bool:
    """Would the spec still give this site a client, were its node back?"""
    try:
        job.site_data(site)
    except SpecError:
        return False
    return True


async def _apply_all(
    ctx: Context, objects: Sequence[Mapping[str, Any]], namespace: str
) -> str | None:
    """Create or patch each object; the first refusal, if the server refused one."""
    refused: list[str] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            await _create_or_patch(ctx, obj, namespace)
        except ApiError as error:
            if not error.refused:
                raise
            refused.append(f"{kind} {name} refused: {error.detail}")
    return refused[0] if refused else None


async def _create_or_patch(ctx: Context, obj: Mapping[str, Any], namespace: str) -> None:
    kind, name = obj["kind"], obj["metadata"]["name"]
    try:
        await ctx.api.create(path(kind, namespace=namespace), obj)
        ctx.recorder.info("Created", f"Created {kind} {name}")
    except AlreadyExists:
        if kind in _KEEP_ON_UPDATE:
            return
        update = {k: v for k, v in obj.items() if k in ("metadata", "spec", "stringData", "data")}
        await ctx.api.merge_patch(path(kind, namespace=namespace, name=name), update)


async def _clean_up(ctx: Context, plan: Plan, namespace: str) -> None:
    for obj in plan.aggregator:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if await ctx.api.delete(path(kind, namespace=namespace, name=name)):
            ctx.recorder.info("Deleted", f"Deleted {kind} {name}: ttlSecondsAfterFinished passed")


@dataclass
class _Synced:
    views: list[PodView] = field(default_factory=list)
    gone: dict[str, str] = field(default_factory=dict)  # site -> its node, deleted
    refused: dict[str, str] = field(default_factory=dict)  # site -> the server's message


async def _sync_pods(
    ctx: Context,
    job: FederatedJob,
    plan: Plan,
    pods: Sequence[Mapping[str, Any]],
    nodes: Sequence[NodeInfo],
    replacements: dict[str, int],
) -> _Synced:
    """Delete what should not run, replace failed pods within backoffLimit, create the rest."""
    namespace = o.namespace(job)
    node_names = {n.name for n in nodes}
    synced = _Synced()
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
            synced.gone[view.site] = view.node
        if gone or unwanted or retry:
            await ctx.api.delete(path("Pod", namespace=namespace, name=name))
            going.add(view.site)
            reason = "node gone" if gone else "failed" if retry else "no longer wanted"
            ctx.recorder.info("Deleted", f"Deleted client Pod for node {view.node}: {reason}")
            if retry:
                replacements[view.site] = replacements.get(view.site, 0) + 1
            continue
        synced.views.append(view)
    present = {v.site for v in synced.views} | going
    for site, pod in plan.clients.items():
        if site in present:
            continue
        node = pod["metadata"]["labels"][o.NODE_LABEL]
        try:
            await ctx.api.create(path("Pod", namespace=namespace), pod)
            ctx.recorder.info("Created", f"Created client Pod for node {node}")
        except AlreadyExists:
            pass  # created by an earlier pass the pod index has not shown yet
        except ApiError as error:
            if not error.refused:
                raise
            synced.refused[site] = f"pod {pod['metadata']['name']}: {error.detail}"
            continue
        synced.views.append(PodView(site=site, node=node, phase="Pending", ready=False))
    return synced


def _expired(job: FederatedJob, previous: Mapping[str, Any], now: datetime) -> bool:
    ttl, completed = job.spec.ttl_seconds_after_finished, previous.get("completionTime")
    if ttl is None or not completed:
        return False
    finished_at = datetime.strptime(completed, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return (now - finished_at).total_seconds() >= ttl
