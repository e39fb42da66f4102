"""Client-level differential privacy (DP-FedAvg): how updates are clipped and noised.

McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models": each
sampled client's delta is clipped to ``clipNorm``, the clipped deltas are averaged with
uniform weights over the clients sampled, and Gaussian noise of standard deviation
``noiseMultiplier * clipNorm / sampled`` is added. The privacy spent (epsilon at
``delta``) is accounted per round by Opacus' RDP accountant.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from flotilla.api.base import ApiModel
from flotilla.api.errors import FieldProblem, raise_problems


class PrivacySpec(ApiModel):
    clip_norm: float = Field(gt=0)
    noise_multiplier: float = Field(ge=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    # Unset: the rounds run to the end and epsilon is only reported.
    target_epsilon: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _target_needs_noise(self) -> PrivacySpec:
        if self.target_epsilon is not None and self.noise_multiplier == 0:
            message = "needs noiseMultiplier > 0: without noise epsilon is unbounded"
            raise_problems([FieldProblem(("targetEpsilon",), message, self.target_epsilon)])
        return self
