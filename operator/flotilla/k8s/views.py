"""What the operator reads off the objects a job owns, and all of it for one job (Observation).

Pure: each view is built from an API object (a dict, as an index or a GET returns it) and
keeps only what the reconcile and status need: where a pod runs, whether the scheduler bound
it or why it cannot, why an aggregator does not come up, what the job's Secrets hold.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flotilla.fl.certs import TlsMaterial
from flotilla.k8s.aggregator_objects import TOKENS_KEY
from flotilla.k8s.security_objects import CA_KEY, CERT_KEY, PRIVATE_KEY
from flotilla.k8s.serving import Served

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
    # The model the job registered (status.model: name, version, alias), once it has.
    model: Mapping[str, Any] | None = None
    # After success: what its serving Deployment loads, the Deployment, why it was refused.
    served: Served | None = None
    serving_deployment: Mapping[str, Any] | None = None
    serving_refused: str | None = None


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


def tokens_in(secret: Mapping[str, Any] | None) -> dict[str, str]:
    if not secret:
        return {}
    if TOKENS_KEY in (secret.get("data") or {}):
        raw = base64.b64decode(secret["data"][TOKENS_KEY]).decode()
    else:  # as written, before the API server moved stringData to data
        raw = (secret.get("stringData") or {}).get(TOKENS_KEY, "{}")
    tokens: dict[str, str] = json.loads(raw)
    return tokens


def annotation(obj: Mapping[str, Any] | None, key: str) -> str | None:
    value = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return value.get(key)


def tls_in(secret: Mapping[str, Any] | None) -> TlsMaterial | None:
    """What a TLS Secret holds, whoever wrote it (we, or cert-manager); None if incomplete."""
    if not secret:
        return None
    data = secret.get("data") or {}
    plain = dict(secret.get("stringData") or {})
    for key, value in data.items():
        plain[key] = base64.b64decode(value).decode()
    if not all(plain.get(key) for key in (CERT_KEY, PRIVATE_KEY, CA_KEY)):
        return None
    return TlsMaterial(cert=plain[CERT_KEY], key=plain[PRIVATE_KEY], ca=plain[CA_KEY])


def _conditions(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((pod.get("status") or {}).get("conditions") or [])
