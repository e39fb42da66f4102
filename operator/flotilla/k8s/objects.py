"""What every object the operator makes shares: names, labels, owner reference, hardening."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flotilla.api import API_VERSION, FederatedJob
from flotilla.api.tracking import DEFAULT_TRACKING_URI_ENV

APP = "flotilla"
PORT = 8080
CLIENT_METRICS_PORT = 9090
# The aggregator's /metrics: plain HTTP on a port of its own, as its API port may speak TLS.
AGGREGATOR_METRICS_PORT = 9090
JOB_LABEL = "flotilla.dev/job"
ROLE_LABEL = "flotilla.dev/role"
NODE_LABEL = "flotilla.dev/node"
SITE_LABEL = "flotilla.dev/site"
HASH_ANNOTATION = "flotilla.dev/config-hash"
# The operator's own pod, in any namespace (config/operator.yaml and the chart label it so).
OPERATOR_POD_LABELS = {"app.kubernetes.io/part-of": APP, "app.kubernetes.io/component": "operator"}


@dataclass(frozen=True)
class ClusterDefaults:
    """What the operator adds to every job from its own settings (flags, the chart's values)."""

    # The MLflow server for jobs that name none (spec.tracking.trackingUri, or
    # MLFLOW_TRACKING_URI in runtime.aggregator.envFromSecret): the chart's own, by default.
    tracking_uri: str | None = None


NO_DEFAULTS = ClusterDefaults()


def aggregator_name(job: FederatedJob) -> str:
    return f"{job.metadata.name}-aggregator"


def tokens_secret_name(job: FederatedJob) -> str:
    return f"{job.metadata.name}-tokens"


def tls_secret_name(job: FederatedJob) -> str:
    return f"{job.metadata.name}-tls"


def namespace(job: FederatedJob) -> str:
    return job.metadata.namespace or "default"


def config_map_name(job: FederatedJob) -> str:
    return f"{job.metadata.name}-job"


def client_pod_name(job: FederatedJob, site: str) -> str:
    return f"{job.metadata.name}-client-{site}"


def labels(job: FederatedJob, role: str, **extra: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": "flotilla-operator",
        "app.kubernetes.io/part-of": APP,
        JOB_LABEL: job.metadata.name,
        ROLE_LABEL: role,
        **extra,
    }


def selector(job: FederatedJob, role: str) -> dict[str, str]:
    return {JOB_LABEL: job.metadata.name, ROLE_LABEL: role}


def metadata(job: FederatedJob, name: str, role: str, **extra_labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": labels(job, role, **extra_labels),
        "ownerReferences": [owner_reference(job)],
    }
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    return meta


def owner_reference(job: FederatedJob) -> dict[str, Any]:
    """Deleting the job garbage-collects everything it owns."""
    return {
        "apiVersion": API_VERSION,
        "kind": "FederatedJob",
        "name": job.metadata.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def mlflow_env(defaults: ClusterDefaults) -> list[dict[str, str]]:
    """What a pod that talks to MLflow needs: a writable HOME, and the cluster's default
    server below the spec's trackingUri and an envFromSecret's MLFLOW_TRACKING_URI."""
    env = [{"name": "HOME", "value": "/tmp"}]
    if defaults.tracking_uri:
        env.append({"name": DEFAULT_TRACKING_URI_ENV, "value": defaults.tracking_uri})
    return env


def scratch() -> tuple[dict[str, Any], dict[str, Any]]:
    """A writable /tmp (torch and Python write there) on a read-only root filesystem."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


def resources(requests: Mapping[str, str], limits: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = dict(requests)
    if limits:
        out["limits"] = dict(limits)
    return out


def content_hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
