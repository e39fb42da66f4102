"""A FederatedJob's status from what the operator observes: a pure function.

Inputs are the job, its client pods (from the operator's pod index, no API calls), the
aggregator's /v1/status answer (or None when it does not answer) and the previous status
(transition times and start time survive). Nothing here is stored that could not be
rebuilt from these, as the Kubernetes API conventions ask of status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flotilla.api import FederatedJob

# Bounded: status lives in etcd, and a job may have thousands of sites.
MAX_SITE_ERRORS = 50
MAX_SITE_ERROR_CHARS = 500
CONDITION_TYPES = ("Scheduled", "Running", "Succeeded", "Failed", "Suspended", "Tracking")


@dataclass(frozen=True)
class PodView:
    site: str
    node: str
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    ready: bool

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> PodView:
        labels = pod.get("metadata", {}).get("labels") or {}
        status = pod.get("status") or {}
        conditions = status.get("conditions") or []
        return cls(
            site=labels.get("flotilla.dev/site", ""),
            node=labels.get("flotilla.dev/node", ""),
            phase=status.get("phase", "Pending"),
            ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        )


# Container states in which the aggregator will not come back without someone acting.
_STUCK_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


@dataclass(frozen=True)
class AggregatorPodView:
    """What the aggregator's pod says about why the aggregator does not answer."""

    restarts: int
    failure: str | None  # None while the pod is healthy or still starting

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> AggregatorPodView:
        status = pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        restarts = sum(int(c.get("restartCount") or 0) for c in containers)
        if status.get("phase") == "Failed":
            return cls(restarts, status.get("reason") or status.get("message") or "pod failed")
        for container in containers:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _STUCK_REASONS:
                last = (container.get("lastState") or {}).get("terminated") or {}
                detail = waiting.get("message") or last.get("reason") or ""
                code = last.get("exitCode")
                exit_text = f", last exit code {code}" if code is not None else ""
                return cls(restarts, f"{waiting['reason']}{exit_text}: {detail}".rstrip(": "))
        return cls(restarts, None)


@dataclass(frozen=True)
class Observation:
    desired_sites: Sequence[str]
    pods: Sequence[PodView]
    aggregator: Mapping[str, Any] | None  # /v1/status, None when unreachable
    lost_nodes: Sequence[str] = ()  # nodes of pods whose node is gone
    invalid: str | None = None  # the spec's problems, when it does not parse
    aggregator_pods: Sequence[AggregatorPodView] = ()


def compute_status(
    job: FederatedJob | None,
    observed: Observation,
    *,
    previous: Mapping[str, Any],
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    conditions = _conditions(job, observed)
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
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = previous.get("completionTime") or now
    return status


def _clients(observed: Observation) -> dict[str, int]:
    by_site = {pod.site: pod for pod in observed.pods}
    desired = list(observed.desired_sites)
    return {
        "desired": len(desired),
        "ready": sum(1 for s in desired if s in by_site and by_site[s].ready),
        "failed": sum(1 for p in observed.pods if p.phase == "Failed") + len(observed.lost_nodes),
    }


def _conditions(job: FederatedJob | None, observed: Observation) -> dict[str, tuple[str, str, str]]:
    """type -> (status, reason, message)."""
    if job is None:
        message = observed.invalid or "the spec is invalid"
        return {
            "Failed": ("True", "InvalidSpec", message),
            "Scheduled": ("False", "InvalidSpec", message),
        }
    aggregator = observed.aggregator
    answer = aggregator or {}
    phase = answer.get("phase")
    out: dict[str, tuple[str, str, str]] = {"Scheduled": _scheduled(observed)}
    if job.spec.suspend:
        out["Suspended"] = (
            "True",
            "SuspendedByUser",
            "client pods removed; the aggregator keeps its state",
        )
    else:
        out["Suspended"] = ("False", "NotSuspended", "")
    if phase == "done":
        out["Succeeded"] = ("True", "RoundsCompleted", str(answer.get("message", "")))
        out["Running"] = ("False", "Finished", "")
    elif phase == "failed":
        failure = str(answer.get("failure") or "the aggregator reported a failure")
        out["Failed"] = ("True", "RoundFailed", failure)
        out["Running"] = ("False", "Finished", "")
    elif aggregator is None:
        out |= _aggregator_down(job, observed.aggregator_pods)
    elif not job.spec.suspend:
        message = str(aggregator.get("message", ""))
        errors = answer.get("siteErrors") or {}
        if errors:
            message += f"; {len(errors)} sites cannot read their data: {', '.join(sorted(errors))}"
        out["Running"] = ("True", "RoundsInProgress", message)
    tracking = answer.get("tracking")
    if tracking:
        out["Tracking"] = _tracking(tracking)
    return out


def _aggregator_down(
    job: FederatedJob, pods: Sequence[AggregatorPodView]
) -> dict[str, tuple[str, str, str]]:
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


def _scheduled(observed: Observation) -> tuple[str, str, str]:
    if not observed.desired_sites:
        return ("False", "NoMatchingNodes", "no ready node matches spec.clients.nodeSelector")
    have = {pod.site for pod in observed.pods}
    missing = [site for site in observed.desired_sites if site not in have]
    if observed.lost_nodes:
        lost = ", ".join(sorted(observed.lost_nodes))
        return ("True", "NodesLost", f"nodes gone: {lost}; the job goes on without them")
    if missing:
        return ("False", "PodsPending", f"client pods not created yet: {', '.join(missing)}")
    return ("True", "AllScheduled", f"{len(have)} client pods and the aggregator")


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


def _phase(conditions: Mapping[str, tuple[str, str, str]]) -> str:
    for kind, phase in (
        ("Failed", "Failed"),
        ("Succeeded", "Succeeded"),
        ("Suspended", "Suspended"),
    ):
        if conditions.get(kind, ("False",))[0] == "True":
            return phase
    return "Running" if conditions.get("Running", ("False",))[0] == "True" else "Pending"


def _with_times(
    conditions: Mapping[str, tuple[str, str, str]],
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
