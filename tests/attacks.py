"""Byzantine clients for the tests of the robust strategies: the three classic updates of
the robust-aggregation literature (Blanchard et al. 2017, Yin et al. 2018).

Each attack rewrites a client's honest delta, in place, right before it is encoded: the
product client's update hook (`FederatedClient(update_hook=...)`) is where it plugs in
(tests/poisoned_client.py starts such a client as a process).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from flotilla.fl.client.loop import UpdateHook

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


def attack_hook(attack: str, *, seed: int) -> UpdateHook:
    """The update hook that sends `attack` instead of the client's own update, every round
    (`random`: the same noise each round, drawn from `seed`)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")

    def hook(delta: Mapping[str, torch.Tensor]) -> None:
        poison_delta(delta, attack, seed=seed)

    return hook
