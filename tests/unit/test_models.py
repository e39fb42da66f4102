"""Built-in models and user entrypoints: shapes, seeded weights, and every ModelError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from flotilla.ml.models import BUILTIN_TASKS, ModelError, build_model

Shape = tuple[int, int, int]


CLASSIFIERS = sorted(n for n, task in BUILTIN_TASKS.items() if task == "classification")


def _builtin(name: str = "cnn-small", *, seed: int = 0, shape: Shape = (1, 8, 8)) -> nn.Module:
    task = BUILTIN_TASKS.get(name, "classification")
    return build_model(
        name=name, entrypoint=None, num_classes=10, input_shape=shape, seed=seed, task=task
    )


def _user(entrypoint: str, *, num_classes: int = 10) -> nn.Module:
    return build_model(
        name=None, entrypoint=entrypoint, num_classes=num_classes, input_shape=(1, 8, 8), seed=0
    )


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return list(model.state_dict().values())


USER_MODULE = """
from torch import nn

def linear(*, num_classes, input_shape):
    channels, height, width = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))

def with_batchnorm(*, num_classes, input_shape):
    return nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(64, num_classes))

def not_a_model(*, num_classes, input_shape):
    return 42

def wrong_output(*, num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

def wrong_input(*, num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.Linear(5, num_classes))

class TupleOut(nn.Module):
    def forward(self, x):
        return (x.flatten(1)[:, :10],)

def tuple_output(*, num_classes, input_shape):
    return TupleOut()

def raises(*, num_classes, input_shape):
    raise RuntimeError("out of ideas")

def no_keywords():
    return nn.Linear(1, 1)

NOT_CALLABLE = 1
"""


@pytest.fixture
def user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "flotilla_test_user_models.py").write_text(USER_MODULE)
    (tmp_path / "flotilla_test_broken_models.py").write_text("def broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "flotilla_test_user_models"


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 5, 7)])
def test_builtins_map_any_input_shape_to_the_classes(name: str, shape: Shape) -> None:
    model = _builtin(name, shape=shape)

    assert model(torch.zeros(4, *shape)).shape == (4, 10)


def test_cnn_small_is_small_and_has_no_batchnorm() -> None:
    model = _builtin("cnn-small")

    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_the_detector_outputs_a_centernet_head_and_refuses_a_classification_job() -> None:
    model = _builtin("centernet-tiny", shape=(3, 64, 64))

    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 10 + 4, 16, 16)
    with pytest.raises(ModelError, match="is a detection model; the job's task is classification"):
        build_model(
            name="centernet-tiny", entrypoint=None, num_classes=3, input_shape=(3, 64, 64), seed=0
        )


def test_a_user_model_with_the_wrong_head_for_detection_is_refused() -> None:
    with pytest.raises(ModelError, match=r"a detection model must output \[2, 14, 2, 2\]"):
        build_model(
            name=None,
            entrypoint="flotilla.ml.models:cnn_small",
            num_classes=10,
            input_shape=(1, 8, 8),
            seed=0,
            task="detection",
        )


@pytest.mark.parametrize("name", sorted(BUILTIN_TASKS))
def test_the_seed_decides_the_initial_weights(name: str) -> None:
    a, b, c = _builtin(name, seed=1), _builtin(name, seed=1), _builtin(name, seed=2)

    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))
    # Weight matrices, not biases: a detector's heatmap bias starts at its prior on purpose.
    pairs = zip(_weights(a), _weights(c), strict=True)
    assert not any(torch.equal(x, z) for x, z in pairs if x.dim() > 1)


def test_building_leaves_the_global_rng_alone() -> None:
    before = torch.random.get_rng_state()

    _builtin(seed=7)

    assert torch.equal(torch.random.get_rng_state(), before)


def test_an_entrypoint_builds_the_users_model(user_models: str) -> None:
    model = _user(f"{user_models}:linear")

    assert isinstance(model, nn.Module) and model.training
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_the_shape_check_does_not_touch_batchnorm_statistics(user_models: str) -> None:
    model = _user(f"{user_models}:with_batchnorm")

    assert int(model.state_dict()["0.num_batches_tracked"]) == 0
    assert model.training


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("not_a_model", "returned int, not a torch.nn.Module"),
        (
            "wrong_output",
            r"outputs shape \[2, 3\] for a batch of 2; "
            r"a classification model must output \[2, 10\]",
        ),
        ("wrong_input", r"does not accept inputs of shape \[1, 8, 8\]"),
        ("tuple_output", "returns tuple, not a tensor of logits"),
        ("raises", "failed to build: out of ideas"),
        ("no_keywords", "failed to build: .*unexpected keyword"),
        ("NOT_CALLABLE", "is not callable: it is int"),
        ("missing", "has no 'missing'"),
    ],
)
def test_a_bad_entrypoint_is_a_model_error_naming_it(
    user_models: str, attribute: str, message: str
) -> None:
    entrypoint = f"{user_models}:{attribute}"

    with pytest.raises(ModelError, match=message) as caught:
        _user(entrypoint)

    assert repr(entrypoint) in str(caught.value)


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("flotilla_no_such_module:build", "cannot import 'flotilla_no_such_module'"),
        ("flotilla_test_broken_models:build", "cannot import .*SyntaxError"),
        ("no_colon_here", "must look like 'package.module:function'"),
        (":build", "must look like"),
        ("module:", "must look like"),
    ],
)
def test_an_entrypoint_that_cannot_be_imported_is_a_model_error(
    user_models: str, entrypoint: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        _user(entrypoint)


def test_an_unknown_name_lists_the_builtins() -> None:
    builtins = r"built-ins are \['centernet-tiny', 'cnn-small'"
    with pytest.raises(ModelError, match=r"unknown model 'resnet'; " + builtins):
        _builtin("resnet")


@pytest.mark.parametrize(
    ("name", "entrypoint"), [(None, None), ("cnn-small", "flotilla_test_user_models:linear")]
)
def test_exactly_one_of_name_and_entrypoint(name: str | None, entrypoint: str | None) -> None:
    with pytest.raises(ModelError, match="exactly one"):
        build_model(name=name, entrypoint=entrypoint, num_classes=10, input_shape=(1, 8, 8), seed=0)


def test_zero_classes_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"num_classes \(0\)"):
        build_model(name="mlp", entrypoint=None, num_classes=0, input_shape=(1, 8, 8), seed=0)
