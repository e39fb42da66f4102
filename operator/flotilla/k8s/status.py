"""A FederatedJob's status from what the operator observes: a pure function.

Inputs are the job, its client and aggregator pods (from the operator's indexes, no API
calls), what the API server refused, the aggregator's /v1/status answer (or None when it does
not answer) and the previous status (transition times and start time survive). Two things
cannot be rebuilt from the cluster and so are carried over from the previous status, as a
Job keeps its outcome: a finished job's outcome (its aggregator is gone after the TTL) and
the nodes it lost (lost_nodes.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flotilla.api import FederatedJob
from flotilla.k8s.views import AggregatorPodView, PodView, current_aggregator

# Bounded: status lives in etcd, and a job may have thousands of sites.
MAX_SITE_ERRORS = 50
MAX_SITE_ERROR_CHARS = 500
MAX_NAMED = 5  # sites or pods named in one condition message; the rest are counted
CONDITION_TYPES = (
    "Scheduled",
    "ClientsAvailable",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
    "Tracking",
)
_TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Observation:
    desired_sites: Sequence[str]
    pods: Sequence[PodView]
    aggregator: Mapping[str, Any] | None  # /v1/status, None when unreachable
    # Entries of status.lostNodes (lost_nodes.track_lost_nodes): node, site, since.
    lost_nodes: Sequence[Mapping[str, Any]] = ()
    invalid: str | None = None  # the spec's problems, when it does not parse
    aggregator_pods: Sequence[AggregatorPodView] = ()
    # Sites whose client pod the API server refused (admission, quota), with its message.
    refused: Mapping[str, str] = field(default_factory=dict)
    # Why the aggregator's pod cannot be made: its objects refused, or its ReplicaSet's.
    aggregator_refused: str | None = None
    # Sites that match but cannot get a pod (no data source), with the reason.
    unplaceable: Mapping[str, str] = field(default_factory=dict)


def compute_status(
    job: FederatedJob | None,
    observed: Observation,
    *,
    previous: Mapping[str, Any],
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    conditions = _conditions(job, observed, previous)
    phase = _phase(conditions)
    aggregator = observed.aggregator or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": _with_times(conditions, previous.get("conditions") or [], now, generation),
        "clients": _clients(observed),
    }
    status["clientsReady"] = f"{status['clients']['ready']}/{status['clients']['desired']}"
    if job is not None:
        completed = int(aggregator.get("completedRounds", previous.get("round") or 0))
        status |= {"round": completed, "rounds": job.spec.rounds}
        status["progress"] = f"{completed}/{job.spec.rounds}"
    metrics = _metrics(aggregator.get("lastRound")) or previous.get("metrics")
    if metrics:
        status["metrics"] = metrics
    if aggregator:
        errors = aggregator.get("siteErrors") or {}
        status["siteErrors"] = {
            str(site): str(message)[:MAX_SITE_ERROR_CHARS]
            for site, message in list(errors.items())[:MAX_SITE_ERRORS]
        }
    elif previous.get("siteErrors"):
        status["siteErrors"] = previous["siteErrors"]
    run_id = (aggregator.get("tracking") or {}).get("runId") or previous.get("mlflowRunId")
    if run_id:
        status["mlflowRunId"] = run_id
    status["startTime"] = previous.get("startTime") or now
    if phase in _TERMINAL:
        status["completionTime"] = previous.get("completionTime") or now
    if observed.lost_nodes:
        status["lostNodes"] = [dict(entry) for entry in observed.lost_nodes]
    return status


def _clients(observed: Observation) -> dict[str, int]:
    by_site = {pod.site: pod for pod in observed.pods}
    desired = list(observed.desired_sites)
    return {
        "desired": len(desired),
        "ready": sum(1 for s in desired if s in by_site and by_site[s].ready),
        "failed": sum(1 for p in observed.pods if p.phase == "Failed") + len(observed.lost_nodes),
    }


Conditions = dict[str, tuple[str, str, str]]  # type -> (status, reason, message)


def _conditions(
    job: FederatedJob | None, observed: Observation, previous: Mapping[str, Any]
) -> Conditions:
    if job is None:
        message = observed.invalid or "the spec is invalid"
        return {
            "Failed": ("True", "InvalidSpec", message),
            "Scheduled": ("False", "InvalidSpec", message),
        }
    answer = observed.aggregator or {}
    out: Conditions = _outcome(job, observed) | _sticky_outcome(previous)
    finished = any(out.get(kind, ("False",))[0] == "True" for kind in _TERMINAL)
    if finished:
        out["Running"] = ("False", "Finished", "")
    if job.spec.suspend:
        message = "client pods removed; the aggregator keeps its state"
        out["Suspended"] = ("True", "SuspendedByUser", message)
    else:
        out["Suspended"] = ("False", "NotSuspended", "")
    out["Scheduled"] = _scheduled(observed, finished=finished, suspended=job.spec.suspend)
    if not (finished or job.spec.suspend):
        out["ClientsAvailable"] = _clients_available(job, observed)
    tracking = answer.get("tracking")
    if tracking:
        out["Tracking"] = _tracking(tracking)
    return out


def _outcome(job: FederatedJob, observed: Observation) -> Conditions:
    """Running, Succeeded or Failed, from the aggregator's answer or its pod."""
    answer = observed.aggregator or {}
    phase = answer.get("phase")
    if phase == "done":
        return {"Succeeded": ("True", "RoundsCompleted", str(answer.get("message", "")))}
    if phase == "failed":
        failure = str(answer.get("failure") or "the aggregator reported a failure")
        return {"Failed": ("True", "RoundFailed", failure)}
    if observed.aggregator is None:
        return _aggregator_down(job, observed.aggregator_pods)
    if job.spec.suspend:
        return {}
    message = str(answer.get("message", ""))
    errors = answer.get("siteErrors") or {}
    if errors:
        message += f"; {len(errors)} sites cannot read their data: {', '.join(sorted(errors))}"
    return {"Running": ("True", "RoundsInProgress", message)}


