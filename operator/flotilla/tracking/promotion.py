"""The promotion gate's decision: does the new version take the champion's alias? Pure.

Both scores come from one evaluator on one test split (the aggregator's
``spec.evaluation.testData``), the champion's from the safetensors weights its job logged
beside it: like for like. The rules, in order:

- no version holds the alias: the new version is the first champion (``FirstModel``);
- the alias already points at the new version (a retry after the alias moved):
  ``AlreadyChampion``;
- the champion cannot be scored (no weights logged, other labels, another task):
  the alias stays (``ChampionUnreadable``): promoting unseen would break the gate's one
  promise, that the alias only moves to a version shown better on the same data;
- the new version has no score: the alias stays (``NoScore``);
- better by at least ``minImprovement`` (and better at all): promoted (``Better``),
  else kept (``NotBetter``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

# Scores are means over a test split: a difference below this is float rounding, not a margin.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class PromotionSettings:
    alias: str
    metric: str  # accuracy or map50: higher is better
    min_improvement: float


@dataclass(frozen=True)
class Champion:
    """The version the alias points at, scored; `problem` says why it could not be."""

    version: str
    score: float | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Decision:
    outcome: Literal["promoted", "kept"]
    reason: str  # CamelCase, as a condition's reason
    message: str  # for humans: both figures and why
    alias: str
    metric: str
    min_improvement: float
    version: str  # the new version
    score: float | None  # the new version's score
    champion_version: str | None = None
    champion_score: float | None = None

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"

    def to_json(self) -> dict[str, Any]:
        """camelCase, as the rest of /v1/status."""
        return {_camel(key): value for key, value in asdict(self).items()}


def decide(
    settings: PromotionSettings, *, version: str, score: float | None, champion: Champion | None
) -> Decision:
    """Whether `version`, scoring `score`, takes the alias from `champion` (None: no version
    holds the alias)."""
    if score is not None and not math.isfinite(score):
        score = None
    made = _Made(settings, version, score, champion)
    alias, metric = settings.alias, settings.metric
    if champion is None:
        return made.promoted("FirstModel", f"no version held {alias!r}: {_new(made)} is the first")
    if champion.version == version:
        return made.promoted("AlreadyChampion", f"{alias!r} already points at version {version}")
    held = f"version {champion.version}"
    if champion.problem is not None or champion.score is None:
        why = champion.problem or f"its {metric} is unknown"
        return made.kept(
            "ChampionUnreadable",
            f"{alias!r} stays on {held}: it cannot be scored ({why}); {_new(made)} is not "
            f"promoted unseen. Compare them yourself and move {alias!r}, or delete the alias "
            "so that the next job's version becomes the first champion",
        )
    if score is None:
        return made.kept(
            "NoScore", f"{alias!r} stays on {held}: version {version} has no {metric} to compare"
        )
    gain = score - champion.score
    figures = f"{metric} {score:.4f} against {champion.score:.4f} for {held}"
    if gain > 0 and gain >= settings.min_improvement - _ROUNDING:
        return made.promoted("Better", f"{alias!r} moves to version {version}: {figures}")
    margin = f" (needs +{settings.min_improvement:g})" if settings.min_improvement > 0 else ""
    return made.kept(
        "NotBetter", f"{alias!r} stays on {held}: version {version} has {figures}{margin}"
    )


@dataclass(frozen=True)
class _Made:
    settings: PromotionSettings
    version: str
    score: float | None
    champion: Champion | None

    def promoted(self, reason: str, message: str) -> Decision:
        return self._decision("promoted", reason, message)

    def kept(self, reason: str, message: str) -> Decision:
        return self._decision("kept", reason, message)

    def _decision(self, outcome: Literal["promoted", "kept"], reason: str, text: str) -> Decision:
        champion = self.champion
        return Decision(
            outcome=outcome,
            reason=reason,
            message=text,
            alias=self.settings.alias,
            metric=self.settings.metric,
            min_improvement=self.settings.min_improvement,
            version=self.version,
            score=self.score,
            champion_version=champion.version if champion else None,
            champion_score=champion.score if champion else None,
        )


def _new(made: _Made) -> str:
    score = "" if made.score is None else f" ({made.settings.metric} {made.score:.4f})"
    return f"version {made.version}{score}"


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def run_tags(decision: Decision) -> dict[str, str]:
    """What the job's MLflow run says of the gate."""
    tags = {
        "flotilla.promotion": decision.outcome,
        "flotilla.promotion.reason": decision.reason,
        "flotilla.promotion.message": decision.message,
        "flotilla.promotion.alias": decision.alias,
        "flotilla.promotion.metric": decision.metric,
    }
    if decision.champion_version is not None:
        tags["flotilla.promotion.champion_version"] = decision.champion_version
    return tags


def run_metrics(decision: Decision) -> dict[str, float]:
    """The two figures compared, as metrics of the run (absent when not measured)."""
    values = {
        f"promotion.candidate.{decision.metric}": decision.score,
        f"promotion.champion.{decision.metric}": decision.champion_score,
        "promotion.min_improvement": decision.min_improvement,
    }
    return {key: value for key, value in values.items() if value is not None}
