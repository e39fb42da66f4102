"""The whole desired state of a job: every object the operator should make, and why not
the ones it should not. Pure; the reconcile applies what this returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flotilla.api import FederatedJob, SpecError
from flotilla.k8s import aggregator_objects as agg
from flotilla.k8s.client_pods import client_pod
from flotilla.k8s.nodes import NodeInfo, Placement, placements


@dataclass(frozen=True)
class Plan:
    aggregator: list[dict[str, Any]]  # ConfigMap, Secret, Service, PVC?, Deployment
    clients: dict[str, dict[str, Any]]  # site -> Pod
    placements: list[Placement]
    problems: list[str] = field(default_factory=list)  # sites that cannot get a pod, and why

    @property
    def sites(self) -> list[str]:
        return [p.site for p in self.placements]


def plan_job(
    job: FederatedJob,
    nodes: Sequence[NodeInfo],
    *,
    existing_tokens: Mapping[str, str],
    finished: bool = False,
    new_token: Callable[[], str] | None = None,
) -> Plan:
    """Suspended or finished jobs keep the aggregator (its state, its status) and no clients."""
    chosen = placements(job, list(nodes))
    sites = [p.site for p in chosen]
    token_args = {"new_token": new_token} if new_token else {}
    aggregator = [
        agg.job_config_map(job),
        agg.tokens_secret(job, sites, existing=existing_tokens, **token_args),
        agg.service(job),
        *([claim] if (claim := agg.state_claim(job)) else []),
        agg.deployment(job, sites),
    ]
    clients: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    if not (job.spec.suspend or finished):
        for placement in chosen:
            try:
                clients[placement.site] = client_pod(job, placement)
            except SpecError as error:
                problems.append(
                    f"site {placement.site} (node {placement.node}): {error.problems[0]}"
                )
    return Plan(aggregator=aggregator, clients=clients, placements=chosen, problems=problems)
