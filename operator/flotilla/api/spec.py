"""The FederatedJob custom resource as typed, immutable models, with its cross-field rules.

Pure: no file or network I/O. ``flotilla.api.loader`` reads YAML; the operator reads the same
models from the Kubernetes API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from flotilla.api.base import MAX_CLIENTS, MAX_SECONDS, MAX_SEED, ApiModel, DnsLabel, Entrypoint
from flotilla.api.cluster import RuntimeSpec, ServingSpec
from flotilla.api.data import DataSource, ExportDataSource
from flotilla.api.errors import FieldProblem, SpecError, problem_line, problems_from, raise_problems
from flotilla.api.model_init import InitUri, parse_init_flag
from flotilla.api.privacy import PrivacySpec
from flotilla.api.security import SecuritySpec
from flotilla.api.status import FederatedJobStatus
from flotilla.api.strategy import ROBUST_STRATEGIES, StrategySpec
from flotilla.api.tracking import TrackingSpec

API_GROUP = "flotilla.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "FederatedJob"

NonEmptyStr = Annotated[str, Field(min_length=1)]


class ObjectMeta(ApiModel):
    """The part of Kubernetes metadata Flotilla reads; the API server's other keys are kept."""

    # The API server adds managedFields, ownerReferences etc.; rejecting them would make objects
    # read back from the cluster unparseable.
    model_config = ConfigDict(extra="allow")

    name: DnsLabel
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None


class InputSpec(ApiModel):
    """The image tensor the model takes: images are resized to height x width."""

    channels: int = Field(default=3, ge=1, le=4)
    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)


class ModelSpec(ApiModel):
    """A built-in architecture by name, or a user function ``pkg.module:build``: exactly one."""

    name: Literal["cnn-small", "mlp", "centernet-tiny"] | None = None
    entrypoint: Entrypoint | None = None
    input: InputSpec
    # Round 0 from weights a job recorded in MLflow (api/model_init.py) instead of the
    # seed's; unset, the seed alone decides the initial weights.
    init: InitUri | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSpec:
        if self.name is not None and self.entrypoint is not None:
            problem = FieldProblem(("entrypoint",), "set only one of name or entrypoint", "both")
            raise_problems([problem])
        if self.name is None and self.entrypoint is None:
            raise_problems([FieldProblem((), "set one of name or entrypoint (got neither)")])
        return self


class SiteSpec(ApiModel):
    """One participant; without its own data it uses ``spec.data``."""

    name: DnsLabel
    data: DataSource | None = None


class EvaluationSpec(ApiModel):
    test_data: ExportDataSource | None = None
    federated: bool = True


