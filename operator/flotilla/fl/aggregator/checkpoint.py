"""Durable aggregator state: one directory per completed round, switched to atomically.

A checkpoint is `round-NNNNNN/` holding the global model (the served
safetensors buffer, written as is), the server optimizer's state and a JSON
file with the round history. Every file is fsynced, then `LATEST` is replaced
by rename, so a crash at any point leaves either the old or the new checkpoint,
never a mix. A restarted aggregator resumes from `LATEST`: no completed round is
lost or repeated.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from flotilla.fl.wire import Layout, WireError, parse_header

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint cannot be used to resume this job; the message says why."""


@dataclass(frozen=True)
class Snapshot:
    completed_rounds: int
    model: bytearray
    optimizer_state: dict[str, torch.Tensor]
    state: dict[str, Any]  # history, evaluations, job identity: JSON-serialisable


class CheckpointStore:
    def __init__(self, directory: Path, *, keep: int = 2) -> None:
        self.directory = directory / "checkpoints"
        self._keep = keep
        # Older checkpoints someone still needs (the MLflow exporter, during an outage).
        self.retain: Callable[[int], bool] = lambda round_number: False

    def save(self, snapshot: Snapshot) -> Path:
        """Write a checkpoint and make it the latest. Blocking: call from a worker thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"round-{snapshot.completed_rounds:06d}"
        final = self.directory / name
        staging = self.directory / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _write_synced(staging / "model.safetensors", snapshot.model)
        if snapshot.optimizer_state:
            save_file(
                {k: v.contiguous() for k, v in snapshot.optimizer_state.items()},
                str(staging / "optimizer.safetensors"),
            )
            _fsync_path(staging / "optimizer.safetensors")
        state = {"format": FORMAT_VERSION, "completedRounds": snapshot.completed_rounds}
        _write_synced(staging / "state.json", json.dumps(state | snapshot.state).encode())
        _fsync_path(staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        _write_synced(self.directory / ".LATEST.tmp", name.encode())
        (self.directory / ".LATEST.tmp").replace(self.directory / "LATEST")
        _fsync_path(self.directory)
        self._prune(keep_name=name)
        return final

    def has_latest(self) -> bool:
        return (self.directory / "LATEST").exists()

    def adopt(self, folder: Path, completed_rounds: int) -> Path:
        """Make a checkpoint written elsewhere (downloaded from MLflow) the latest, as save()
        does its own: moved in whole, then `LATEST` switched by rename."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"round-{completed_rounds:06d}"
        final = self.directory / name
        shutil.rmtree(final, ignore_errors=True)
        shutil.move(str(folder), str(final))
        _fsync_path(self.directory)
        _write_synced(self.directory / ".LATEST.tmp", name.encode())
        (self.directory / ".LATEST.tmp").replace(self.directory / "LATEST")
        _fsync_path(self.directory)
        return final

    def load(self, layout: Layout) -> tuple[Snapshot, bytearray] | None:
        """The latest checkpoint and its model copied into a fresh `layout` buffer, or None."""
        latest = self.directory / "LATEST"
        if not latest.exists():
            return None
        folder = self.directory / latest.read_text().strip()
        try:
            state = json.loads((folder / "state.json").read_text())
            raw = _read_into_bytearray(folder / "model.safetensors")
            optimizer_path = folder / "optimizer.safetensors"
            optimizer = load_file(str(optimizer_path)) if optimizer_path.exists() else {}
        except (OSError, ValueError) as error:
            raise CheckpointError(f"checkpoint {folder} is unreadable: {error}") from None
        if state.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {folder} has format {state.get('format')!r}")
        buffer = _model_into_layout(raw, layout, folder)
        snapshot = Snapshot(
            completed_rounds=int(state["completedRounds"]),
            model=buffer,
            optimizer_state=optimizer,
            state=state,
        )
        return snapshot, buffer

    def _prune(self, *, keep_name: str) -> None:
        rounds = sorted(p for p in self.directory.glob("round-*") if p.is_dir())
        for old in rounds[: -self._keep]:
            if old.name != keep_name and not self.retain(int(old.name.removeprefix("round-"))):
                shutil.rmtree(old, ignore_errors=True)


def _read_into_bytearray(path: Path) -> bytearray:
    # A writable buffer lets torch view it without copying or warning.
    with open(path, "rb") as handle:
        data = bytearray(os.fstat(handle.fileno()).st_size)
        handle.readinto(data)
    return data


def _model_into_layout(raw: bytearray, layout: Layout, folder: Path) -> bytearray:
    if len(raw) < 8:
        raise CheckpointError(f"checkpoint {folder}: model file is truncated")
    size = int.from_bytes(raw[:8], "little")
    try:
        offsets = parse_header(bytes(raw[8 : 8 + size]), layout)
    except WireError as error:
        raise CheckpointError(
            f"checkpoint {folder} holds another model than this job's spec: {error}"
        ) from None
    if len(raw) != 8 + size + layout.data_size:
        raise CheckpointError(f"checkpoint {folder}: model file is truncated")
    source = layout.views(raw, offsets=offsets, base=8 + size)
    buffer = layout.allocate()
    for name, view in layout.views(buffer).items():
        view.copy_(source[name])
    return buffer


def _write_synced(path: Path, data: bytes | bytearray | memoryview) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
