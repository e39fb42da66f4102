"""What the operator reads off the objects a job owns: pods and the aggregator's Deployment.

Pure: each view is built from an API object (a dict, as the index holds it) and keeps only
what status needs: where a pod runs, whether the scheduler bound it or why it cannot, and why
an aggregator does not come up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
class Scheduling:
    """Whether the scheduler bound a pod to a node, or the message it gave for not doing so."""

    bound: bool = False
    unschedulable: str | None = None

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> Scheduling:
        if (pod.get("spec") or {}).get("nodeName"):
            return cls(bound=True)
        for condition in _conditions(pod):
            if condition.get("type") == "PodScheduled":
                if condition.get("status") == "True":
                    return cls(bound=True)
                return cls(unschedulable=condition.get("message") or condition.get("reason"))
        return cls()


@dataclass(frozen=True)
class PodView:
    site: str
    node: str
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    ready: bool
    scheduling: Scheduling = Scheduling()

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> PodView:
        labels = pod.get("metadata", {}).get("labels") or {}
        status = pod.get("status") or {}
        return cls(
            site=labels.get("flotilla.dev/site", ""),
            node=labels.get("flotilla.dev/node", ""),
            phase=status.get("phase", "Pending"),
            ready=any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in _conditions(pod)
            ),
            scheduling=Scheduling.from_api(pod),
        )


@dataclass(frozen=True)
class AggregatorPodView:
    """What the aggregator's pod says about why the aggregator does not answer."""

    restarts: int
    failure: str | None  # None while the pod is healthy or still starting
    name: str = ""
    scheduling: Scheduling = Scheduling()
    deleting: bool = False

    @classmethod
    def from_api(cls, pod: Mapping[str, Any]) -> AggregatorPodView:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        restarts = sum(int(c.get("restartCount") or 0) for c in containers)
        common = {
            "name": metadata.get("name", ""),
            "scheduling": Scheduling.from_api(pod),
            "deleting": bool(metadata.get("deletionTimestamp")),
        }
        if status.get("phase") == "Failed":
            failure = status.get("reason") or status.get("message") or "pod failed"
            return cls(restarts, failure, **common)
        for container in containers:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _STUCK_REASONS:
                last = (container.get("lastState") or {}).get("terminated") or {}
                detail = waiting.get("message") or last.get("reason") or ""
                code = last.get("exitCode")
                exit_text = f", last exit code {code}" if code is not None else ""
                failure = f"{waiting['reason']}{exit_text}: {detail}".rstrip(": ")
                return cls(restarts, failure, **common)
        return cls(restarts, None, **common)


def replica_failure(deployment: Mapping[str, Any] | None) -> str | None:
    """Why the Deployment's ReplicaSet cannot create the aggregator's pod (admission, quota)."""
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return str(condition.get("message") or condition.get("reason") or "FailedCreate")
    return None


def current_aggregator(pods: Sequence[AggregatorPodView]) -> AggregatorPodView | None:
    """The pod that is the aggregator now: not being deleted, bound if one is."""
    live = [pod for pod in pods if not pod.deleting]
    return max(live, key=lambda pod: pod.scheduling.bound, default=None)


def _conditions(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("status") or {}).get("conditions") or [])