class ClientsSpec(ApiModel):
    """Where clients run and how many a round needs."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    min_clients: int = Field(default=1, ge=1, le=MAX_CLIENTS)
    per_round: int | None = Field(default=None, ge=1, le=MAX_CLIENTS)
    round_deadline_seconds: float = Field(default=300.0, gt=0, le=MAX_SECONDS)
    join_grace_seconds: float = Field(default=10.0, ge=0, le=MAX_SECONDS)
    max_round_retries: int = Field(default=3, ge=0, le=100)

    @model_validator(mode="after")
    def _per_round_covers_minimum(self) -> ClientsSpec:
        if self.per_round is not None and self.per_round < self.min_clients:
            message = f"must be >= minClients ({self.min_clients})"
            raise_problems([FieldProblem(("perRound",), message, self.per_round)])
        return self


class TrainingSpec(ApiModel):
    """Local training on each client, per round."""

    local_epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=32, ge=1, le=65536)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    # L2 / decoupled decay per step, usually 1e-5..1e-1; past 1 it outweighs the gradient.
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    validation_fraction: float = Field(default=0.1, ge=0, le=0.9)

    @model_validator(mode="after")
    def _momentum_only_for_sgd(self) -> TrainingSpec:
        if self.momentum != 0 and self.optimizer != "sgd":
            message = f"only used by optimizer 'sgd', not {self.optimizer!r}"
            raise_problems([FieldProblem(("momentum",), message, self.momentum)])
        return self


class CompressionSpec(ApiModel):
    """How model tensors are encoded on the wire; int8 uses one scale per tensor."""

    dtype: Literal["float32", "float16", "int8"] = "float32"
    zstd: bool = False
    zstd_level: int = Field(default=3, ge=1, le=22)


class LimitsSpec(ApiModel):
    # The squared norm of a delta is taken in float32 (max 3.4e38): 1e12 squared is 1e24.
    max_update_norm: float | None = Field(default=None, gt=0, le=1e12)
    # The most upload bodies the aggregator receives at once, into a model-sized buffer
    # each (the others wait, held by TCP). One is made up front and keeps the fold busy on
    # a LAN; the others only while every holder is on a slow link (fl/aggregator/pool.py).
    receive_buffers: int = Field(default=2, ge=1, le=64)


class FederatedJobSpec(ApiModel):
    """The desired federated training run."""

    rounds: int = Field(ge=1, le=100_000)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    task: Literal["classification", "detection"] = "classification"
    labels: list[NonEmptyStr] = Field(min_length=2, max_length=10_000)
    model: ModelSpec
    data: DataSource | None = None
    sites: list[SiteSpec] = Field(default_factory=list, max_length=10_000)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    clients: ClientsSpec = Field(default_factory=ClientsSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    compression: CompressionSpec = Field(default_factory=CompressionSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    # Unset: no differential privacy (the default strategy weighs clients by examples).
    privacy: PrivacySpec | None = None
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    # Cluster only (see api/cluster.py); the local runner ignores them.
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    suspend: bool = False
    # int32, as Kubernetes' own ttlSecondsAfterFinished.
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=2**31 - 1)
    # Client pod replacements per node, and aggregator restarts before the job fails.
    backoff_limit: int = Field(default=3, ge=0, le=100)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> FederatedJobSpec:
        problems = _duplicates("labels", self.labels)
        problems += _duplicates("sites", [site.name for site in self.sites], suffix=("name",))
        problems += _strategy_fits_clients(self.strategy, self.clients)
        problems += _privacy_fits_strategy(self.privacy, self.strategy)
        problems += _buffered_fits(self.strategy, self.clients, self.privacy)
        problems += _model_fits_task(self.model, self.task)
        problems += _serving_needs_tracking(self.serving, self.tracking)
        problems += _promotion_fits(self.tracking, self.evaluation, self.task)
        raise_problems(problems)
        return self


def _duplicates(
    field: str, values: list[str], *, suffix: tuple[str, ...] = ()
) -> list[FieldProblem]:
    first: dict[str, int] = {}
    problems: list[FieldProblem] = []
    for index, value in enumerate(values):
        if value in first:
            message = f"duplicate of {field}[{first[value]}]"
            problems.append(FieldProblem((field, index, *suffix), message, value))
        first.setdefault(value, index)
    return problems


def _strategy_fits_clients(strategy: StrategySpec, clients: ClientsSpec) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    if strategy.name in ("krum", "multikrum"):
        # Krum scores each update by its n - f - 2 nearest neighbours: it needs n > 2f + 2.
        needed = 2 * strategy.byzantine + 3
        if clients.min_clients < needed:
            message = (
                f"strategy {strategy.name!r} with byzantineClients={strategy.byzantine} "
                f"needs minClients >= {needed} (n > 2f + 2)"
            )
            problems.append(FieldProblem(("clients", "minClients"), message, clients.min_clients))
    if strategy.name == "trimmedmean" and strategy.mean_of_nearest:
        params = strategy.params()
        cut = math.floor(params.trim_fraction * clients.min_clients)
        if cut == 0:
            # Phocas averages the n - cut values nearest the trimmed mean: all of them.
            message = (
                f"with trimFraction={params.trim_fraction} a round of clients.minClients="
                f"{clients.min_clients} trims nothing, so the mean of the values nearest the "
                "trimmed mean is the plain mean; raise trimFraction to at least "
                f"1 / minClients ({1 / clients.min_clients:.3g})"
            )
            problems.append(
                FieldProblem(("strategy", "meanOfNearest"), message, strategy.mean_of_nearest)
            )
    selected, per_round = strategy.selected, clients.per_round
    if selected is not None and per_round is not None and selected > per_round:
        message = f"must be <= clients.perRound ({per_round})"
        problems.append(FieldProblem(("strategy", "selected"), message, selected))
    return problems


# The task each built-in model is made for (flotilla.ml.models builds with the same table).
BUILTIN_MODEL_TASKS = {
    "cnn-small": "classification",
    "mlp": "classification",
    "centernet-tiny": "detection",
}


def _model_fits_task(model: ModelSpec, task: str) -> list[FieldProblem]:
    made_for = BUILTIN_MODEL_TASKS.get(model.name or "")
    if made_for is None or made_for == task:
        return []
    message = f"the built-in model is a {made_for} model, and spec.task is {task}"
    return [FieldProblem(("model", "name"), message, model.name)]


def _serving_needs_tracking(serving: ServingSpec, tracking: TrackingSpec) -> list[FieldProblem]:
    if serving.enabled is not True or tracking.enabled:
        return []
    message = (
        "serving needs spec.tracking.enabled: the served model is the one the job registers "
        "in MLflow"
    )
    return [FieldProblem(("serving", "enabled"), message, True)]


# The score each task's evaluation measures (fl/learning.py SCORE_OF_TASK says the same).
_TASK_SCORES = {"classification": "accuracy", "detection": "map50"}


def _promotion_fits(
    tracking: TrackingSpec, evaluation: EvaluationSpec, task: str
) -> list[FieldProblem]:
    promotion = tracking.promotion
    if promotion is None:
        return []
    where = ("tracking", "promotion")
    problems: list[FieldProblem] = []
    if evaluation.test_data is None:
        message = (
            "needs spec.evaluation.testData: the new version and the champion are compared "
            "on the aggregator's test data, and without it there is nothing to compare"
        )
        problems.append(FieldProblem(where, message))
    if not tracking.enabled:
        message = "needs spec.tracking.enabled: the champion is an alias in MLflow"
        problems.append(FieldProblem(where, message))
    if promotion.alias == tracking.alias:
        message = (
            f"must differ from spec.tracking.alias ({tracking.alias!r}), which every "
            "registered version gets whatever it scores"
        )
        problems.append(FieldProblem((*where, "alias"), message, promotion.alias))
    if promotion.metric is not None and promotion.metric != _TASK_SCORES[task]:
        message = (
            f"a {task} job's test data measures {_TASK_SCORES[task]!r}, not {promotion.metric!r}"
        )
        problems.append(FieldProblem((*where, "metric"), message, promotion.metric))
    return problems


def _privacy_fits_strategy(
    privacy: PrivacySpec | None, strategy: StrategySpec
) -> list[FieldProblem]:
    # Robust rules pick or order coordinates among the updates: one client's update can move
    # the result by more than clipNorm / sampled, so the Gaussian noise would not cover it.
    if privacy is None or strategy.name not in ROBUST_STRATEGIES:
        return []
    message = (
        f"differential privacy needs a mean-based strategy (fedavg, fedprox, fedadam, fedyogi, "
        f"fedadagrad), not strategy.name {strategy.name!r}: a robust rule's sensitivity is not "
        "bounded by clipNorm"
    )
    return [FieldProblem(("privacy",), message, strategy.name)]


def _buffered_fits(
    strategy: StrategySpec, clients: ClientsSpec, privacy: PrivacySpec | None
) -> list[FieldProblem]:
    """Buffered aggregation has no sampled rounds: every client trains all the time."""
    if strategy.buffered is None:
        return []
    where = ("strategy", "buffered")
    problems: list[FieldProblem] = []
    if privacy is not None:
        message = (
            "differential privacy accounts per round of sampled clients; buffered aggregation "
            "has neither (every client trains all the time, updates of many versions mix): "
            "unset spec.privacy or spec.strategy.buffered"
        )
        problems.append(FieldProblem(where, message))
    if clients.per_round is not None:
        message = (
            "not used with spec.strategy.buffered: every client trains all the time, and a "
            "server update takes the first buffered.size updates that arrive"
        )
        problems.append(FieldProblem(("clients", "perRound"), message, clients.per_round))
    return problems


class FederatedJob(ApiModel):
    """A FederatedJob custom resource (``flotilla.dev/v1alpha1``)."""

    api_version: Literal["flotilla.dev/v1alpha1"]
    kind: Literal["FederatedJob"]
    metadata: ObjectMeta
    spec: FederatedJobSpec
    status: FederatedJobStatus | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> FederatedJob:
        """Validate a camelCase mapping; every problem is reported at once in a SpecError."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise SpecError(problems_from(error), source=source) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe camelCase form, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def with_model_init(self, uri: str) -> FederatedJob:
        """A copy whose ``spec.model.init`` is ``uri`` (a command line's ``--init``); a
        SpecError naming the flag if ``uri`` is not one of the accepted forms."""
        parse_init_flag(uri)
        model = self.spec.model.model_copy(update={"init": uri})
        return self.model_copy(update={"spec": self.spec.model_copy(update={"model": model})})

    def with_test_data_path(self, path: Path) -> FederatedJob:
        """A copy reading ``spec.evaluation.testData``'s export at ``path`` (a command line's
        ``--test-data``: where the export is on this machine); a SpecError naming the field
        if the job has no test data."""
        test_data = self.spec.evaluation.test_data
        if test_data is None:
            raise SpecError(["--test-data: the job has no spec.evaluation.testData to read"])
        export = test_data.cvat_export.model_copy(update={"path": str(path)})
        evaluation = self.spec.evaluation.model_copy(
            update={"test_data": test_data.model_copy(update={"cvat_export": export})}
        )
        spec = self.spec.model_copy(update={"evaluation": evaluation})
        return self.model_copy(update={"spec": spec})

    def resolve_paths(self, base_dir: Path) -> FederatedJob:
        """A copy with every relative ``cvatExport.path`` made absolute against ``base_dir``."""
        spec = self.spec

        def resolve(source: DataSource | None) -> DataSource | None:
            return None if source is None else source.resolved(base_dir)

        sites = [site.model_copy(update={"data": resolve(site.data)}) for site in spec.sites]
        evaluation = spec.evaluation.model_copy(
            update={"test_data": resolve(spec.evaluation.test_data)}
        )
        new_spec = spec.model_copy(
            update={"data": resolve(spec.data), "sites": sites, "evaluation": evaluation}
        )
        return self.model_copy(update={"spec": new_spec})

    def site_data(self, site_name: str) -> DataSource:
        """The site's own data source, else ``spec.data``; a SpecError if it has neither.

        A site need not be listed in ``spec.sites``: in a cluster, sites are the nodes that
        match the selector, and take ``spec.data`` unless listed with their own.
        """
        for index, site in enumerate(self.spec.sites):
            if site.name == site_name:
                data = site.data or self.spec.data
                if data is None:
                    raise SpecError([_no_data_line(index)])
                return data
        if self.spec.data is not None:
            return self.spec.data
        known = ", ".join(site.name for site in self.spec.sites) or "none"
        message = f"site {site_name!r} is not listed (sites: {known}) and spec.data is not set"
        raise SpecError([problem_line(("spec", "data"), message)])

    def require_local_sites(self) -> None:
        """Check what a local run needs: at least one site, data for each, enough sites."""
        sites = self.spec.sites
        problems: list[str] = []
        if not sites:
            problems.append(problem_line(("spec", "sites"), "a local run needs at least one site"))
        if self.spec.data is None:
            problems += [_no_data_line(i) for i, site in enumerate(sites) if site.data is None]
        min_clients = self.spec.clients.min_clients
        if sites and min_clients > len(sites):
            message = f"more than the {len(sites)} sites: no round could open"
            problems.append(problem_line(("spec", "clients", "minClients"), message, min_clients))
        if problems:
            raise SpecError(problems)


def _no_data_line(index: int) -> str:
    message = "site has no data source and spec.data is not set"
    return problem_line(("spec", "sites", index, "data"), message)
