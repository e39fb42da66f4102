"""The whole desired state of a job: every object the operator should make, and why not
the ones it should not. Pure: the same job, nodes and random source (entropy.py) give the
same plan; decide.py chooses what of it to apply."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flotilla.api import FederatedJob, SpecError
from flotilla.fl.certs import TlsMaterial
from flotilla.k8s import aggregator_objects as agg
from flotilla.k8s import security_objects as sec
from flotilla.k8s import serving
from flotilla.k8s.client_pods import client_pod
from flotilla.k8s.entropy import Entropy
from flotilla.k8s.nodes import NodeInfo, Placement, placements
from flotilla.k8s.objects import NO_DEFAULTS, ClusterDefaults


@dataclass(frozen=True)
class Plan:
    # ConfigMap, tokens Secret, TLS Secret or Certificate?, Service, NetworkPolicy?, PVC?,
    # Deployment
    aggregator: list[dict[str, Any]]
    clients: dict[str, dict[str, Any]]  # site -> Pod
    placements: list[Placement]
    # Sites that match but cannot get a pod (no data source): site -> why, naming the node.
    unplaceable: dict[str, str] = field(default_factory=dict)
    ca: str | None = None  # the CA the aggregator's certificate verifies against, when known
    # After success: the served model's Service and Deployment (serving.py).
    serving: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sites(self) -> list[str]:
        return [p.site for p in self.placements]


def plan_job(
    job: FederatedJob,
    nodes: Sequence[NodeInfo],
    *,
    entropy: Entropy,
    existing_tokens: Mapping[str, str],
    existing_tls: TlsMaterial | None = None,
    finished: bool = False,
    defaults: ClusterDefaults = NO_DEFAULTS,
    served: serving.Served | None = None,
) -> Plan:
    """Suspended or finished jobs keep the aggregator (its state, its status) and no clients.

    Tokens and TLS material that exist are kept (`existing_tokens`, `existing_tls`);
    `entropy` makes the rest. A job that succeeded and registered its model gets it served
    (`served`, from serving.to_serve).
    """
    chosen = placements(job, list(nodes))
    sites = [p.site for p in chosen]
    tokens = agg.tokens_secret(job, sites, existing=existing_tokens, new_token=entropy.token)
    security, ca = _security_objects(job, existing_tls, entropy)
    aggregator = [
        agg.job_config_map(job),
        tokens,
        *security,
        agg.service(job),
        *([sec.network_policy(job)] if job.spec.security.network_policy.enabled else []),
        *([claim] if (claim := agg.state_claim(job)) else []),
        agg.deployment(job, defaults),
    ]
    clients: dict[str, dict[str, Any]] = {}
    unplaceable: dict[str, str] = {}
    if not (job.spec.suspend or finished):
        for placement in chosen:
            try:
                clients[placement.site] = client_pod(job, placement)
            except SpecError as error:
                unplaceable[placement.site] = f"node {placement.node}: {error.problems[0]}"
    return Plan(
        aggregator=aggregator,
        clients=clients,
        placements=chosen,
        unplaceable=unplaceable,
        ca=ca,
        serving=serving.objects(job, served, defaults) if served else [],
    )


def _security_objects(
    job: FederatedJob,
    existing: TlsMaterial | None,
    entropy: Entropy,
) -> tuple[list[dict[str, Any]], str | None]:
    mode = job.spec.security.tls.mode
    if mode == "operator":
        material = existing or entropy.tls(job)
        return [sec.tls_secret(job, material)], material.ca
    if mode == "certManager":
        return [sec.certificate(job)], existing.ca if existing else None
    return [], None
