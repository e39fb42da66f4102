"""The detector: IoU, AP and mAP@0.5 against hand-computed cases, targets and decoding,
and local training that raises mAP on the synthetic shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flotilla.api import CvatExportSource, DataSource
from flotilla.data import DetectionImages, ImageShape, load_site_data
from flotilla.data.shapes_example import SHAPES, write_shapes_example
from flotilla.ml.average_precision import average_precision, box_iou, mean_average_precision
from flotilla.ml.centernet import STRIDE, centernet_loss, decode, make_targets, tiny_centernet
from flotilla.ml.detection_training import evaluate_detection, train_detection
from flotilla.ml.training import TrainingConfig


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_box_iou_by_hand() -> None:
    a = t([[0, 0, 2, 2]])
    b = t([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]])

    # overlap 1, union 4 + 4 - 1 = 7; identical; disjoint; degenerate
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.0])


def test_average_precision_is_the_area_under_the_precision_envelope() -> None:
    # ranks: hit, miss, hit with 2 ground-truth boxes -> recall .5 .5 1, precision 1 .5 .667
    recall, precision = torch.tensor([0.5, 0.5, 1.0]), torch.tensor([1.0, 0.5, 2 / 3])

    assert average_precision(recall, precision) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_map_by_hand_two_images_two_classes() -> None:
    truths = [
        (t([[0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 1])),
        (t([[0, 0, 10, 10]]), torch.tensor([0])),
    ]
    predictions = [
        # class 0: a hit (0.9); a duplicate of the same box (0.8) is a false positive
        # class 1: a box off by IoU 25/175 < 0.5 (0.7): a miss
        (
            t([[0, 0, 10, 10], [0, 0, 10, 10], [25, 25, 35, 35]]),
            torch.tensor([0.9, 0.8, 0.7]),
            torch.tensor([0, 0, 1]),
        ),
        # class 0: a hit (0.6) on image 2
        (t([[1, 0, 10, 10]]), torch.tensor([0.6]), torch.tensor([0])),
    ]

    mean, per_class = mean_average_precision(predictions=predictions, truths=truths, num_classes=3)

    # class 0 ranks: hit, FP, hit of 2 boxes -> AP = .5 * 1 + .5 * 2/3; class 1: 0; class 2 has
    # no ground truth and is left out
    assert per_class == pytest.approx({0: 0.5 + 1 / 3, 1: 0.0})
    assert mean == pytest.approx((0.5 + 1 / 3) / 2)


def test_perfect_predictions_score_one_and_no_truth_scores_zero() -> None:
    boxes, labels = t([[0, 0, 8, 8], [8, 8, 16, 16]]), torch.tensor([1, 1])
    perfect = [(boxes, torch.tensor([0.9, 0.8]), labels)]

    assert (
        mean_average_precision(predictions=perfect, truths=[(boxes, labels)], num_classes=2)[0]
        == 1.0
    )
    empty = [(t([]), torch.zeros(0), torch.zeros(0, dtype=torch.long))]
    assert mean_average_precision(
        predictions=empty, truths=[(t([]), torch.zeros(0, dtype=torch.long))], num_classes=2
    ) == (0.0, {})
    with pytest.raises(ValueError, match="1 predictions for 2 images"):
        mean_average_precision(predictions=empty, truths=[(boxes, labels)] * 2, num_classes=2)


def test_decoding_the_targets_gives_back_the_boxes() -> None:
    boxes, labels = [t([[4, 8, 20, 16], [30, 30, 62, 50]])], [torch.tensor([2, 0])]
    targets = make_targets(boxes, labels, num_classes=3, size=(64, 64))
    # a perfect output: logits that are very sure where the heatmap is 1, sure not elsewhere
    logits = torch.where(targets.heatmap == 1, 10.0, -10.0)
    output = torch.cat([logits, targets.box], dim=1)

    found = decode(output, num_classes=3)[0]

    assert targets.heatmap.shape == (1, 3, 64 // STRIDE, 64 // STRIDE)
    assert sorted(found.labels.tolist()) == [0, 2]
    order = found.labels.argsort(descending=True)
    assert found.boxes[order].flatten().tolist() == pytest.approx(boxes[0].flatten().tolist())
    assert float(centernet_loss(output, targets)) < 0.01


def test_the_model_needs_sizes_that_fit_its_stride() -> None:
    model = tiny_centernet(num_classes=3, input_shape=(3, 64, 48))
    assert model(torch.zeros(2, 3, 64, 48)).shape == (2, 3 + 4, 16, 12)
    with pytest.raises(ValueError, match="multiple of 4, got 30x30"):
        tiny_centernet(num_classes=3, input_shape=(3, 30, 30))


def _shapes(root: Path, name: str) -> DetectionImages:
    source = DataSource(cvat_export=CvatExportSource(path=str(root / name)))
    data = load_site_data(
        site=name,
        source=source,
        task="detection",
        labels=list(SHAPES),
        shape=ImageShape(channels=3, height=64, width=64),
    )
    assert isinstance(data.samples, DetectionImages)
    return data.samples


def test_local_training_on_shapes_raises_map(tmp_path: Path) -> None:
    torch.manual_seed(0)
    example = write_shapes_example(
        tmp_path, sites=["a"], images_per_site=120, test_images=40, alpha=100.0
    )
    train, test = _shapes(tmp_path, "a"), _shapes(tmp_path, "test")
    model = tiny_centernet(num_classes=3, input_shape=(3, 64, 64))
    config = TrainingConfig(local_epochs=5, batch_size=16, optimizer="adam", learning_rate=3e-3)
    device = torch.device("cpu")

    def score() -> float:
        return evaluate_detection(
            model, test.images, test.boxes, test.labels, num_classes=3, batch_size=64, device=device
        ).map50

    before = score()
    result = train_detection(
        model,
        train.images,
        train.boxes,
        train.labels,
        num_classes=3,
        config=config,
        seed=0,
        device=device,
    )
    after = score()

    assert example.sites == {"a": 120} and min(example.boxes["test"]) > 0
    assert result.examples == 120 and result.epochs == 5
    assert before < 0.05 and after > 0.15, (before, after)


def test_training_checks_its_inputs() -> None:
    model = tiny_centernet(num_classes=2, input_shape=(1, 8, 8))
    config = TrainingConfig(local_epochs=1, batch_size=2, optimizer="sgd", learning_rate=0.1)
    with pytest.raises(ValueError, match="N boxes and N label tensors"):
        train_detection(
            model,
            torch.zeros(2, 1, 8, 8),
            [t([])],
            [],
            num_classes=2,
            config=config,
            seed=0,
            device=torch.device("cpu"),
        )


def test_the_time_budget_cuts_training_and_fedprox_runs() -> None:
    model = tiny_centernet(num_classes=2, input_shape=(1, 16, 16))
    images = torch.rand(8, 1, 16, 16)
    boxes, labels = [t([[2, 2, 10, 10]])] * 8, [torch.tensor([1])] * 8
    config = TrainingConfig(
        local_epochs=1000,
        batch_size=2,
        optimizer="sgd",
        learning_rate=0.01,
        max_seconds=0.2,
        proximal_mu=0.1,
    )
    anchors = {k: v.clone() for k, v in model.state_dict().items()}

    result = train_detection(
        model,
        images,
        boxes,
        labels,
        num_classes=2,
        config=config,
        seed=0,
        device=torch.device("cpu"),
        global_weights=anchors,
    )

    assert 0 < result.epochs < 1000 and result.steps >= 1 and result.loss > 0
