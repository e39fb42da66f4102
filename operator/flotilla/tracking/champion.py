"""The promotion gate's I/O: find the champion, score it, move the alias or not, say why.

The champion is scored from the safetensors weights its job logged beside it
(tracking/weights.py), never from the registered model itself (a pt2 archive or a pickle
can run code when loaded). The scoring is the caller's (the aggregator's evaluator on its
test split), so both versions are measured alike; the decision is promotion.py's.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flotilla.tracking.plan import Metric
from flotilla.tracking.promotion import (
    Champion,
    Decision,
    PromotionSettings,
    decide,
    run_metrics,
    run_tags,
)
from flotilla.tracking.weights import LoggedWeights, read_weights, weights_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AliasHolder:
    """The version an alias points at, and the job run and round that registered it."""

    version: str
    run_id: str | None  # None: not registered by a Flotilla job (no flotilla.run_id tag)
    round: int | None


class Registry(Protocol):
    def alias_holder(self, name: str, alias: str) -> AliasHolder | None:
        """The version `alias` points at; None if no version holds it (or no model exists)."""
        ...

    def download_weights(self, run_id: str, round_number: int, into: Path) -> Path | None:
        """The run's weights/round-NNNNNN.safetensors downloaded under `into`; None if absent."""
        ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None: ...


@dataclass(frozen=True)
class Candidate:
    """The version the job just registered and its score from the final central evaluation."""

    run_id: str
    name: str
    version: str
    round: int
    score: float | None
    timestamp_ms: int  # the last round's end: the metrics' timestamp, so a resend is identical


# The champion's weights -> its score; ValueError saying why they cannot be scored here.
Scorer = Callable[[LoggedWeights], float]


class PromotionGate:
    def __init__(
        self, settings: PromotionSettings, *, registry: Callable[[], Registry], score: Scorer
    ) -> None:
        self.settings = settings
        self._registry = registry
        self._score = score

    def __call__(self, candidate: Candidate) -> Decision:
        """Decide, move the alias if promoted, and record the decision on the run and on
        the new version. Raises what MLflow raises (the exporter retries)."""
        registry = self._registry()
        alias = self.settings.alias
        holder = registry.alias_holder(candidate.name, alias)
        champion = None
        if holder is not None:
            champion = (
                Champion(version=holder.version)
                if holder.version == candidate.version
                else self._champion(registry, holder)
            )
        decision = decide(
            self.settings, version=candidate.version, score=candidate.score, champion=champion
        )
        if decision.promoted and decision.reason != "AlreadyChampion":
            registry.set_alias(candidate.name, alias, candidate.version)
        self._record(registry, candidate, decision)
        log.info("promotion %s: %s", decision.outcome, decision.message)
        return decision

    def _champion(self, registry: Registry, holder: AliasHolder) -> Champion:
        if holder.run_id is None or holder.round is None:
            problem = (
                "it was not registered by a Flotilla job (no flotilla.run_id and "
                "flotilla.round tags), so it has no weights the gate may read"
            )
            return Champion(version=holder.version, problem=problem)
        with tempfile.TemporaryDirectory(prefix="flotilla-champion-") as folder:
            path = registry.download_weights(holder.run_id, holder.round, Path(folder))
            if path is None:
                problem = (
                    f"run {holder.run_id} holds no weights/{weights_file(holder.round)}: it "
                    "was registered before Flotilla logged them"
                )
                return Champion(version=holder.version, problem=problem)
            try:
                score = self._score(read_weights(path))
            except ValueError as error:
                return Champion(version=holder.version, problem=str(error))
        return Champion(version=holder.version, score=score)

    def _record(self, registry: Registry, candidate: Candidate, decision: Decision) -> None:
        step, stamp = candidate.round, candidate.timestamp_ms
        metrics = [
            Metric(key=key, value=value, step=step, timestamp_ms=stamp)
            for key, value in run_metrics(decision).items()
        ]
        registry.log_metrics(candidate.run_id, metrics)
        registry.set_tags(candidate.run_id, run_tags(decision))
        registry.set_version_tag(
            candidate.name, candidate.version, "flotilla.promotion", decision.outcome
        )
