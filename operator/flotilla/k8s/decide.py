"""Every decision of one reconcile: a pure function of the job, what the operator observed
of it (`Snapshot`), the clock and a random source.

It decides whether the tokens rotate (the job resumed), whether the job finished, whether
its TTL expired, whether the aggregator's objects are applied (a change, or something
missing: the tokens Secret, the Deployment, the TLS material, a site's token), whether the
served model's objects are, which client pods go (node gone, not wanted, failed within
backoffLimit) and which come, and which nodes the job lost. reconcile.py gathers the
Snapshot and carries out the actions, in order; settle.py turns the outcome into status.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flotilla.api import FederatedJob, SpecError
from flotilla.k8s import objects as o
from flotilla.k8s import serving
from flotilla.k8s.actions import Action, Apply, CreatePod, Delete, DeletePod, Note
from flotilla.k8s.aggregator_objects import ROTATE_ANNOTATION
from flotilla.k8s.entropy import Entropy
from flotilla.k8s.lost_nodes import track_lost_nodes
from flotilla.k8s.nodes import NodeInfo
from flotilla.k8s.plan import Plan, plan_job
from flotilla.k8s.status import finished_before
from flotilla.k8s.views import PodView, annotation, tls_in, tokens_in

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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


@dataclass(frozen=True)
class Snapshot:
    """What the I/O layer gathered for one reconcile of one job."""

    seen: Seen
    tokens_secret: Mapping[str, Any] | None = None
    tls_secret: Mapping[str, Any] | None = None  # read only when the job wants TLS
    answer: Mapping[str, Any] | None = None  # the aggregator's /v1/status; None: no answer
    previous: Mapping[str, Any] = field(default_factory=dict)  # the status last written
    generation: int | None = None
    # site -> failed pods replaced: as this process counted, and as the job's annotation
    # (JSON) kept them across operator restarts.
    replacements: Mapping[str, int] = field(default_factory=dict)
    recorded_replacements: str | None = None
    placements: Mapping[str, str] = field(default_factory=dict)  # site -> node, last plan
    full: bool = False  # a change (or a failure before): apply all, not only what is missing


@dataclass(frozen=True)
class Decision:
    plan: Plan
    actions: tuple[Action, ...]
    kept: tuple[PodView, ...]  # client pods left as they are
    replacements: Mapping[str, int]  # counted before this pass's (DeletePod.replaced)
    lost_nodes: tuple[Mapping[str, Any], ...]
    model: Mapping[str, Any] | None  # status.model: what the job registered
    served: serving.Served | None
    rotate: bool
    finished: bool
    expired: bool


def decide(
    job: FederatedJob,
    snapshot: Snapshot,
    *,
    now: datetime,
    entropy: Entropy,
    defaults: o.ClusterDefaults = o.NO_DEFAULTS,
) -> Decision:
    seen, previous, answer = snapshot.seen, snapshot.previous, snapshot.answer or {}
    nodes = [NodeInfo.from_api(node) for node in seen.nodes]
    tokens = tokens_in(snapshot.tokens_secret)
    # Resumed after a suspension: every site gets a new token (the old ones may have leaked
    # while the job sat idle; the client pods are all new anyway).
    rotating = annotation(snapshot.tokens_secret, ROTATE_ANNOTATION) == "true"
    rotate = rotating and not job.spec.suspend
    existing_tls = tls_in(snapshot.tls_secret)
    finished = finished_before(previous) or answer.get("phase") in ("done", "failed")
    succeeded = previous.get("phase") == "Succeeded" or answer.get("phase") == "done"
    model = registered_model(job, snapshot.answer, previous)
    served = serving.to_serve(job, model, seen.newest_models) if succeeded else None
    plan = plan_job(
        job,
        nodes,
        entropy=entropy,
        existing_tokens={} if rotate else tokens,
        existing_tls=existing_tls,
        finished=finished,
        defaults=defaults,
        served=served,
    )
    expired = _expired(job, previous, now)
    counted = _replacements(snapshot)
    pods = _pods(job, plan, seen.pods, nodes, counted)
    gone = pods.gone | _gone_since_last_plan(snapshot.placements, nodes)
    return Decision(
        plan=plan,
        actions=(
            *_aggregator(job, snapshot, plan, expired=expired, rotate=rotate),
            *_serving(plan, seen, full=snapshot.full),
            *pods.actions,
        ),
        kept=tuple(pods.kept),
        replacements=counted,
        lost_nodes=tuple(_lost(job, previous, plan, gone, finished=finished, now=now)),
        model=model,
        served=served,
        rotate=rotate,
        finished=finished,
        expired=expired,
    )


def registered_model(
    job: FederatedJob, answer: Mapping[str, Any] | None, previous: Mapping[str, Any]
) -> dict[str, Any] | None:
    """What the aggregator says it registered, else what the status kept (after the TTL the
    aggregator is gone, and the model stays registered)."""
    tracking = (answer or {}).get("tracking") or {}
    registered = tracking.get("registeredModel") or {}
    if registered.get("name") and registered.get("version") is not None:
        model: dict[str, Any] = {
            "name": str(registered["name"]),
            "version": str(registered["version"]),
            "alias": job.spec.tracking.alias,
        }
        promotion = _promotion(tracking.get("promotion"), version=model["version"])
        if promotion is not None:
            model["promotion"] = promotion
        return model
    kept = previous.get("model")
    return dict(kept) if kept else None


def _promotion(decision: Any, *, version: str) -> dict[str, str] | None:
    """The gate's decision on `version`, as status.model.promotion; None before it is made."""
    if not isinstance(decision, Mapping) or str(decision.get("version")) != version:
        return None
    if decision.get("outcome") not in ("promoted", "kept"):
        return None
    return {
        "outcome": str(decision["outcome"]),
        "reason": str(decision.get("reason") or "Decided"),
        "alias": str(decision.get("alias") or ""),
        "message": str(decision.get("message") or "")[:1000],
    }


