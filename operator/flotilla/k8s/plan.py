"""The whole desired state of a job: every object the operator should make, and why not
the ones it should not. Pure; the reconcile applies what this returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flotilla.api import FederatedJob, SpecError
from flotilla.fl.certs import TlsMaterial, make_tls
from flotilla.k8s import aggregator_objects as agg
from flotilla.k8s import security_objects as sec
from flotilla.k8s import serving
from flotilla.k8s.client_pods import client_pod
from flotilla.k8s.nodes import NodeInfo, Placement, placements
from flotilla.k8s.objects import NO_DEFAULTS, ClusterDefaults, aggregator_name


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


def _default_tls(job: FederatedJob) -> TlsMaterial:
    return make_tls(common_name=aggregator_name(job), dns_names=sec.dns_names(job))


def plan_job(
    job: FederatedJob,
    nodes: Sequence[NodeInfo],
    *,
    existing_tokens: Mapping[str, str],
    existing_tls: TlsMaterial | None = None,
    finished: bool = False,
    new_token: Callable[[], str] | None = None,
    new_tls: Callable[[FederatedJob], TlsMaterial] = _default_tls,
    defaults: ClusterDefaults = NO_DEFAULTS,
    served: serving.Served | None = None,
) -> Plan:
    """Suspended or finished jobs keep the aggregator (its state, its status) and no clients.

    TLS material that exists is kept (`existing_tls`); `new_tls` makes it otherwise. A job
    that succeeded and registered its model gets it served (`served`, from serving.to_serve).
    """
    chosen = placements(job, list(nodes))
    sites = [p.site for p in chosen]
    token_args = {"new_token": new_token} if new_token else {}
    tokens = agg.tokens_secret(job, sites, existing=existing_tokens, **token_args)
    security, ca = _security_objects(job, existing_tls, new_tls)
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
    new_tls: Callable[[FederatedJob], TlsMaterial],
) -> tuple[list[dict[str, Any]], str | None]:
    mode = job.spec.security.tls.mode
    if mode == "operator":
        material = existing or new_tls(job)
        return [sec.tls_secret(job, material)], material.ca
    if mode == "certManager":
        return [sec.certificate(job)], existing.ca if existing else None
    return [], None
