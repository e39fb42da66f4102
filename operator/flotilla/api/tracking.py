"""Where a job's rounds are recorded: the MLflow run, its artifacts and the registered model.

No credentials here: MLflow's own environment variables (``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``) carry them, from a Secret in a cluster.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from flotilla.api.base import MAX_SECONDS, ApiModel

# Where the aggregator finds its MLflow server, after --tracking-uri and
# spec.tracking.trackingUri: MLflow's own variable (from runtime.aggregator.envFromSecret, or
# the shell), then the cluster's default that the operator sets (the chart's MLflow server).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_TRACKING_URI_ENV = "FLOTILLA_DEFAULT_TRACKING_URI"

# MLflow's own limits: registered model names and aliases are path segments in its REST API.
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=r"^[^/:%]+$")]
Alias = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")]


class PromotionSpec(ApiModel):
    """A second alias, moved only to a version that beats the one it points at on the test data."""

    alias: Alias = "champion"
    # Unset: the task's score (accuracy for classification, map50 for detection); higher is
    # better. Only the task's score is measured on the test data, so only it may be named.
    metric: Literal["accuracy", "map50"] | None = None
    # By how much (absolute, on a 0..1 score) the new version must beat the champion.
    min_improvement: float = Field(default=0.0, ge=0, le=1)


class TrackingSpec(ApiModel):
    """One MLflow run per job; the final model registered under ``registeredModel``."""

    enabled: bool = True
    # Unset: the aggregator's MLFLOW_TRACKING_URI, or the local runner's ./mlruns SQLite store.
    tracking_uri: str | None = Field(default=None, min_length=1)
    experiment: str | None = Field(default=None, min_length=1, max_length=500)  # job name if unset
    registered_model: ModelName | None = None  # job name if unset
    alias: Alias = "candidate"  # moved to every version a job registers
    # Unset: no gate, and no alias but `alias` is moved (tracking/promotion.py).
    promotion: PromotionSpec | None = None
    checkpoint_every_rounds: int = Field(default=5, ge=0, le=100_000)  # 0: no checkpoints
    flush_timeout_seconds: float = Field(default=60.0, ge=0, le=MAX_SECONDS)
