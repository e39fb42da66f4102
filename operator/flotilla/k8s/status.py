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
from typing import Any

from flotilla.api import FederatedJob
from flotilla.k8s import serving
from flotilla.k8s.scheduling import clients_available, scheduled
from flotilla.k8s.views import AggregatorPodView, Observation

# Bounded: status lives in etcd, and a job may have thousands of sites.
MAX_SITE_ERRORS = 50
MAX_SITE_ERROR_CHARS = 500
CONDITION_TYPES = (
    "Scheduled",
    "ClientsAvailable",
    "StateDurable",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
    "Tracking",
    "Serving",
    "Promoted",
)
_TERMINAL = ("Succeeded", "Failed")


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
    if observed.model:
        status["model"] = dict(observed.model)
    if job is not None and phase == "Succeeded" and observed.served is not None:
        status["servingEndpoint"] = serving.endpoint(job)
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
    out["Scheduled"] = scheduled(observed, finished=finished, suspended=job.spec.suspend)
    out["StateDurable"] = _state_durable(job)
    if not (finished or job.spec.suspend):
        out["ClientsAvailable"] = clients_available(job, observed)
    tracking = answer.get("tracking")
    if tracking:
        out["Tracking"] = _tracking(tracking)
    promotion = (observed.model or {}).get("promotion")
    if job.spec.tracking.promotion is not None and promotion:
        promoted = "True" if promotion.get("outcome") == "promoted" else "False"
        out["Promoted"] = (promoted, str(promotion["reason"]), str(promotion.get("message", "")))
    if out.get("Succeeded", ("False",))[0] == "True" and serving.wanted(job):
        tracking_off = out.get("Tracking", ("", ""))[1] == "TrackingOff"
        if observed.served is None and tracking_off:
            reason = out["Tracking"][2]
            out["Serving"] = ("False", "TrackingOff", f"no model was registered: {reason}")
        else:
            out["Serving"] = serving.condition(
                job, observed.served, observed.serving_deployment, observed.serving_refused
            )
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


def _state_durable(job: FederatedJob) -> tuple[str, str, str]:
    if job.spec.runtime.aggregator.storage.ephemeral:
        return (
            "False",
            "EphemeralState",
            "spec.runtime.aggregator.storage.ephemeral: a replaced aggregator pod starts from "
            "the last checkpoint logged to MLflow, or from round 1 without one",
        )
    claim = f"{job.metadata.name}-aggregator-state"
    return ("True", "PersistentVolumeClaim", f"the aggregator's state is on claim {claim}")


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
