"""The aggregator's objects: the job as a ConfigMap, the tokens Secret, a Service, a
Deployment (one replica, Recreate: two aggregators must never share a state dir) and,
when the spec asks, a PVC for its checkpoints. Pure functions of the job."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from flotilla.api import FederatedJob
from flotilla.api.cluster import BUILTIN_MODEL_STATE_SIZE, OWN_MODEL_STATE_SIZE
from flotilla.k8s import objects as o
from flotilla.k8s.security_objects import CERT_KEY, PRIVATE_KEY, TLS_DIR, serving_volume

STATE_DIR = "/var/lib/flotilla"
CONFIG_DIR = "/etc/flotilla/job"
TEST_DATA_DIR = "/test-data"
TOKENS_DIR = "/etc/flotilla/tokens"
TOKENS_KEY = "tokens.json"
# Set on the tokens Secret while the job is suspended: the next resume issues new tokens.
ROTATE_ANNOTATION = "flotilla.dev/rotate-on-resume"


def token_key(site: str) -> str:
    return f"token-{site}"


def job_config_map(job: FederatedJob) -> dict[str, Any]:
    document = job.to_dict()
    document.pop("status", None)
    # The uid is the job's identity in MLflow: a new aggregator with an empty state
    # directory finds the job's run (and its last checkpoint) by it.
    meta = {"name": job.metadata.name, "namespace": o.namespace(job), "uid": job.metadata.uid}
    document["metadata"] = {key: value for key, value in meta.items() if value}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": o.metadata(job, o.config_map_name(job), "aggregator"),
        "data": {"job.yaml": yaml.safe_dump(document, sort_keys=False)},
    }


def tokens_secret(
    job: FederatedJob,
    sites: Sequence[str],
    *,
    existing: Mapping[str, str],
    new_token: Callable[[], str],
) -> dict[str, Any]:
    """One token per site; a site keeps its token across reconciles (`existing`), until
    the job resumes from suspension: the reconcile then passes no `existing`."""
    tokens = {site: existing.get(site) or new_token() for site in sorted(sites)}
    data = {token_key(site): token for site, token in tokens.items()}
    data[TOKENS_KEY] = json.dumps(tokens, sort_keys=True)
    metadata = o.metadata(job, o.tokens_secret_name(job), "aggregator")
    metadata["annotations"] = {ROTATE_ANNOTATION: "true" if job.spec.suspend else "false"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "stringData": data,
    }


def service(job: FederatedJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": o.metadata(job, o.aggregator_name(job), "aggregator"),
        "spec": {
            "selector": o.selector(job, "aggregator"),
            "ports": [
                {"name": "http", "port": o.PORT, "targetPort": "http"},
                {"name": "metrics", "port": o.AGGREGATOR_METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def state_claim(job: FederatedJob) -> dict[str, Any] | None:
    """The aggregator's state directory as a claim, unless the spec keeps it in the pod."""
    storage = job.spec.runtime.aggregator.storage
    if storage.ephemeral:
        return None
    builtin = job.spec.model.name is not None
    size = storage.size or (BUILTIN_MODEL_STATE_SIZE if builtin else OWN_MODEL_STATE_SIZE)
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": o.metadata(job, f"{o.aggregator_name(job)}-state", "aggregator"),
        "spec": spec,
    }


# What only the operator reads: changing it must not restart the aggregator (suspending
# keeps it; the client pods' runtime is theirs).
_OPERATOR_ONLY = ("suspend", "ttlSecondsAfterFinished", "backoffLimit", "serving")
_CLIENT_RUNTIME = ("client", "profiles")


def aggregator_spec(job: FederatedJob) -> dict[str, Any]:
    """The part of the spec the aggregator's process reads: its pod restarts when it changes."""
    spec = {k: v for k, v in job.to_dict()["spec"].items() if k not in _OPERATOR_ONLY}
    spec["runtime"] = {k: v for k, v in spec["runtime"].items() if k not in _CLIENT_RUNTIME}
    return spec


def deployment(job: FederatedJob, defaults: o.ClusterDefaults = o.NO_DEFAULTS) -> dict[str, Any]:
    """One replica, `Recreate`. Its pod template depends on what the aggregator's process
    reads of the spec and on nothing else: sites joining or leaving and rotated tokens
    reach it through its mounted tokens file, which it re-reads (fl/aggregator/tokens.py),
    so a node labelled, a node gone or a resumed job never restarts it."""
    tmp_volume, _ = o.scratch()
    config_hash = o.content_hash(aggregator_spec(job))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": o.metadata(job, o.aggregator_name(job), "aggregator"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": o.selector(job, "aggregator")},
            "template": {
                "metadata": {
                    "labels": o.labels(job, "aggregator"),
                    "annotations": {o.HASH_ANNOTATION: config_hash},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": o.pod_security(),
                    **placement(job),
                    "containers": [_aggregator_container(job, defaults)],
                    "volumes": [*_aggregator_volumes(job), tmp_volume],
                },
            },
        },
    }


