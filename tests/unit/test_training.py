"""The local training loop on real digits: it learns, repeats, obeys FedProx and its budget."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from torch import nn

from flotilla.ml.models import build_model
from flotilla.ml.training import (
    STEP_IN_BACKWARD_PARAMETERS,
    TrainingConfig,
    configure_threads,
    evaluate,
    local_optimizer,
    select_device,
    train_local,
)

CPU = torch.device("cpu")
Digits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
CONFIG = TrainingConfig(
    local_epochs=3, batch_size=16, optimizer="sgd", learning_rate=0.05, momentum=0.9
)


@pytest.fixture(scope="module")
def digits() -> Digits:
    """scikit-learn's 1797 digits as [N, 1, 8, 8] in [0, 1]: 1400 to train, the rest held out."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return images[train], labels[train], images[test], labels[test]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # As on an edge node; and torch's thread count is process-wide, so put it back.
    before = torch.get_num_threads()
    configure_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name: str = "cnn-small", seed: int = 0) -> nn.Module:
    return build_model(name=name, entrypoint=None, num_classes=10, input_shape=(1, 8, 8), seed=seed)


def _distance(model: nn.Module, anchor: dict[str, torch.Tensor]) -> float:
    squared = sum(float(((p.detach() - anchor[n]) ** 2).sum()) for n, p in model.named_parameters())
    return math.sqrt(squared)


@pytest.mark.parametrize(("name", "optimizer"), [("cnn-small", "sgd"), ("mlp", "adam")])
def test_local_training_learns_digits(digits: Digits, name: str, optimizer: str) -> None:
    train_x, train_y, test_x, test_y = digits
    model = _model(name)
    config = replace(
        CONFIG, optimizer=optimizer, learning_rate=0.05 if optimizer == "sgd" else 1e-3
    )

    result = train_local(model, train_x, train_y, config=config, seed=0, device=CPU)
    held_out = evaluate(model, test_x, test_y, batch_size=256, device=CPU)

    assert held_out.accuracy > 0.9 and held_out.examples == len(test_y)
    assert result.examples == 1400 and result.epochs == 3 and result.steps == 3 * 88
    assert result.accuracy > 0.9 and 0 < result.loss < 0.5
    assert result.seconds < 10


def test_training_repeats_for_a_seed_and_differs_between_seeds(digits: Digits) -> None:
    train_x, train_y, _, _ = digits
    config = replace(CONFIG, local_epochs=1, optimizer="adamw", learning_rate=1e-3)
    models = [_model(), _model(), _model()]

    for model, seed in zip(models, (5, 5, 6), strict=True):
        train_local(model, train_x[:200], train_y[:200], config=config, seed=seed, device=CPU)

    a, b, c = (list(m.state_dict().values()) for m in models)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_fedprox_keeps_weights_near_the_global_model(digits: Digits) -> None:
    train_x, train_y, _, _ = digits
    anchor = {k: v.clone() for k, v in _model().state_dict().items()}
    plain, prox = _model(), _model()

    train_local(plain, train_x[:300], train_y[:300], config=CONFIG, seed=1, device=CPU)
    train_local(
        prox,
        train_x[:300],
        train_y[:300],
        config=replace(CONFIG, proximal_mu=10.0),
        seed=1,
        device=CPU,
        global_weights=anchor,
    )

    assert _distance(prox, anchor) < 0.5 * _distance(plain, anchor)


def test_fedprox_anchors_on_a_copy_of_the_global_weights(digits: Digits) -> None:
    train_x, train_y, _, _ = digits
    plain, prox = _model(), _model()
    # Views of the model's own parameters: were they not copied, the anchor would move with
    # the weights, the penalty would stay 0, and FedProx would train exactly like plain SGD.
    views = {k: v.detach() for k, v in prox.named_parameters()}
    config = replace(CONFIG, local_epochs=1)

    train_local(plain, train_x[:64], train_y[:64], config=config, seed=0, device=CPU)
    train_local(
        prox,
        train_x[:64],
        train_y[:64],
        config=replace(config, proximal_mu=1.0),
        seed=0,
        device=CPU,
        global_weights=views,
    )

    assert _distance(prox, plain.state_dict()) > 0


def test_fedprox_needs_all_the_global_weights(digits: Digits) -> None:
    train_x, train_y, _, _ = digits
    config = replace(CONFIG, proximal_mu=0.1)
    with pytest.raises(ValueError, match="global weights"):
        train_local(_model(), train_x, train_y, config=config, seed=0, device=CPU)
    with pytest.raises(ValueError, match=r"lack parameters \['0.weight'"):
        train_local(
            _model(), train_x, train_y, config=config, seed=0, device=CPU, global_weights={}
        )


