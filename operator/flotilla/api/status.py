"""The observed state of a FederatedJob, as the operator writes it to ``.status``.

Only the latest round and its global metrics live here; per-round history goes to MLflow.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flotilla.api.base import ApiModel, CamelCaseReason

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class Condition(ApiModel):
    """A Kubernetes-style condition, keyed by ``type`` (e.g. ``Ready``, ``Succeeded``)."""

    type: str = Field(min_length=1)
    status: Literal["True", "False", "Unknown"]
    reason: CamelCaseReason
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ClientCounts(ApiModel):
    desired: int = Field(default=0, ge=0)
    ready: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)


class LostNode(ApiModel):
    """A node that was deleted while it ran a client, kept until a node takes its site again
    or the spec no longer reaches the site (another nodeSelector, no data for it)."""

    node: str
    site: str
    since: str
    node_selector: dict[str, str] = Field(default_factory=dict)  # the one it was lost under


class PromotionRecord(ApiModel):
    """The promotion gate's decision on the registered version (spec.tracking.promotion)."""

    outcome: Literal["promoted", "kept"]
    reason: CamelCaseReason  # FirstModel, Better, NotBetter, ChampionUnreadable, ...
    alias: str  # the promotion alias, moved to this version or not
    message: str = Field(default="", max_length=1000)  # both figures and why


class RegisteredModel(ApiModel):
    """The model version the job registered in MLflow, and the alias it moved."""

    name: str
    version: str
    alias: str
    promotion: PromotionRecord | None = None


class FederatedJobStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    round: int | None = Field(default=None, ge=0)
    rounds: int | None = Field(default=None, ge=1)
    progress: str | None = None  # "round/rounds", for kubectl get
    clients_ready: str | None = None  # "ready/desired", for kubectl get
    clients: ClientCounts = Field(default_factory=ClientCounts)
    metrics: dict[str, float] = Field(default_factory=dict)
    # Sites whose client runs but cannot read its data (CVAT refused, bad export): site ->
    # the client's message. The rounds go on without them.
    site_errors: dict[str, str] = Field(default_factory=dict)
    lost_nodes: list[LostNode] = Field(default_factory=list, max_length=50)
    mlflow_run_id: str | None = None
    model: RegisteredModel | None = None
    # Where the served model answers (spec.serving), in the cluster: POST .../invocations.
    serving_endpoint: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