def placement(job: FederatedJob) -> dict[str, Any]:
    """The spec's placement for the aggregator; without one, a preference (never a
    requirement: on a cluster of edge nodes only, it still runs) for nodes the clients'
    selector does not match. Node selector terms are ORed, so one term per label."""
    runtime = job.spec.runtime
    own = runtime.aggregator
    tolerations = [t.to_dict() for t in (*runtime.tolerations, *own.tolerations)]
    placement: dict[str, Any] = {"tolerations": tolerations}
    if own.node_selector:
        placement["nodeSelector"] = dict(own.node_selector)
    if own.affinity is not None:
        placement["affinity"] = dict(own.affinity)
    elif not own.node_selector and job.spec.clients.node_selector:
        off_edge = [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [{"key": key, "operator": "NotIn", "values": [value]}]
                },
            }
            for key, value in sorted(job.spec.clients.node_selector.items())
        ]
        placement["affinity"] = {
            "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": off_edge}
        }
    return placement


def _aggregator_container(job: FederatedJob, defaults: o.ClusterDefaults) -> dict[str, Any]:
    runtime = job.spec.runtime
    tls = job.spec.security.tls.enabled
    # The kubelet probes HTTPS without verifying the certificate.
    health = {"path": "/healthz", "port": "http", "scheme": "HTTPS" if tls else "HTTP"}
    probe = {"httpGet": health, "periodSeconds": 10}
    tls_args = [f"--tls-cert={TLS_DIR}/{CERT_KEY}", f"--tls-key={TLS_DIR}/{PRIVATE_KEY}"]
    container: dict[str, Any] = {
        "name": "aggregator",
        "image": runtime.image,
        "imagePullPolicy": runtime.image_pull_policy,
        "args": [
            "aggregator",
            f"--job={CONFIG_DIR}/job.yaml",
            f"--tokens-file={TOKENS_DIR}/{TOKENS_KEY}",
            f"--state-dir={STATE_DIR}",
            f"--port={o.PORT}",
            f"--metrics-port={o.AGGREGATOR_METRICS_PORT}",
            *(tls_args if tls else []),
            *_test_data(job).args,
        ],
        "ports": [
            {"name": "http", "containerPort": o.PORT},
            {"name": "metrics", "containerPort": o.AGGREGATOR_METRICS_PORT},
        ],
        "readinessProbe": probe,
        "livenessProbe": probe | {"failureThreshold": 6},
        "resources": o.resources(
            runtime.aggregator.resources.requests, runtime.aggregator.resources.limits
        ),
        "securityContext": o.container_security(),
        "env": o.mlflow_env(defaults),
        "volumeMounts": [
            {"name": "job", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tokens", "mountPath": TOKENS_DIR, "readOnly": True},
            {"name": "state", "mountPath": STATE_DIR},
            *([serving_volume(job)[1]] if tls else []),
            *_test_data(job).mounts,
            o.scratch()[1],
        ],
    }
    if runtime.aggregator.env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": runtime.aggregator.env_from_secret}}]
    return container


def _aggregator_volumes(job: FederatedJob) -> list[dict[str, Any]]:
    claim = state_claim(job)
    state: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
        if claim
        else {"emptyDir": {}}
    )
    return [
        {"name": "job", "configMap": {"name": o.config_map_name(job)}},
        {
            "name": "tokens",
            # Only the aggregator's file: the per-site keys are for the clients.
            "secret": {
                "secretName": o.tokens_secret_name(job),
                "items": [{"key": TOKENS_KEY, "path": TOKENS_KEY}],
            },
        },
        {"name": "state", **state},
        *([serving_volume(job)[0]] if job.spec.security.tls.enabled else []),
        *_test_data(job).volumes,
    ]


@dataclass(frozen=True)
class _Mounted:
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    args: list[str]


def _test_data(job: FederatedJob) -> _Mounted:
    """The central test split (spec.evaluation.testData), mounted read-only where the
    aggregator is told to read it: from its PersistentVolumeClaim, else from the node the
    aggregator runs on (pin it with runtime.aggregator.nodeSelector)."""
    test_data = job.spec.evaluation.test_data
    if test_data is None:
        return _Mounted(volumes=[], mounts=[], args=[])
    export = test_data.cvat_export
    if export.claim_name is not None:
        volume: dict[str, Any] = {
            "persistentVolumeClaim": {"claimName": export.claim_name, "readOnly": True}
        }
        mount, path = TEST_DATA_DIR, str(PurePosixPath(TEST_DATA_DIR, export.path))
    else:
        host = PurePosixPath(export.path)
        kind = "File" if host.suffix == ".zip" else "Directory"
        volume = {"hostPath": {"path": str(host), "type": kind}}
        mount = path = str(PurePosixPath(TEST_DATA_DIR, host.name))
    return _Mounted(
        volumes=[{"name": "test-data", **volume}],
        mounts=[{"name": "test-data", "mountPath": mount, "readOnly": True}],
        args=[f"--test-data={path}"],
    )
