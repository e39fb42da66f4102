"""The final model served in the cluster: after a job succeeds, a `<job>-model` Deployment and
Service run `mlflow models serve` (through `flotilla serve`) on `models:/<name>@<alias>`.

Pure. Which version is served comes from the jobs' statuses, not from MLflow: each job that
registers a version records it (status.model), and the serving Deployment of every job that
follows the same model (same namespace, MLflow server, name and alias) carries the newest
such version in its pod template, so a later job moving the alias rolls it: by registering
under it, or by the promotion gate moving it (status.model.promotion). An alias moved by
hand in MLflow is served from the next restart of the serving pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flotilla.api import FederatedJob
from flotilla.k8s import objects as o
from flotilla.k8s.aggregator_objects import placement

ROLE = "model"
PORT = 8080
VERSION_ANNOTATION = "flotilla.dev/model-version"


@dataclass(frozen=True)
class ModelKey:
    """Jobs with equal keys register versions of one MLflow model under one alias."""

    namespace: str
    server: str  # the spec's tracking URI, or the Secret that names one, or the cluster's
    name: str
    alias: str


@dataclass(frozen=True)
class Served:
    """The model a serving Deployment loads: name and alias, and the newest version known."""

    name: str
    alias: str
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def serving_name(job: FederatedJob) -> str:
    return f"{job.metadata.name}-model"


def wanted(job: FederatedJob) -> bool:
    """Served unless the spec says not to; never without tracking (nothing is registered)."""
    enabled = job.spec.serving.enabled
    return job.spec.tracking.enabled and enabled is not False


def model_name(job: FederatedJob) -> str:
    return job.spec.tracking.registered_model or job.metadata.name


def serving_alias(job: FederatedJob) -> str:
    return job.spec.serving.alias or job.spec.tracking.alias


def endpoint(job: FederatedJob) -> str:
    return f"http://{serving_name(job)}.{o.namespace(job)}.svc:{PORT}/invocations"


def _server(namespace: str | None, spec: Mapping[str, Any]) -> str:
    tracking = spec.get("tracking") or {}
    secret = ((spec.get("runtime") or {}).get("aggregator") or {}).get("envFromSecret")
    return str(tracking.get("trackingUri") or (f"secret:{namespace}/{secret}" if secret else ""))


def registered_keys(body: Mapping[str, Any]) -> list[ModelKey]:
    """The model and aliases a job's status says it moved to its version, as raw API data
    (no parse): the registration's alias, and the promotion alias if the gate promoted it."""
    metadata, spec = body.get("metadata") or {}, body.get("spec") or {}
    model = (body.get("status") or {}).get("model") or {}
    if not (model.get("name") and model.get("alias") and model.get("version")):
        return []
    namespace = metadata.get("namespace") or "default"
    server = _server(namespace, spec)
    return [ModelKey(namespace, server, model["name"], alias) for alias in _aliases(model)]


def _aliases(model: Mapping[str, Any]) -> list[str]:
    """The aliases a status.model says point at its version, as the job left them."""
    promotion = model.get("promotion") or {}
    promoted = promotion.get("outcome") == "promoted" and promotion.get("alias")
    return [str(model["alias"]), *([str(promotion["alias"])] if promoted else [])]


def newest_versions(bodies: Iterable[Mapping[str, Any]]) -> dict[ModelKey, str]:
    """For each model and alias, the newest version any job moved it to (versions count up):
    a later registration, or a later promotion, is what the alias points at now."""
    newest: dict[ModelKey, str] = {}
    for body in bodies:
        for key in registered_keys(body):
            version = str(body["status"]["model"]["version"])
            if key not in newest or _number(version) > _number(newest[key]):
                newest[key] = version
    return newest


def _number(version: str) -> int:
    return int(version) if version.isdigit() else -1


def to_serve(
    job: FederatedJob, own: Mapping[str, Any] | None, newest: Mapping[ModelKey, str]
) -> Served | None:
    """What the job's serving Deployment loads, once the job has registered its model
    (`own`: its status.model); None while there is nothing to serve."""
    if not wanted(job) or not own:
        return None
    namespace = o.namespace(job)
    name, alias = str(own["name"]), serving_alias(job)
    key = ModelKey(namespace, _server(namespace, job.to_dict()["spec"]), name, alias)
    known = [newest[key]] if key in newest else []
    if alias in _aliases(own):  # the index may not show the job's own status yet
        known.append(str(own["version"]))
    version = max(known, key=_number, default=None)
    return Served(name=name, alias=alias, version=version)