def _aggregator(
    job: FederatedJob, snapshot: Snapshot, plan: Plan, *, expired: bool, rotate: bool
) -> list[Action]:
    """Delete the aggregator's objects after the TTL; apply them on a change, or when
    something of them is missing."""
    if expired:
        return [_delete(obj, "ttlSecondsAfterFinished passed") for obj in plan.aggregator]
    missing_tls = job.spec.security.tls.mode == "operator" and tls_in(snapshot.tls_secret) is None
    if (
        snapshot.full
        or snapshot.tokens_secret is None
        or snapshot.seen.deployment is None  # never made, refused, or deleted by someone
        or rotate
        or missing_tls
        or sorted(tokens_in(snapshot.tokens_secret)) != plan.sites
    ):
        note = [Note("TokensRotated", "New client tokens: the job resumed")] if rotate else []
        return [*note, Apply("aggregator", tuple(plan.aggregator))]
    return []


def _lost(
    job: FederatedJob,
    previous: Mapping[str, Any],
    plan: Plan,
    gone: Mapping[str, str],
    *,
    finished: bool,
    now: datetime,
) -> list[dict[str, Any]]:
    """The nodes the job lost (lost_nodes.py); none while it is suspended or finished."""
    if job.spec.suspend or finished:
        return []
    return track_lost_nodes(
        previous.get("lostNodes") or [],
        gone=gone,
        placed_sites=plan.sites,
        node_selector=job.spec.clients.node_selector,
        reachable=lambda site: _reachable(job, site),
        now=now.strftime(TIME_FORMAT),
    )


def _serving(plan: Plan, seen: Seen, *, full: bool) -> list[Action]:
    """Apply the serving objects when they changed (their hash is on the Deployment), or
    delete them when the spec no longer wants the model served."""
    deployment = seen.serving_deployment
    if not plan.serving:
        if deployment is None:
            return []
        name = deployment["metadata"]["name"]
        kinds = (("apps/v1", "Deployment"), ("v1", "Service"))
        return [Delete(kind, name, "serving is off", version) for version, kind in kinds]
    digest = o.content_hash(plan.serving)
    if not full and annotation(deployment, o.HASH_ANNOTATION) == digest:
        return []
    stamped = tuple(
        {**obj, "metadata": {**obj["metadata"], "annotations": {o.HASH_ANNOTATION: digest}}}
        if obj["kind"] == "Deployment"
        else obj
        for obj in plan.serving
    )
    return [Apply("serving", stamped)]


@dataclass
class _Pods:
    actions: list[Action] = field(default_factory=list)
    kept: list[PodView] = field(default_factory=list)
    gone: dict[str, str] = field(default_factory=dict)  # site -> its node, deleted


def _pods(
    job: FederatedJob,
    plan: Plan,
    pods: Sequence[Mapping[str, Any]],
    nodes: Sequence[NodeInfo],
    replacements: Mapping[str, int],
) -> _Pods:
    """Delete what should not run, replace failed pods within backoffLimit, create the rest."""
    node_names = {n.name for n in nodes}
    counts = dict(replacements)
    out = _Pods()
    going: set[str] = set()  # sites whose pod is being deleted: replaced once it is gone
    for pod in pods:
        view = PodView.from_api(pod)
        if pod["metadata"].get("deletionTimestamp"):
            going.add(view.site)
            continue
        gone = view.node not in node_names
        unwanted = view.site not in plan.clients
        retry = view.phase == "Failed" and counts.get(view.site, 0) < job.spec.backoff_limit
        if gone:
            out.gone[view.site] = view.node
        if gone or unwanted or retry:
            replaced = None
            if retry:
                replaced = counts[view.site] = counts.get(view.site, 0) + 1
            why = "node gone" if gone else "failed" if retry else "no longer wanted"
            name = pod["metadata"]["name"]
            out.actions.append(DeletePod(name, view.site, view.node, why, replaced))
            going.add(view.site)
            continue
        out.kept.append(view)
    present = {v.site for v in out.kept} | going
    for site, pod in plan.clients.items():
        if site not in present:
            out.actions.append(CreatePod(site, pod["metadata"]["labels"][o.NODE_LABEL], pod))
    return out


def _replacements(snapshot: Snapshot) -> dict[str, int]:
    counts = dict(snapshot.replacements)
    for site, count in json.loads(snapshot.recorded_replacements or "{}").items():
        counts[site] = max(counts.get(site, 0), int(count))
    return counts


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


def _delete(obj: Mapping[str, Any], why: str) -> Delete:
    return Delete(obj["kind"], obj["metadata"]["name"], why, obj["apiVersion"])


def _expired(job: FederatedJob, previous: Mapping[str, Any], now: datetime) -> bool:
    ttl, completed = job.spec.ttl_seconds_after_finished, previous.get("completionTime")
    if ttl is None or not completed:
        return False
    finished_at = datetime.strptime(completed, TIME_FORMAT).replace(tzinfo=UTC)
    return (now - finished_at).total_seconds() >= ttl
