"""Built-in and user models; the local training loop on real digits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flotilla.ml.models import BUILTIN_MODELS, ModelError, build_model
from flotilla.ml.training import TrainingConfig, evaluate, select_device, train_local

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return images[train], labels[train], images[test], labels[test]


def _build(name: str = "cnn-small", seed: int = 0, shape: tuple[int, int, int] = (1, 8, 8)):
    return build_model(name=name, entrypoint=None, num_classes=10, input_shape=shape, seed=seed)


def _config(**overrides: float) -> TrainingConfig:
    values = {
        "local_epochs": 3,
        "batch_size": 16,
        "optimizer": "sgd",
        "learning_rate": 0.05,
        "momentum": 0.9,
    } | overrides
    return TrainingConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_builtins_build_for_any_input_shape(name: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, shape=shape)

    assert model(torch.zeros(4, *shape)).shape == (4, 10)


def test_the_seed_decides_the_initial_weights_without_touching_global_rng() -> None:
    before = torch.random.get_rng_state()

    a, b, c = _build(seed=1), _build(seed=1), _build(seed=2)

    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, x), y, _z in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name
    assert not all(
        torch.equal(x, z)
        for x, z in zip(a.state_dict().values(), c.state_dict().values(), strict=True)
    )


def test_an_entrypoint_builds_the_users_model(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def linear(*, num_classes, input_shape):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
        "def not_a_model(*, num_classes, input_shape):\n"
        "    return 42\n"
        "def wrong_output(*, num_classes, input_shape):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n"
        "def wrong_input(*, num_classes, input_shape):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(5, num_classes))\n"
        "NOT_CALLABLE = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def build(entrypoint: str):
        return build_model(
            name=None, entrypoint=entrypoint, num_classes=10, input_shape=(1, 8, 8), seed=0
        )

    assert isinstance(build("my_models:linear"), torch.nn.Module)
    cases = {
        "my_models:not_a_model": "returned int, not a torch.nn.Module",
        "my_models:wrong_output": r"outputs shape \[2, 3\]",
        "my_models:wrong_input": "does not accept inputs of shape",
        "my_models:NOT_CALLABLE": "is not callable",
        "my_models:missing": "has no 'missing'",
        "nowhere_module:build": "cannot import 'nowhere_module'",
    }
    for entrypoint, message in cases.items():
        with pytest.raises(ModelError, match=message):
            build(entrypoint)


def test_names_must_be_known_and_exactly_one_given() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        _build("resnet")
    with pytest.raises(ModelError, match="exactly one"):
        build_model(name=None, entrypoint=None, num_classes=10, input_shape=(1, 8, 8), seed=0)


def test_local_training_learns_digits(digits) -> None:
    torch.set_num_threads(1)
    train_x, train_y, test_x, test_y = digits
    model = _build()

    result = train_local(
        model, train_x, train_y, config=_config(local_epochs=4), seed=0, device=CPU
    )
    held_out = evaluate(model, test_x, test_y, batch_size=256, device=CPU)

    assert result.examples == 1400 and result.epochs == 4
    assert held_out.accuracy > 0.9 and held_out.examples == len(test_y)


def test_training_is_deterministic_for_a_seed(digits) -> None:
    train_x, train_y, _, _ = digits
    a, b = _build(), _build()

    for model in (a, b):
        train_local(
            model, train_x[:200], train_y[:200], config=_config(local_epochs=1), seed=5, device=CPU
        )

    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def _distance(model: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> float:
    return math.sqrt(
        sum(float(((p - anchor[n]) ** 2).sum()) for n, p in model.state_dict().items())
    )


def test_fedprox_keeps_weights_near_the_global_model(digits) -> None:
    train_x, train_y, _, _ = digits
    anchor = {k: v.clone() for k, v in _build().state_dict().items()}
    plain, prox = _build(), _build()

    train_local(
        plain, train_x[:300], train_y[:300], config=_config(local_epochs=2), seed=1, device=CPU
    )
    train_local(
        prox,
        train_x[:300],
        train_y[:300],
        seed=1,
        device=CPU,
        config=_config(local_epochs=2, proximal_mu=10.0),
        global_weights=anchor,
    )

    assert _distance(prox, anchor) < 0.5 * _distance(plain, anchor)


def test_fedprox_without_global_weights_is_an_error(digits) -> None:
    train_x, train_y, _, _ = digits
    with pytest.raises(ValueError, match="global weights"):
        train_local(_build(), train_x, train_y, config=_config(proximal_mu=0.1), seed=0, device=CPU)


def test_the_time_budget_stops_training_early(digits) -> None:
    train_x, train_y, _, _ = digits

    result = train_local(
        _build(),
        train_x,
        train_y,
        seed=0,
        device=CPU,
        config=_config(local_epochs=50, max_seconds=0.05),
    )

    assert result.epochs < 50 and result.steps >= 1


def test_evaluating_nothing_gives_nan_and_zero_examples() -> None:
    result = evaluate(
        _build(),
        torch.zeros(0, 1, 8, 8),
        torch.zeros(0, dtype=torch.int64),
        batch_size=8,
        device=CPU,
    )

    assert result.examples == 0 and math.isnan(result.loss)


def test_bad_device_and_optimizer_are_refused(digits) -> None:
    train_x, train_y, _, _ = digits
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            select_device("cuda")
    assert select_device("cpu") == CPU
    with pytest.raises(ValueError, match="optimizer 'rmsprop'"):
        train_local(
            _build(),
            train_x[:10],
            train_y[:10],
            config=_config(optimizer="rmsprop"),
            seed=0,
            device=CPU,
        )
