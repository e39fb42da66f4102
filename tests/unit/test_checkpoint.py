"""Checkpoints: atomic, pruned, and refused when they belong to another model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flotilla.fl.aggregator.checkpoint import CheckpointError, CheckpointStore, Snapshot
from flotilla.fl.wire import model_layout


def _model(value: float):
    layout = model_layout({"w": torch.zeros(2, 3), "b": torch.zeros(3)})
    buffer = layout.allocate()
    for view in layout.views(buffer).values():
        view.fill_(value)
    return layout, buffer


def _snapshot(rounds: int, buffer: bytearray) -> Snapshot:
    return Snapshot(
        completed_rounds=rounds,
        model=buffer,
        optimizer_state={"m/w": torch.full((2, 3), float(rounds))},
        state={"history": [{"round": r} for r in range(1, rounds + 1)]},
    )


def test_load_returns_the_latest_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    layout, first = _model(1.0)
    _, second = _model(2.0)
    store.save(_snapshot(1, first))
    store.save(_snapshot(2, second))

    loaded = store.load(layout)

    assert loaded is not None
    snapshot, buffer = loaded
    assert snapshot.completed_rounds == 2
    assert snapshot.state["history"] == [{"round": 1}, {"round": 2}]
    assert torch.equal(layout.views(buffer)["w"], torch.full((2, 3), 2.0))
    assert torch.equal(snapshot.optimizer_state["m/w"], torch.full((2, 3), 2.0))


def test_a_fresh_directory_has_no_checkpoint(tmp_path: Path) -> None:
    layout, _ = _model(0.0)

    assert CheckpointStore(tmp_path).load(layout) is None


def test_old_checkpoints_are_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    _, buffer = _model(1.0)
    for rounds in range(1, 5):
        store.save(_snapshot(rounds, buffer))

    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("round-*"))

    assert kept == ["round-000003", "round-000004"]


def test_a_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    layout, buffer = _model(1.0)
    store.save(_snapshot(1, buffer))
    # A crash while writing round 2 leaves a staging folder and an unchanged LATEST.
    (tmp_path / "checkpoints" / ".round-000002.tmp").mkdir()

    loaded = store.load(layout)

    assert loaded is not None and loaded[0].completed_rounds == 1


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _, buffer = _model(1.0)
    store.save(_snapshot(1, buffer))
    other = model_layout({"w": torch.zeros(4, 3), "b": torch.zeros(3)})

    with pytest.raises(CheckpointError, match="another model"):
        store.load(other)
