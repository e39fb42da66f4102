"""Durable aggregator state: one directory per completed round, switched to atomically.

A checkpoint is `round-NNNNNN/` holding the global model (the served
safetensors buffer, written as is), the server optimizer's state and a JSON
file with the round history. Every file is fsynced, then `LATEST` is replaced
by rename, so a crash at any point leaves either the old or the new checkpoint,
never a mix. A restarted aggregator resumes from `LATEST`: no completed round is
lost or repeated. What it reads is checked first (checkpoint_checks.py); a checkpoint that
fails is skipped for the newest good one still on disk.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flotilla.fl.aggregator.checkpoint_checks import (
    FORMAT_VERSION,
    CheckpointError,
    check_state,
    confined,
    folder_round,
    read_latest,
)
from flotilla.fl.wire import Layout, WireError, parse_header

__all__ = ["FORMAT_VERSION", "CheckpointError", "CheckpointStore", "Snapshot"]

log = logging.getLogger(__name__)


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
        write_synced(staging / "model.safetensors", snapshot.model)
        if snapshot.optimizer_state:
            save_file(
                {k: v.contiguous() for k, v in snapshot.optimizer_state.items()},
                str(staging / "optimizer.safetensors"),
            )
            fsync_path(staging / "optimizer.safetensors")
        state = {"format": FORMAT_VERSION, "completedRounds": snapshot.completed_rounds}
        write_synced(staging / "state.json", json.dumps(state | snapshot.state).encode())
        fsync_path(staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        write_synced(self.directory / ".LATEST.tmp", name.encode())
        (self.directory / ".LATEST.tmp").replace(self.directory / "LATEST")
        fsync_path(self.directory)
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
        fsync_path(self.directory)
        write_synced(self.directory / ".LATEST.tmp", name.encode())
        (self.directory / ".LATEST.tmp").replace(self.directory / "LATEST")
        fsync_path(self.directory)
        return final

    def load(
        self, layout: Layout, *, accept: Callable[[Snapshot], None] | None = None
    ) -> tuple[Snapshot, bytearray] | None:
        """The newest good checkpoint and its model copied into a fresh `layout` buffer, or
        None when there is none at all.

        `LATEST` first, then every other `round-NNNNNN` folder, newest first: a checkpoint
        that fails a check (checkpoint_checks.py) or that `accept` (the engine's restore)
        refuses is skipped with a warning naming the file and why. When checkpoints exist but
        none is good, CheckpointError lists them all: the job stops rather than start over
        from round 1 on top of them (and, in a cluster, log its rounds again into the same
        MLflow run)."""
        skipped: list[str] = []
        for folder in self._candidates():
            try:
                snapshot, buffer = self._load_folder(folder, layout)
                if accept is not None:
                    accept(snapshot)
            # CheckpointError from the checks; the others from `accept` meeting a shape the
            # checks let through (a history row missing a field, an optimizer key unknown).
            except (CheckpointError, ValueError, KeyError, TypeError, AttributeError) as error:
                log.warning("skipped checkpoint %s: %s", folder.name, error)
                skipped.append(str(error))
                continue
            if skipped:
                log.warning(
                    "resuming from checkpoint %s, the newest good one (%d newer skipped)",
                    folder.name,
                    len(skipped),
                )
            return snapshot, buffer
        if not skipped:
            return None
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be used: {'; '.join(skipped)}. "
            f"The job stops rather than start over on top of them: move {self.directory} "
            "aside to start over from round 1"
        )

    def _candidates(self) -> list[Path]:
        """Checkpoint folders to try, best first: `LATEST`'s, then the others newest first."""
        if not self.directory.is_dir():
            return []
        names = sorted(
            (p.name for p in self.directory.iterdir() if folder_round(p.name) is not None),
            reverse=True,
        )
        latest = self._latest_name()
        if latest in names:
            names.remove(latest)
            names.insert(0, latest)
        return [self.directory / name for name in names]

    def _latest_name(self) -> str | None:
        path = self.directory / "LATEST"
        try:
            name = read_latest(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, CheckpointError) as error:
            log.warning("%s is unreadable (%s): not followed", path, error)
            return None
        if folder_round(name) is None:
            log.warning(
                "%s names %r, not a round-NNNNNN folder of that directory: not followed",
                path,
                name[:80],
            )
            return None
        if not (self.directory / name).is_dir():
            log.warning("%s names %s, which is not on disk", path, name)
        return name

    def _load_folder(self, folder: Path, layout: Layout) -> tuple[Snapshot, bytearray]:
        root = self.directory.resolve()
        if folder.is_symlink() or folder.resolve().parent != root:
            raise CheckpointError(f"{folder.name} links to {folder.resolve()}, outside {root}")
        inside = folder.resolve()
        round_number = folder_round(folder.name)
        assert round_number is not None
        state_path = confined(folder / "state.json", root=inside)
        try:
            state = check_state(
                json.loads(state_path.read_bytes()), folder=folder.name, round_number=round_number
            )
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{folder.name}/state.json is unreadable: {error}") from None
        model_path = confined(folder / "model.safetensors", root=inside)
        try:
            raw = read_into_bytearray(model_path)
        except OSError as error:
            raise CheckpointError(
                f"{folder.name}/model.safetensors is unreadable: {error}"
            ) from None
        buffer = _model_into_layout(raw, layout, folder)
        optimizer = _read_optimizer(folder / "optimizer.safetensors", root=inside)
        snapshot = Snapshot(
            completed_rounds=round_number, model=buffer, optimizer_state=optimizer, state=state
        )
        return snapshot, buffer

    def _prune(self, *, keep_name: str) -> None:
        rounds = sorted(
            p for p in self.directory.iterdir() if folder_round(p.name) is not None and p.is_dir()
        )
        for old in rounds[: -self._keep]:
            if old.name != keep_name and not self.retain(int(old.name.removeprefix("round-"))):
                shutil.rmtree(old, ignore_errors=True)


def read_into_bytearray(path: Path) -> bytearray:
    # A writable buffer lets torch view it without copying or warning.
    with open(path, "rb") as handle:
        data = bytearray(os.fstat(handle.fileno()).st_size)
        handle.readinto(data)
    return data


def _read_optimizer(path: Path, *, root: Path) -> dict[str, torch.Tensor]:
    if not path.exists() and not path.is_symlink():
        return {}  # a stateless server optimizer (plain FedAvg) writes none
    try:
        return load_file(str(confined(path, root=root)))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path.parent.name}/{path.name} is unreadable: {error}") from None


def _model_into_layout(raw: bytearray, layout: Layout, folder: Path) -> bytearray:
    if len(raw) < 8:
        raise CheckpointError(f"{folder.name}/model.safetensors is truncated")
    size = int.from_bytes(raw[:8], "little")
    header = bytes(raw[8 : 8 + size])
    try:
        if size > len(raw) - 8 or not isinstance(json.loads(header), dict):
            raise ValueError("no JSON object where its header should be")
    except ValueError:
        raise CheckpointError(
            f"{folder.name}/model.safetensors is not a safetensors file (garbage or truncated)"
        ) from None
    try:
        offsets = parse_header(header, layout)
    except WireError as error:
        raise CheckpointError(
            f"{folder.name}/model.safetensors holds another model than this job's spec: {error}"
        ) from None
    if len(raw) != 8 + size + layout.data_size:
        raise CheckpointError(f"{folder.name}/model.safetensors is truncated")
    source = layout.views(raw, offsets=offsets, base=8 + size)
    buffer = layout.allocate()
    for name, view in layout.views(buffer).items():
        view.copy_(source[name])
    return buffer


def write_synced(path: Path, data: bytes | bytearray | memoryview) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
