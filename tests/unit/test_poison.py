"""The Byzantine attacks of the robust-strategy tests: each rewrites the delta in place."""

from __future__ import annotations

import pytest
import torch

from tests.attacks import RANDOM_STD, attack_hook, poison_delta


def _delta() -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([1.0, -2.0]), "steps": torch.tensor([3])}


@pytest.mark.parametrize(
    ("attack", "expected"), [("scale", [-10.0, 20.0]), ("signflip", [-1.0, 2.0])]
)
def test_scale_and_signflip(attack: str, expected: list[float]) -> None:
    delta = _delta()
    poison_delta(delta, attack, seed=0)
    assert delta["w"].tolist() == expected
    assert delta["steps"].tolist() == [3]  # integer buffers are left alone


def test_random_replaces_the_delta_with_large_noise() -> None:
    delta = {"w": torch.zeros(100_000)}
    poison_delta(delta, "random", seed=1)
    assert float(delta["w"].std()) == pytest.approx(RANDOM_STD, rel=0.05)


def test_an_unknown_attack_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown attack"):
        poison_delta(_delta(), "gentle", seed=0)


def test_the_hook_poisons_every_update_it_is_given() -> None:
    hook = attack_hook("signflip", seed=0)
    delta = _delta()
    hook(delta)
    assert delta["w"].tolist() == [-1.0, 2.0]
    with pytest.raises(ValueError, match="unknown attack"):
        attack_hook("gentle", seed=0)
