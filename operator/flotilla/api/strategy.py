"""The aggregation strategy section of a FederatedJob: which parameters each strategy takes.

A parameter the chosen strategy does not use is an error rather than silently ignored, and
``StrategySpec.params()`` fills in each strategy's defaults so the runtime never sees None.
``buffered`` turns the synchronous rounds into buffered asynchronous aggregation (FedBuff);
it goes with the mean-based strategies only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from flotilla.api.base import MAX_CLIENTS, ApiModel
from flotilla.api.errors import FieldProblem, raise_problems

StrategyName = Literal[
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "trimmedmean",
    "krum",
    "multikrum",
]

_ADAPTIVE = ("server_learning_rate", "beta1", "beta2", "tau")
# Which optional parameters each strategy reads; anything else set is an error.
_USES: dict[str, tuple[str, ...]] = {
    "fedavg": ("server_learning_rate",),
    "fedprox": ("proximal_mu", "server_learning_rate"),
    "fedadam": _ADAPTIVE,
    "fedyogi": _ADAPTIVE,
    # Adagrad accumulates squared updates without a second moment decay: no beta2.
    "fedadagrad": ("server_learning_rate", "beta1", "tau"),
    "fedmedian": ("mean_of_nearest",),
    "trimmedmean": ("trim_fraction", "mean_of_nearest"),
    "krum": ("byzantine_clients",),
    "multikrum": ("byzantine_clients", "selected"),
}
# The rules that need every update of a round at once: a buffer of updates from different
# model versions has no "round" for them to vote over.
ROBUST_STRATEGIES = ("fedmedian", "trimmedmean", "krum", "multikrum")
# Adaptive server optimisers take small steps on the averaged delta; plain averaging takes it whole.
_ADAPTIVE_SERVER_LR = 0.01
_PLAIN_SERVER_LR = 1.0


@dataclass(frozen=True)
class StrategyParams:
    """Every strategy parameter with its default filled in; unused ones keep a neutral value."""

    proximal_mu: float
    server_learning_rate: float
    beta1: float
    beta2: float
    tau: float
    trim_fraction: float
    byzantine_clients: int
    # None: all answered clients minus byzantine_clients, known only once a round is in.
    selected: int | None
    mean_of_nearest: bool


class BufferedSpec(ApiModel):
    """Buffered asynchronous aggregation (FedBuff): a server update every `size` updates."""

    # Nguyen et al. 2022: the server steps as soon as `size` updates arrived, each weighted
    # down by its staleness; clients train continuously on the latest model; an update
    # staler than `maxStaleness` is refused (docs/round-engine.md, "Buffered aggregation").

    # Updates per server step. More than the sites is allowed: a fast site trains again.
    size: int = Field(ge=1, le=MAX_CLIENTS)
    # Server updates an update's base model may lag behind the current one; unset: any.
    max_staleness: int | None = Field(default=None, ge=0, le=100_000)


class StrategySpec(ApiModel):
    """How the aggregator combines client updates; unset parameters take the strategy's default."""

    name: StrategyName = "fedavg"
    # FedProx's mu is 0.001..1 in practice; mu * learningRate > 1 overshoots the global
    # weights each step, so 1e3 only keeps the local step finite.
    proximal_mu: float | None = Field(default=None, gt=0, le=1e3)
    server_learning_rate: float | None = Field(default=None, gt=0, le=10)  # as training's
    beta1: float | None = Field(default=None, ge=0, lt=1)
    beta2: float | None = Field(default=None, ge=0, lt=1)
    # The adaptive optimisers' adaptivity, 1e-5..1 in Reddi et al. 2021: the second moment
    # starts at tau**2 in float32 (inf past 1.8e19), and a larger tau only shrinks the step.
    tau: float | None = Field(default=None, gt=0, le=1)
    trim_fraction: float | None = Field(default=None, gt=0, lt=0.5)
    byzantine_clients: int | None = Field(default=None, ge=0, le=MAX_CLIENTS)
    selected: int | None = Field(default=None, ge=1, le=MAX_CLIENTS)
    # fedmedian and trimmedmean: per coordinate, the mean of the values nearest the median
    # or trimmed mean (MeaMed, Phocas) instead of that value. Unset: false.
    mean_of_nearest: bool | None = None
    # Unset: synchronous rounds. Set: buffered asynchronous aggregation (see BufferedSpec).
    buffered: BufferedSpec | None = None

    @model_validator(mode="after")
    def _only_used_parameters(self) -> StrategySpec:
        used = _USES[self.name]
        problems = [
            FieldProblem((field.alias or name,), self._unused(name), getattr(self, name))
            for name, field in type(self).model_fields.items()
            if name not in ("name", "buffered")
            and name not in used
            and getattr(self, name) is not None
        ]
        if self.buffered is not None and self.name in ROBUST_STRATEGIES:
            message = (
                f"buffered aggregation needs a mean-based strategy (fedavg, fedprox, fedadam, "
                f"fedyogi, fedadagrad), not strategy.name {self.name!r}: a robust rule needs "
                "every update of a round at once, and a buffer holds updates of many versions"
            )
            problems.append(FieldProblem(("buffered",), message, self.name))
        raise_problems(problems)
        return self

    def _unused(self, name: str) -> str:
        message = f"not used by strategy {self.name!r}"
        if name == "mean_of_nearest":
            message += "; only the coordinate-wise rules (fedmedian, trimmedmean) take it"
        return message

    @property
    def byzantine(self) -> int:
        """Byzantine clients tolerated (0 unless krum/multikrum set it)."""
        return self.byzantine_clients or 0

    def params(self) -> StrategyParams:
        adaptive = self.name in ("fedadam", "fedyogi", "fedadagrad")
        default_lr = _ADAPTIVE_SERVER_LR if adaptive else _PLAIN_SERVER_LR
        default_mu = 0.01 if self.name == "fedprox" else 0.0
        return StrategyParams(
            proximal_mu=_or(self.proximal_mu, default_mu),
            server_learning_rate=_or(self.server_learning_rate, default_lr),
            beta1=_or(self.beta1, 0.9),
            beta2=_or(self.beta2, 0.99),
            tau=_or(self.tau, 1e-3),
            trim_fraction=_or(self.trim_fraction, 0.1),
            byzantine_clients=self.byzantine,
            selected=self.selected,
            mean_of_nearest=bool(self.mean_of_nearest),
        )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
