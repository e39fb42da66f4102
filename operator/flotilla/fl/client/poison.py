"""A misbehaving client, for tests of the robust strategies only (hidden flag `--poison`).

Each attack rewrites the client's honest delta, in place, right before it is encoded:
the three classic Byzantine updates of the robust-aggregation literature (Blanchard et
al. 2017, Yin et al. 2018). Nothing in a real deployment sets this.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

ATTACKS = ("scale", "signflip", "random")
SCALE = -10.0  # "scale": a boosted update pointing the wrong way
RANDOM_STD = 10.0  # "random": Gaussian noise, no relation to the data


def poison_delta(delta: Mapping[str, torch.Tensor], attack: str, *, seed: int) -> None:
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in delta.values():
            if not tensor.is_floating_point():
                continue  # e.g. batch-norm step counters
            if attack == "scale":
                tensor.mul_(SCALE)
            elif attack == "signflip":
                tensor.neg_()
            else:
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                tensor.copy_(noise.mul_(RANDOM_STD))
