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
    # The noise's std is noiseMultiplier * clipNorm / sampled: with both at their maximum it
    # is 1e8, far inside float32 (torch.normal_ with 1e20 * 1e20 fills the model with inf).
    # A clipped delta's squared norm, 1e12, is float32 too. Practical values: 0.1..10 and 0.5..5.
    clip_norm: float = Field(gt=0, le=1e6)
    noise_multiplier: float = Field(ge=0, le=100)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    # Unset: the rounds run to the end and epsilon is only reported. Past ~100 epsilon
    # guarantees nothing; 1e6 only keeps the number finite and comparable.
    target_epsilon: float | None = Field(default=None, gt=0, le=1e6)

    @model_validator(mode="after")
    def _target_needs_noise(self) -> PrivacySpec:
        if self.target_epsilon is not None and self.noise_multiplier == 0:
            message = "needs noiseMultiplier > 0: without noise epsilon is unbounded"
            raise_problems([FieldProblem(("targetEpsilon",), message, self.target_epsilon)])
        return self