def test_the_time_budget_stops_training_within_an_epoch(digits: Digits) -> None:
    train_x, train_y, _, _ = digits
    config = replace(CONFIG, local_epochs=50, max_seconds=0.05)

    result = train_local(_model(), train_x, train_y, config=config, seed=0, device=CPU)

    assert 0 < result.epochs < 50 and result.steps >= 1
    assert result.epochs != int(result.epochs) or result.steps % 88 == 0
    assert math.isfinite(result.loss) and result.seconds < 1


def test_a_tiny_budget_still_takes_one_step(digits: Digits) -> None:
    train_x, train_y, _, _ = digits
    config = replace(CONFIG, max_seconds=1e-9)

    result = train_local(_model(), train_x, train_y, config=config, seed=0, device=CPU)

    assert result.steps == 1 and result.epochs == pytest.approx(16 / 1400)


def test_evaluating_nothing_gives_nan_and_zero_examples() -> None:
    empty = torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64)

    result = evaluate(_model(), *empty, batch_size=8, device=CPU)

    assert result.examples == 0 and math.isnan(result.loss) and math.isnan(result.accuracy)


def test_evaluate_leaves_the_model_in_eval_mode_and_untouched(digits: Digits) -> None:
    _, _, test_x, test_y = digits
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = evaluate(model, test_x, test_y, batch_size=100, device=CPU)

    assert not model.training and result.examples == len(test_y)
    assert _distance(model, before) == 0 and 0 <= result.accuracy <= 1


def test_training_refuses_no_data_and_mismatched_data() -> None:
    images = torch.zeros(4, 1, 8, 8)

    def train(labels: torch.Tensor) -> None:
        train_local(_model(), images[: len(labels)], labels, config=CONFIG, seed=0, device=CPU)

    with pytest.raises(ValueError, match="no training examples"):
        train(torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"labels \[N\], got \[4, 1, 8, 8\] and \[5\]"):
        train(torch.zeros(5, dtype=torch.int64))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("optimizer", "rmsprop", "optimizer 'rmsprop' is not one of sgd, adam, adamw"),
        ("local_epochs", 0, "local_epochs must be at least 1, not 0"),
        ("batch_size", 0, "batch_size must be at least 1, not 0"),
        ("learning_rate", 0.0, "learning_rate must be positive"),
        ("learning_rate", math.nan, "learning_rate must be positive"),
        ("max_seconds", 0.0, "max_seconds must be positive"),
        ("proximal_mu", -1.0, "proximal_mu must be at least 0"),
    ],
)
def test_a_bad_config_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(CONFIG, **{field: value})


def test_select_device() -> None:
    assert select_device("cpu") == CPU
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu' is not one of auto, cpu, cuda"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            select_device("cuda")


def test_configure_threads_none_keeps_the_setting() -> None:
    configure_threads(None)
    assert torch.get_num_threads() == 1
    configure_threads(0)  # clamped: zero threads would be an error in torch
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("optimizer", "momentum"), [("sgd", 0.9), ("adam", 0.0), ("adamw", 0.0)])
def test_stepping_in_backward_is_the_same_arithmetic_without_kept_gradients(
    digits: Digits, optimizer: str, momentum: float
) -> None:
    images, labels, _, _ = digits
    config = replace(CONFIG, optimizer=optimizer, momentum=momentum, weight_decay=1e-4)
    whole, stepped = _model(), _model()
    with local_optimizer(whole, config, in_backward=False) as plain:
        _steps(whole, plain, images, labels)
    with local_optimizer(stepped, config, in_backward=True) as in_backward:
        _steps(stepped, in_backward, images, labels)

    assert all(p.grad is not None for p in whole.parameters())  # kept until the next step
    assert all(p.grad is None for p in stepped.parameters())  # dropped as each was applied
    for a, b in zip(whole.parameters(), stepped.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not any(p._post_accumulate_grad_hooks for p in stepped.parameters())  # hooks removed


def test_large_models_step_in_backward_by_default() -> None:
    small, large = nn.Linear(10, 10), nn.Linear(1000, STEP_IN_BACKWARD_PARAMETERS // 1000)
    with local_optimizer(small, CONFIG) as plain, local_optimizer(large, CONFIG) as in_backward:
        assert isinstance(plain, torch.optim.Optimizer)
        assert not isinstance(in_backward, torch.optim.Optimizer)


def _steps(model: nn.Module, optimizer, images: torch.Tensor, labels: torch.Tensor) -> None:
    for start in range(0, 96, 32):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(
            model(images[start : start + 32]), labels[start : start + 32]
        )
        loss.backward()
        optimizer.step()
