"""Two conditions of a job's status about placement: `Scheduled` (is every pod bound to a
node, and if not, why not, in the scheduler's or the API server's words) and
`ClientsAvailable` (can as many sites run a client as a round needs). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flotilla.api import FederatedJob
from flotilla.k8s.views import Observation, current_aggregator

MAX_NAMED = 5  # sites or pods named in one condition message; the rest are counted
Condition = tuple[str, str, str]  # status, reason, message


def scheduled(observed: Observation, *, finished: bool, suspended: bool) -> tuple[str, str, str]:
    """Is every pod of the job bound to a node? If not, the first reason in this order."""
    if finished:
        return ("False", "JobFinished", "the job has finished; its client pods were removed")
    if suspended:
        return ("False", "Suspended", "the job is suspended; its client pods were removed")
    if observed.aggregator_refused:
        return ("False", "AggregatorRefused", f"aggregator: {observed.aggregator_refused}")
    if observed.refused:
        return ("False", "PodsRefused", _named(observed.refused, "client pods refused"))
    aggregator = current_aggregator(observed.aggregator_pods)
    if aggregator and aggregator.scheduling.unschedulable:
        message = f"aggregator pod {aggregator.name}: {aggregator.scheduling.unschedulable}"
        return ("False", "AggregatorUnschedulable", message)
    if not observed.desired_sites:
        return ("False", "NoMatchingNodes", "no ready node matches spec.clients.nodeSelector")
    unschedulable = {
        p.site: p.scheduling.unschedulable for p in observed.pods if p.scheduling.unschedulable
    }
    if unschedulable:
        return ("False", "ClientsUnschedulable", _named(unschedulable, "client pods unschedulable"))
    waiting = [p.site for p in observed.pods if not p.scheduling.bound and p.phase == "Pending"]
    have = {pod.site for pod in observed.pods}
    waiting += [site for site in observed.desired_sites if site not in have]
    parts = [f"client pods of {_list(sorted(set(waiting)))}"] if waiting else []
    if aggregator is None or not aggregator.scheduling.bound:
        parts.append("the aggregator pod")
    if parts:
        return ("False", "PodsPending", f"waiting to be bound to a node: {'; '.join(parts)}")
    if observed.lost_nodes:
        lost = _list(
            [f"{e['node']} (site {e['site']}, since {e['since']})" for e in observed.lost_nodes]
        )
        return ("True", "NodesLost", f"nodes gone: {lost}; the job goes on without them")
    return ("True", "AllScheduled", f"{len(have)} client pods and the aggregator pod are bound")


def clients_available(job: FederatedJob, observed: Observation) -> tuple[str, str, str]:
    """Can the cluster run as many clients as a round needs (spec.clients.minClients)?"""
    failed = {p.site for p in observed.pods if p.phase == "Failed"}
    unschedulable = {p.site for p in observed.pods if p.scheduling.unschedulable}
    out = set(observed.refused) | set(observed.unplaceable) | failed | unschedulable
    can_run = [site for site in observed.desired_sites if site not in out]
    need = job.spec.clients.min_clients
    if len(can_run) >= need:
        return (
            "True",
            "EnoughClients",
            f"{len(can_run)} sites can run a client; minClients is {need}",
        )
    reasons = [f"{len(observed.desired_sites)} nodes match spec.clients.nodeSelector"]
    for label, sites in (
        ("refused", observed.refused),
        ("no data source", observed.unplaceable),
        ("unschedulable", unschedulable),
        ("failed", failed),
        ("lost", [e["site"] for e in observed.lost_nodes]),
    ):
        if sites:
            reasons.append(f"{label}: {_list(sorted(sites))}")
    message = (
        f"{len(can_run)} of the {need} clients a round needs (spec.clients.minClients) can run "
        f"({'; '.join(reasons)}): no round can open until more nodes can take a client"
    )
    return ("False", "TooFewClients", message)


def _named(messages: Mapping[str, str], what: str) -> str:
    shown = [f"{site}: {message}" for site, message in sorted(messages.items())[:MAX_NAMED]]
    more = len(messages) - len(shown)
    return f"{what}: " + "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _list(items: Sequence[str]) -> str:
    more = len(items) - MAX_NAMED
    return ", ".join(items[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")
