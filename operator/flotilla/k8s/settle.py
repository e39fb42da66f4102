"""The end of one reconcile: from a Decision (decide.py) and what the API server refused of
its actions, the job's status and the warnings to post. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flotilla.api import FederatedJob
from flotilla.k8s.actions import CreatePod
from flotilla.k8s.decide import TIME_FORMAT, Decision, Snapshot
from flotilla.k8s.status import compute_status
from flotilla.k8s.views import AggregatorPodView, Observation, PodView, replica_failure


@dataclass(frozen=True)
class Refused:
    """What the API server would not take of a decision's actions, in its own words."""

    aggregator: str | None = None  # the first of the aggregator's objects refused
    serving: str | None = None
    pods: Mapping[str, str] = field(default_factory=dict)  # site -> the refusal


@dataclass(frozen=True)
class Settled:
    status: dict[str, Any]
    warnings: tuple[tuple[str, str], ...] = ()  # (reason, message), for Warning events


def settle(
    job: FederatedJob, decision: Decision, refused: Refused, snapshot: Snapshot, *, now: datetime
) -> Settled:
    seen, plan = snapshot.seen, decision.plan
    aggregator_refused = refused.aggregator or replica_failure(seen.deployment)
    serving_refused = refused.serving or (
        replica_failure(seen.serving_deployment) if plan.serving else None
    )
    warnings: list[tuple[str, str]] = []
    if aggregator_refused:
        warnings.append(("AggregatorRefused", aggregator_refused))
    warnings += [("NoDataSource", f"site {s} ({why})") for s, why in plan.unplaceable.items()]
    if serving_refused:
        warnings.append(("ServingRefused", serving_refused))
    warnings += [("PodRefused", f"client pod of site {s}: {m}") for s, m in refused.pods.items()]
    created = [
        PodView(site=action.site, node=action.node, phase="Pending", ready=False)
        for action in decision.actions
        if isinstance(action, CreatePod) and action.site not in refused.pods
    ]
    observed = Observation(
        desired_sites=plan.sites,
        pods=[*decision.kept, *created],
        aggregator=snapshot.answer,
        lost_nodes=decision.lost_nodes,
        aggregator_pods=[AggregatorPodView.from_api(pod) for pod in seen.aggregator_pods],
        refused=refused.pods,
        aggregator_refused=aggregator_refused,
        unplaceable=plan.unplaceable,
        model=decision.model,
        served=decision.served,
        serving_deployment=seen.serving_deployment,
        serving_refused=serving_refused,
    )
    status = compute_status(
        job,
        observed,
        previous=snapshot.previous,
        generation=snapshot.generation,
        now=now.strftime(TIME_FORMAT),
    )
    return Settled(status, tuple(warnings))


def settle_invalid(
    problems: str, *, previous: Mapping[str, Any], generation: int | None, now: datetime
) -> Settled:
    """A spec that does not parse: nothing is made, the job fails until the spec is fixed."""
    observed = Observation(desired_sites=[], pods=[], aggregator=None, invalid=problems)
    status = compute_status(
        None, observed, previous=previous, generation=generation, now=now.strftime(TIME_FORMAT)
    )
    return Settled(status, (("InvalidSpec", f"nothing created: {problems}"),))
