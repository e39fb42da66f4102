"""DP-FedAvg's maths around the streaming mean: clip each delta as it is folded, then noise.

Clipping is a scale: tensor ``name`` of a delta is worth ``delta[name] * scales[name]``
(see base.py), so clipping the whole delta to L2 norm ``clip_norm`` multiplies every
scale by ``min(1, clip_norm / norm)``. The weighted mean folds it with that factor,
straight from the receive buffer: no copy of the delta, clipped or not.

The mean is taken with uniform weights (each client weight 1, never its example count,
which would let one client's claim scale its influence past ``clip_norm``) and a fixed
denominator, the number of clients *sampled* rather than those who answered: then one
client changes the average by at most ``clip_norm / sampled``, the sensitivity that the
Gaussian noise ``N(0, (noise_multiplier * clip_norm / sampled)^2)`` is calibrated to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from flotilla.fl.strategies.base import MutableTensorMap


def clip_scales(
    scales: Mapping[str, float], names: Iterable[str], *, norm: float, clip_norm: float
) -> dict[str, float]:
    """The scales that make a delta of L2 norm `norm` count with norm at most `clip_norm`."""
    factor = clip_norm / norm if norm > clip_norm else 1.0
    return {name: scales.get(name, 1.0) * factor for name in names}


def privatize_mean(
    mean: MutableTensorMap,
    *,
    answered: int,
    sampled: int,
    noise_std: float,
    generator: torch.Generator,
) -> None:
    """Turn the uniform mean over `answered` clients into the noised sum over `sampled`.

    In place: `mean` holds sum / answered on entry and sum / sampled + N(0, noise_std^2)
    per coordinate on return.
    """
    if not 0 < answered <= sampled:
        raise ValueError(f"answered must be in 1..sampled ({sampled}), got {answered}")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
    for tensor in mean.values():
        tensor.mul_(answered / sampled)
        if noise_std > 0:
            noise = torch.randn(
                tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device
            )
            tensor.add_(noise, alpha=noise_std)
