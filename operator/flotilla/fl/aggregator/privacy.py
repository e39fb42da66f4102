"""The job's differential privacy: clip while folding, noise the mean, account the budget.

Epsilon is accounted by Opacus' RDP accountant, one step per aggregated round with
sampling rate ``clients sampled / clients known``. The accountant's history is no
state of its own: every round record keeps the noise multiplier and sampling rate it
was played with, so a resumed aggregator replays them from the checkpointed history.
Rounds that were retried or failed released nothing and cost nothing.

The noise comes from the operating system's randomness, never from the job's seed:
noise that anyone could regenerate from the spec could be subtracted again.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from flotilla.api import PrivacySpec
from flotilla.fl.strategies.base import MutableTensorMap
from flotilla.fl.strategies.privacy import clip_scales, privatize_mean

log = logging.getLogger(__name__)


class DifferentialPrivacy:
    def __init__(self, spec: PrivacySpec, *, clients: int) -> None:
        # Imported here: Opacus takes seconds to import and only private jobs need it.
        try:
            from opacus.accountants import RDPAccountant
        except ImportError:
            raise RuntimeError(
                "spec.privacy needs Opacus on the aggregator: pip install 'flotilla[tracking]'"
            ) from None

        self.spec = spec
        self.clients = clients
        self._accountant_type = RDPAccountant
        self._accountant = RDPAccountant()
        self._generator = torch.Generator().manual_seed(secrets.randbits(63))
        self.epsilon: float | None = 0.0

    def clipped_scales(
        self, scales: Mapping[str, float], names: Iterable[str], *, norm: float
    ) -> dict[str, float]:
        return clip_scales(scales, names, norm=norm, clip_norm=self.spec.clip_norm)

    def privatize(self, mean: MutableTensorMap, *, answered: int, sampled: int) -> None:
        """Noise the round's uniform mean (see strategies/privacy.py), in place."""
        std = self.spec.noise_multiplier * self.spec.clip_norm / sampled
        privatize_mean(
            mean, answered=answered, sampled=sampled, noise_std=std, generator=self._generator
        )

    def sample_rate(self, sampled: int) -> float:
        return min(sampled / self.clients, 1.0)

    def spend(self, *, sampled: int) -> dict[str, Any]:
        """Account one released round; returns its record's `privacy` entry."""
        rate = self.sample_rate(sampled)
        self._accountant.step(noise_multiplier=self.spec.noise_multiplier, sample_rate=rate)
        self.epsilon = self._epsilon_of(self._accountant)
        return {
            "epsilon": self.epsilon,
            "delta": self.spec.delta,
            "noiseMultiplier": self.spec.noise_multiplier,
            "sampleRate": rate,
        }

    def epsilon_after_next(self, *, sampled: int) -> float | None:
        """Epsilon once one more round with `sampled` clients is released (None: unbounded)."""
        preview = self._accountant_type()
        preview.history = list(self._accountant.history)
        preview.step(
            noise_multiplier=self.spec.noise_multiplier, sample_rate=self.sample_rate(sampled)
        )
        return self._epsilon_of(preview)

    def stop_reason(self, *, completed: int, rounds: int, sampled: int) -> str | None:
        """Why the job stops before round `completed + 1`: with `sampled` clients (the most
        it can sample: the preview never underestimates) it would pass targetEpsilon."""
        target = self.spec.target_epsilon
        if target is None:
            return None
        after = self.epsilon_after_next(sampled=sampled)
        if after is not None and after <= target:
            return None
        message = (
            f"stopped after {completed} of {rounds} rounds: round {completed + 1} would "
            f"spend epsilon {after:.3g} > targetEpsilon {target:g} (delta {self.spec.delta:g})"
        )
        log.warning("privacy budget: %s", message)
        return message

    def restore(self, history: Iterable[Mapping[str, Any]]) -> None:
        """Replay the accountant from the rounds already released (a resumed job)."""
        self._accountant = self._accountant_type()
        for row in history:
            spent = row.get("privacy")
            if spent:
                self._accountant.step(
                    noise_multiplier=float(spent["noiseMultiplier"]),
                    sample_rate=float(spent["sampleRate"]),
                )
        self.epsilon = self._epsilon_of(self._accountant) if self._accountant.history else 0.0

    def status(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.spec.delta,
            "targetEpsilon": self.spec.target_epsilon,
            "clipNorm": self.spec.clip_norm,
            "noiseMultiplier": self.spec.noise_multiplier,
        }

    def _epsilon_of(self, accountant: Any) -> float | None:
        if self.spec.noise_multiplier == 0:
            return None  # clipping alone: no privacy guarantee (JSON has no infinity)
        epsilon = float(accountant.get_epsilon(delta=self.spec.delta))
        return epsilon if math.isfinite(epsilon) else None
