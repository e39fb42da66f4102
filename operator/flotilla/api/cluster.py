"""The parts of a FederatedJob that only a cluster reads: images, resources, placement, lifecycle.

The local runner ignores them (and says so where it matters); the operator turns them into
pods. Hardware profiles override the client pod on GPU and ARM nodes, chosen by node labels.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, WithJsonSchema

from flotilla.api.base import MAX_SECONDS, ApiModel
from flotilla.api.tracking import Alias

DEFAULT_IMAGE = "ghcr.io/flotilla-dev/flotilla:0.1.0"
DEFAULT_CUDA_IMAGE = "ghcr.io/flotilla-dev/flotilla-cuda:0.1.0"
# Clients on CPU nodes: torch and the data readers, neither kopf nor MLflow (edge-images/).
DEFAULT_CLIENT_IMAGE = "ghcr.io/flotilla-dev/flotilla-client:0.1.0"

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
RESOURCE_NAME_PATTERN = r"^([a-z0-9.-]+/)?[a-z0-9A-Z._-]+$"
# A map of resources is bounded: the API server prices the CEL rule on its keys by its size.
MAX_RESOURCES = 32


def _integer_as_text(value: object) -> object:
    """`cpu: 2` as Kubernetes takes it: a quantity is an integer or a string."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# A Kubernetes resource quantity: 2, "500m", "1.5Gi", "64Mi" (int-or-string in the CRD).
Quantity = Annotated[
    str,
    BeforeValidator(_integer_as_text),
    StringConstraints(pattern=QUANTITY_PATTERN),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]
ResourceName = Annotated[str, StringConstraints(pattern=RESOURCE_NAME_PATTERN)]
ResourceMap = Annotated[dict[ResourceName, Quantity], Field(max_length=MAX_RESOURCES)]


class Resources(ApiModel):
    requests: ResourceMap = Field(default_factory=dict)
    limits: ResourceMap = Field(default_factory=dict)


class Toleration(ApiModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    # An int64 to Kubernetes, which takes a negative value as 0; a NoExecute toleration
    # longer than the longest round deadline (a week) keeps a pod on a lost node for nothing.
    # Unset: tolerated for ever.
    toleration_seconds: int | None = Field(default=None, ge=0, le=MAX_SECONDS)


class TrainingOverrides(ApiModel):
    """Per-profile changes to spec.training: smaller batches and a time budget on small nodes."""

    batch_size: int | None = Field(default=None, ge=1, le=65536)
    local_epochs: int | None = Field(default=None, ge=1, le=1000)
    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)


class Profile(ApiModel):
    image: str | None = Field(default=None, min_length=1)  # runtime.client.image if unset
    resources: Resources | None = None  # replaces the client's resources when set
    training: TrainingOverrides = Field(default_factory=TrainingOverrides)


def _gpu_profile() -> Profile:
    return Profile(image=DEFAULT_CUDA_IMAGE, resources=Resources(limits={"nvidia.com/gpu": "1"}))


def _arm_profile() -> Profile:
    return Profile(training=TrainingOverrides(max_seconds=120))


class Profiles(ApiModel):
    """GPU nodes: label nvidia.com/gpu.present=true or nvidia.com/gpu capacity. ARM nodes:
    kubernetes.io/arch=arm64. A GPU node that is also ARM gets the GPU profile."""

    gpu: Profile = Field(default_factory=_gpu_profile)
    arm: Profile = Field(default_factory=_arm_profile)


# Checkpoints hold two rounds of the model and the server optimizer's state: the built-in
# models are a few MB; a model of the user's own gets room for about a billion parameters.
BUILTIN_MODEL_STATE_SIZE = "1Gi"
OWN_MODEL_STATE_SIZE = "20Gi"


class Storage(ApiModel):
    """The aggregator's state directory (checkpoints, the MLflow journal): a
    PersistentVolumeClaim by default, so a replaced pod resumes where the last one stopped.

    `ephemeral: true` keeps it in the pod (emptyDir): a new pod then starts from the last
    checkpoint logged to MLflow, or from round 1 without one; the job's status warns."""

    size: Quantity | None = None  # unset: 1Gi for a built-in model, 20Gi for an entrypoint
    storage_class_name: str | None = None  # unset: the cluster's default StorageClass
    ephemeral: bool = False


class AggregatorRuntime(ApiModel):
    """The aggregator's pod. With neither nodeSelector nor affinity, it prefers nodes that do
    not match spec.clients.nodeSelector, leaving the edge nodes to the clients."""

    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "4Gi"}
        )
    )
    storage: Storage = Field(default_factory=Storage)
    # A Secret whose keys become the aggregator's environment: MLFLOW_TRACKING_URI,
    # MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD.
    env_from_secret: str | None = Field(default=None, min_length=1)
    node_selector: dict[str, str] = Field(default_factory=dict)
    # A core/v1 Affinity, passed to the pod as it is; the API server checks it.
    affinity: dict[str, Any] | None = None
    tolerations: list[Toleration] = Field(default_factory=list)  # beside runtime.tolerations


class ClientRuntime(ApiModel):
    image: str = Field(default=DEFAULT_CLIENT_IMAGE, min_length=1)
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "500m", "memory": "512Mi"}, limits={"memory": "4Gi"}
        )
    )


class RuntimeSpec(ApiModel):
    image: str = Field(default=DEFAULT_IMAGE, min_length=1)  # the aggregator's
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    aggregator: AggregatorRuntime = Field(default_factory=AggregatorRuntime)
    client: ClientRuntime = Field(default_factory=ClientRuntime)
    profiles: Profiles = Field(default_factory=Profiles)
    tolerations: list[Toleration] = Field(default_factory=list)


class ServingSpec(ApiModel):
    """The final model served in the cluster once the job succeeds: a `<job>-model`
    Deployment and Service running `mlflow models serve` on `models:/<name>@<alias>`.

    `enabled` unset: served whenever the job's model is registered (spec.tracking.enabled).
    A later job that registers a new version under the same name and alias rolls it."""

    enabled: bool | None = None
    alias: Alias | None = None  # spec.tracking.alias if unset
    replicas: int = Field(default=1, ge=0, le=100)
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "250m", "memory": "512Mi"}, limits={"memory": "2Gi"}
        )
    )
