"""Local work in one shape whatever the task: loss, examples and named scores."""

from __future__ import annotations

import math

import pytest
import torch

from flotilla.data import DetectionImages, LabelledImages
from flotilla.fl.learning import SCORE_OF_TASK, learning_for
from flotilla.ml.models import build_model
from flotilla.ml.training import TrainingConfig

CONFIG = TrainingConfig(local_epochs=1, batch_size=8, optimizer="adam", learning_rate=0.01)
CPU = torch.device("cpu")


def _classes() -> LabelledImages:
    images = torch.rand(24, 1, 8, 8)
    return LabelledImages(images, torch.arange(24) % 3, (None,) * 24)


def _boxes() -> DetectionImages:
    images = torch.zeros(6, 3, 32, 32)
    boxes = tuple(torch.tensor([[4.0 + i, 4.0, 20.0 + i, 18.0]]) for i in range(6))
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = box[0].int().tolist()
        images[i, :, y0:y1, x0:x1] = 1.0
    labels = tuple(torch.tensor([i % 2]) for i in range(6))
    return DetectionImages(images, boxes, labels, (None,) * 6)


def test_classification_reports_accuracy_while_training_and_on_the_hold_out() -> None:
    model = build_model(
        name="cnn-small", entrypoint=None, num_classes=3, input_shape=(1, 8, 8), seed=0
    )
    learning = learning_for("classification", num_classes=3)

    trained = learning.train(
        model, _classes(), config=CONFIG, seed=1, device=CPU, global_weights=None
    )
    evaluated = learning.evaluate(model, _classes(), batch_size=8, device=CPU)

    assert learning.score == SCORE_OF_TASK["classification"] == "accuracy"
    assert trained.examples == 24 and trained.steps == 3 and set(trained.scores) == {"accuracy"}
    assert evaluated.examples == 24 and 0 <= evaluated.scores["accuracy"] <= 1
    assert all(p.grad is None for p in model.parameters())  # no idle gradients between rounds


def test_detection_reports_map50_on_the_hold_out_and_nothing_on_an_empty_one() -> None:
    model = build_model(
        name="centernet-tiny",
        entrypoint=None,
        num_classes=2,
        input_shape=(3, 32, 32),
        seed=0,
        task="detection",
    )
    learning = learning_for("detection", num_classes=2)

    trained = learning.train(
        model, _boxes(), config=CONFIG, seed=1, device=CPU, global_weights=None
    )
    evaluated = learning.evaluate(model, _boxes(), batch_size=4, device=CPU)
    empty = learning.evaluate(model, _boxes().select([]), batch_size=4, device=CPU)

    assert learning.score == "map50"
    assert trained.examples == 6 and trained.scores == {} and math.isfinite(trained.loss)
    assert all(p.grad is None for p in model.parameters())
    assert evaluated.examples == 6 and 0 <= evaluated.scores["map50"] <= 1
    assert empty.examples == 0 and math.isnan(empty.scores["map50"])


def test_samples_of_the_other_task_are_refused() -> None:
    model = build_model(
        name="cnn-small", entrypoint=None, num_classes=3, input_shape=(1, 8, 8), seed=0
    )

    with pytest.raises(TypeError, match="expected DetectionImages"):
        learning_for("detection", num_classes=3).evaluate(
            model, _classes(), batch_size=8, device=CPU
        )
