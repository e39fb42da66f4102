"""The aggregator's side of the promotion gate: the champion scored like the new version.

The same evaluator, on the same test split (``spec.evaluation.testData``), that scored
every round scores the champion's logged weights: the comparison is like for like. Weights
trained on other labels, for another task or of another architecture are not scored (their
outputs mean something else); the gate then keeps the alias and says why (promotion.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.evaluation import Evaluator
from flotilla.fl.aggregator.warm_fit import WeightsMismatch, fit_weights
from flotilla.fl.learning import SCORE_OF_TASK
from flotilla.tracking.champion import Scorer
from flotilla.tracking.promotion import PromotionSettings
from flotilla.tracking.weights import LoggedWeights


def promotion_settings(job: FederatedJob) -> PromotionSettings | None:
    promotion = job.spec.tracking.promotion
    if promotion is None:
        return None
    return PromotionSettings(
        alias=promotion.alias,
        metric=promotion.metric or SCORE_OF_TASK[job.spec.task],
        min_improvement=promotion.min_improvement,
    )


def champion_scorer(
    job: FederatedJob,
    *,
    evaluator: Evaluator,
    shapes: Callable[[], Mapping[str, torch.Tensor]],
    metric: str,
) -> Scorer:
    """Scores a champion's weights with `evaluator`; `shapes()`: the model's own tensors (only
    their names, shapes and dtypes are read). ValueError: they cannot be compared."""
    spec = job.spec

    def score(logged: LoggedWeights) -> float:
        if logged.task is not None and logged.task != spec.task:
            raise ValueError(f"it is a {logged.task} model and spec.task is {spec.task}")
        if logged.labels != list(spec.labels):
            raise ValueError(
                f"it was trained on labels {logged.labels} and this job on spec.labels "
                f"{list(spec.labels)}: their outputs do not compare"
            )
        try:
            fitted = fit_weights(
                logged.tensors, parent_labels=logged.labels, initial=shapes(), labels=spec.labels
            )
        except WeightsMismatch as error:
            raise ValueError(f"its weights do not fit this job's model: {error}") from None
        value = evaluator.evaluate(fitted.tensors).get(metric)
        if value is None:
            raise ValueError(f"the test data gives no {metric} for it")
        return float(value)

    return score