def objects(
    job: FederatedJob, served: Served, defaults: o.ClusterDefaults = o.NO_DEFAULTS
) -> list[dict[str, Any]]:
    """The Service, then the Deployment; its pod template changes with the version served."""
    return [_service(job), _deployment(job, served, defaults)]


def _service(job: FederatedJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": o.metadata(job, serving_name(job), ROLE),
        "spec": {
            "selector": o.selector(job, ROLE),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def serve_args(job: FederatedJob, served: Served) -> list[str]:
    """`flotilla serve` resolves the MLflow server as the aggregator does, then runs
    `mlflow models serve -m <uri> --env-manager local` in its place."""
    uri = job.spec.tracking.tracking_uri
    return [
        "serve",
        f"--model-uri={served.uri}",
        "--host=0.0.0.0",
        f"--port={PORT}",
        *([f"--tracking-uri={uri}"] if uri else []),
    ]


def _deployment(job: FederatedJob, served: Served, defaults: o.ClusterDefaults) -> dict[str, Any]:
    runtime, serving = job.spec.runtime, job.spec.serving
    tmp_volume, tmp_mount = o.scratch()
    container: dict[str, Any] = {
        "name": "model",
        "image": runtime.image,  # the aggregator's: it has MLflow and torch
        "imagePullPolicy": runtime.image_pull_policy,
        "args": serve_args(job, served),
        "ports": [{"name": "http", "containerPort": PORT}],
        # Loading the model (a download from MLflow's artifact store) may take minutes.
        "startupProbe": _ping(periodSeconds=5, failureThreshold=120),
        "readinessProbe": _ping(),
        "livenessProbe": _ping(failureThreshold=6),
        "resources": o.resources(serving.resources.requests, serving.resources.limits),
        "securityContext": o.container_security(),
        "env": o.mlflow_env(defaults),
        "volumeMounts": [tmp_mount],
    }
    if runtime.aggregator.env_from_secret:  # the MLflow server and its credentials
        container["envFrom"] = [{"secretRef": {"name": runtime.aggregator.env_from_secret}}]
    annotations = {VERSION_ANNOTATION: served.version} if served.version else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": o.metadata(job, serving_name(job), ROLE),
        "spec": {
            "replicas": serving.replicas,
            # The old version answers until the new one is ready.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "selector": {"matchLabels": o.selector(job, ROLE)},
            "template": {
                "metadata": {"labels": o.labels(job, ROLE), "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": o.pod_security(),
                    **placement(job),
                    "containers": [container],
                    "volumes": [tmp_volume],
                },
            },
        },
    }


def _ping(**settings: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 10, **settings}


def condition(
    job: FederatedJob,
    served: Served | None,
    deployment: Mapping[str, Any] | None,
    refused: str | None,
) -> tuple[str, str, str]:
    """The Serving condition of a succeeded job whose spec wants its model served."""
    if served is None:
        return (
            "False",
            "NoRegisteredModel",
            "waiting for the job's model to be registered in MLflow",
        )
    if refused:
        return ("False", "ServingRefused", refused)
    which = f"{served.uri}" + (f" (version {served.version})" if served.version else "")
    status = (deployment or {}).get("status") or {}
    replicas = job.spec.serving.replicas
    if replicas == 0:
        return ("False", "ScaledToZero", f"spec.serving.replicas is 0: {which} is not served")
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    current = _generation_seen(deployment) and updated >= replicas
    if available > 0 and current:
        return ("True", "ModelServed", f"{which} at {endpoint(job)}")
    if available > 0:
        return ("True", "Rolling", f"rolling to {which}; the previous version answers meanwhile")
    return ("False", "ServingStarting", f"loading {which}")


def _generation_seen(deployment: Mapping[str, Any] | None) -> bool:
    if not deployment:
        return False
    observed = (deployment.get("status") or {}).get("observedGeneration")
    return observed is not None and observed >= (deployment.get("metadata") or {}).get(
        "generation", 0
    )