def finished_before(previous: Mapping[str, Any]) -> bool:
    """Did the job succeed or fail (not merely have an invalid spec, which a fix undoes)?"""
    return bool(_sticky_outcome(previous))


def _sticky_outcome(previous: Mapping[str, Any]) -> Conditions:
    """A job that finished stays finished, whatever its aggregator (gone after the TTL) says."""
    if previous.get("phase") not in _TERMINAL:
        return {}
    return {
        c["type"]: ("True", c["reason"], c.get("message", ""))
        for c in previous.get("conditions") or []
        if c.get("type") == previous["phase"]
        and c.get("status") == "True"
        and c.get("reason") != "InvalidSpec"
    }


def _aggregator_down(job: FederatedJob, pods: Sequence[AggregatorPodView]) -> Conditions:
    failing = [pod for pod in pods if pod.failure]
    if not failing:
        return {"Running": ("False", "AggregatorUnavailable", "the aggregator does not answer yet")}
    pod = max(failing, key=lambda p: p.restarts)
    message = f"aggregator pod: {pod.failure} (restarted {pod.restarts} times)"
    out = {"Running": ("False", "AggregatorFailed", message)}
    # As a Job's backoffLimit: past it, a crash-looping aggregator fails the job.
    if pod.restarts > job.spec.backoff_limit:
        out["Failed"] = ("True", "AggregatorFailed", f"{message}; backoffLimit exceeded")
    return out


def _scheduled(observed: Observation, *, finished: bool, suspended: bool) -> tuple[str, str, str]:
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


def _clients_available(job: FederatedJob, observed: Observation) -> tuple[str, str, str]:
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


def _tracking(tracking: Mapping[str, Any]) -> tuple[str, str, str]:
    if not tracking.get("enabled"):
        return ("False", "TrackingOff", str(tracking.get("reason") or ""))
    if tracking.get("state") == "failing":
        message = (
            f"{tracking.get('pendingRounds', 0)} rounds not yet in MLflow: "
            f"{tracking.get('lastError')}; training goes on"
        )
        return ("False", "MlflowUnavailable", message)
    return ("True", "Recorded", f"MLflow run {tracking.get('runId')}")


def _phase(conditions: Conditions) -> str:
    for kind, phase in (
        ("Failed", "Failed"),
        ("Succeeded", "Succeeded"),
        ("Suspended", "Suspended"),
    ):
        if conditions.get(kind, ("False",))[0] == "True":
            return phase
    return "Running" if conditions.get("Running", ("False",))[0] == "True" else "Pending"


def _with_times(
    conditions: Conditions,
    previous: Sequence[Mapping[str, Any]],
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    out = []
    for kind in CONDITION_TYPES:
        if kind not in conditions:
            continue
        status, reason, message = conditions[kind]
        old = before.get(kind, {})
        changed = old.get("status") != status
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
                "observedGeneration": generation,
            }
        )
    return out


def _metrics(last_round: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not last_round:
        return None
    out = {
        key: float(last_round[key])
        for key in ("loss", "accuracy", "map50")
        if isinstance(last_round.get(key), int | float) and math.isfinite(last_round[key])
    }
    return out or None


def status_patch(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch from `before` to `after`: keys that went away are set to null,
    or a merge patch would keep them (a cleared siteErrors entry, a lost node found again)."""
    patch: dict[str, Any] = {key: None for key in before if key not in after}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            nested = status_patch(old, value)
            if nested:
                patch[key] = nested
        elif value != old:
            patch[key] = value
    return patch
