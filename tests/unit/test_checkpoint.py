"""Checkpoints: atomic, pruned, and refused when they belong to another model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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


# -- a corrupt checkpoint falls back to the previous good one still on disk ------------------


def _two_checkpoints(tmp_path: Path) -> tuple[CheckpointStore, Any, Path]:
    store = CheckpointStore(tmp_path, keep=3)
    layout, first = _model(1.0)
    _, second = _model(2.0)
    store.save(_snapshot(1, first))
    store.save(_snapshot(2, second))
    return store, layout, tmp_path / "checkpoints" / "round-000002"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"format": 1}', "completedRounds"),
        (b'{"format": 1, "completedRounds": 2, "history": {"round": 1}}', "history"),
        (b'{"format": 1, "completedRounds": 2, "history": [1, 2]}', "history"),
        (b'{"format": 1, "completedRounds": 2, "evaluations": [3]}', "evaluations"),
        (b'{"format": 1, "completedRounds": "2"}', "completedRounds"),
        (b'{"format": 1, "completedRounds": 7}', "completedRounds"),
        (b"\xff\xfe not json", "state.json"),
    ],
)
def test_a_state_json_of_the_wrong_shape_falls_back_to_the_previous_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    store, layout, latest = _two_checkpoints(tmp_path)
    (latest / "state.json").write_bytes(content)

    with caplog.at_level(logging.WARNING):
        loaded = store.load(layout)

    assert loaded is not None and loaded[0].completed_rounds == 1
    assert torch.equal(layout.views(loaded[1])["w"], torch.full((2, 3), 1.0))
    warning = caplog.text
    assert "round-000002" in warning and "state.json" in warning and reason in warning


def test_a_garbage_optimizer_file_falls_back_to_the_previous_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, layout, latest = _two_checkpoints(tmp_path)
    (latest / "optimizer.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")

    with caplog.at_level(logging.WARNING):
        loaded = store.load(layout)

    assert loaded is not None and loaded[0].completed_rounds == 1
    assert "round-000002" in caplog.text and "optimizer.safetensors" in caplog.text


@pytest.mark.parametrize("target", ["../../../etc", "/etc", "round-000002/../../..", ""])
def test_latest_pointing_outside_the_state_directory_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, target: str
) -> None:
    store, layout, _ = _two_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "LATEST").write_text(target)

    with caplog.at_level(logging.WARNING):
        loaded = store.load(layout)

    # LATEST is not followed; the newest good checkpoint on disk is used instead.
    assert loaded is not None and loaded[0].completed_rounds == 2
    assert "LATEST" in caplog.text


def test_a_checkpoint_file_linking_outside_the_state_directory_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, layout, latest = _two_checkpoints(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    (latest / "model.safetensors").rename(outside)
    (latest / "model.safetensors").symlink_to(outside)

    with caplog.at_level(logging.WARNING):
        loaded = store.load(layout)

    assert loaded is not None and loaded[0].completed_rounds == 1
    assert "model.safetensors" in caplog.text and "outside" in caplog.text


def test_a_checkpoint_folder_linking_outside_is_refused(tmp_path: Path) -> None:
    store, layout, latest = _two_checkpoints(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    latest.rename(elsewhere)
    latest.symlink_to(elsewhere)

    loaded = store.load(layout)

    assert loaded is not None and loaded[0].completed_rounds == 1


def test_no_good_checkpoint_is_an_error_naming_each_file(tmp_path: Path) -> None:
    store, layout, latest = _two_checkpoints(tmp_path)
    (latest / "state.json").write_text("[]")
    (tmp_path / "checkpoints" / "round-000001" / "model.safetensors").write_bytes(b"")

    with pytest.raises(CheckpointError) as raised:
        store.load(layout)

    message = str(raised.value)
    assert "round-000002/state.json" in message and "round-000001/model.safetensors" in message
    assert "checkpoints" in message  # says what to move aside to start over


def test_a_checkpoint_the_engine_refuses_falls_back_too(tmp_path: Path) -> None:
    store, layout, _ = _two_checkpoints(tmp_path)
    refused = []

    def accept(snapshot: Snapshot) -> None:
        if snapshot.completed_rounds == 2:
            refused.append(2)
            raise ValueError("optimizer state key 'x' is not 'm/<name>'")

    loaded = store.load(layout, accept=accept)

    assert refused == [2] and loaded is not None and loaded[0].completed_rounds == 1


def test_a_checkpoint_missing_a_file_or_not_a_folder_is_skipped(tmp_path: Path) -> None:
    store, layout, latest = _two_checkpoints(tmp_path)
    (latest / "model.safetensors").unlink()
    (tmp_path / "checkpoints" / "round-000003").write_text("not a folder")

    loaded = store.load(layout)

    assert loaded is not None and loaded[0].completed_rounds == 1
