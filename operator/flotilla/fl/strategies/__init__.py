"""Strategies: a strategy name from the job spec becomes an aggregation rule and a server optimizer.

The spec side is typed as small Protocols (`StrategySpecLike`), so this package
depends on nothing above it; `flotilla.api.spec.StrategySpec` satisfies them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flotilla.fl.strategies.base import (
    AggregationError,
    AggregationRule,
    RoundAggregate,
    ServerOptimizer,
)
from flotilla.fl.strategies.optimizers import ServerAdagrad, ServerAdam, ServerSgd, ServerYogi
from flotilla.fl.strategies.rules import CoordinateMedian, Krum, TrimmedMean, WeightedMean

__all__ = [
    "STRATEGY_NAMES",
    "AggregationError",
    "AggregationRule",
    "CoordinateMedian",
    "Krum",
    "RoundAggregate",
    "ServerAdagrad",
    "ServerAdam",
    "ServerOptimizer",
    "ServerSgd",
    "ServerYogi",
    "Strategy",
    "StrategyParamsLike",
    "StrategySpecLike",
    "TrimmedMean",
    "WeightedMean",
    "build_strategy",
]


class StrategyParamsLike(Protocol):
    """The strategy parameters, defaults filled in (read-only, as a frozen dataclass)."""

    @property
    def proximal_mu(self) -> float: ...
    @property
    def server_learning_rate(self) -> float: ...
    @property
    def beta1(self) -> float: ...
    @property
    def beta2(self) -> float: ...
    @property
    def tau(self) -> float: ...
    @property
    def trim_fraction(self) -> float: ...
    @property
    def byzantine_clients(self) -> int: ...
    @property
    def selected(self) -> int | None: ...
    @property
    def mean_of_nearest(self) -> bool: ...


class StrategySpecLike(Protocol):
    @property
    def name(self) -> str: ...

    def params(self) -> StrategyParamsLike: ...


@dataclass(frozen=True)
class Strategy:
    """What the aggregator runs each round; `proximal_mu` is sent to the clients (FedProx)."""

    name: str
    rule: AggregationRule
    optimizer: ServerOptimizer
    proximal_mu: float = 0.0


_OptimizerBuilder = Callable[[StrategyParamsLike], ServerOptimizer]
_RuleBuilder = Callable[[StrategyParamsLike], AggregationRule]


def _sgd(p: StrategyParamsLike) -> ServerOptimizer:
    return ServerSgd(learning_rate=p.server_learning_rate)


def _adaptive(cls: type[ServerAdam | ServerYogi | ServerAdagrad]) -> _OptimizerBuilder:
    def build(p: StrategyParamsLike) -> ServerOptimizer:
        return cls(learning_rate=p.server_learning_rate, beta1=p.beta1, beta2=p.beta2, tau=p.tau)

    return build


def _mean(p: StrategyParamsLike) -> AggregationRule:
    return WeightedMean()


_STRATEGIES: dict[str, tuple[_RuleBuilder, _OptimizerBuilder]] = {
    "fedavg": (_mean, _sgd),
    "fedprox": (_mean, _sgd),
    "fedadam": (_mean, _adaptive(ServerAdam)),
    "fedyogi": (_mean, _adaptive(ServerYogi)),
    "fedadagrad": (_mean, _adaptive(ServerAdagrad)),
    "fedmedian": (lambda p: CoordinateMedian(mean_of_nearest=p.mean_of_nearest), _sgd),
    "trimmedmean": (
        lambda p: TrimmedMean(trim_fraction=p.trim_fraction, mean_of_nearest=p.mean_of_nearest),
        _sgd,
    ),
    "krum": (lambda p: Krum(byzantine_clients=p.byzantine_clients, selected=1), _sgd),
    "multikrum": (
        lambda p: Krum(byzantine_clients=p.byzantine_clients, selected=p.selected),
        _sgd,
    ),
}

STRATEGY_NAMES: tuple[str, ...] = tuple(_STRATEGIES)


def build_strategy(spec: StrategySpecLike) -> Strategy:
    """The rule and optimizer for `spec.name`; only FedProx sends a proximal term."""
    try:
        build_rule, build_optimizer = _STRATEGIES[spec.name]
    except KeyError:
        raise ValueError(
            f"strategy name {spec.name!r} is not one of {', '.join(STRATEGY_NAMES)}"
        ) from None
    params = spec.params()
    return Strategy(
        name=spec.name,
        rule=build_rule(params),
        optimizer=build_optimizer(params),
        proximal_mu=params.proximal_mu if spec.name == "fedprox" else 0.0,
    )
