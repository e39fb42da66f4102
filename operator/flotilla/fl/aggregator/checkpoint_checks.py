"""What a checkpoint on disk must look like before the aggregator trusts it.

A checkpoint directory is input like any other: a disk that filled up, a half-copied
volume or a hand edit can leave `state.json` of another shape, a garbage file or a
`LATEST` naming a path outside the directory. Each check raises `CheckpointError`
naming the file and what is wrong with it, so the loader can skip that checkpoint and
say why.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
FOLDER = re.compile(r"round-(\d{6})")
LATEST_MAX_BYTES = 64  # "round-NNNNNN" and a newline; anything longer is not ours


class CheckpointError(Exception):
    """A checkpoint cannot be used to resume this job; the message says why."""


def folder_round(name: str) -> int | None:
    """The round of a checkpoint folder name (`round-NNNNNN`), or None for any other name:
    a name with a slash, `..` or an absolute path never matches, so it is never followed."""
    match = FOLDER.fullmatch(name)
    return int(match.group(1)) if match else None


def read_latest(path: Path) -> str:
    """The text of `LATEST`, read without following a link and at most a few bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        return os.read(fd, LATEST_MAX_BYTES).decode("ascii").strip()
    finally:
        os.close(fd)


def confined(path: Path, *, root: Path) -> Path:
    """`path` resolved, if it is a regular file inside `root` (itself resolved)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise CheckpointError(f"{_name(path)} lies outside {root} (it links to {resolved})")
    try:
        mode = resolved.stat().st_mode
    except OSError as error:
        raise CheckpointError(f"{_name(path)} is unreadable: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{_name(path)} is not a regular file")
    return resolved


def check_state(state: Any, *, folder: str, round_number: int) -> dict[str, Any]:
    """`state.json` as the loader needs it: an object of this format, for this folder's round,
    with a history and evaluations of the shape the engine restores from."""
    where = f"{folder}/state.json"
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} is not a JSON object but {type(state).__name__}")
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format {state.get('format')!r}; this flotilla reads {FORMAT_VERSION}"
        )
    completed = state.get("completedRounds")
    if type(completed) is not int or completed != round_number:
        raise CheckpointError(
            f"{where}: completedRounds is {completed!r}, the folder is round {round_number}"
        )
    history = state.get("history", [])
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise CheckpointError(f"{where}: history is not a list of objects")
    if not _evaluations_shape(state.get("evaluations", {})):
        raise CheckpointError(
            f"{where}: evaluations is not an object of lists of objects keyed by round"
        )
    if not isinstance(state.get("identity", {}), dict):
        raise CheckpointError(f"{where}: identity is not an object")
    return state


def _evaluations_shape(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str)
        and key.isdigit()
        and isinstance(reports, list)
        and all(isinstance(report, dict) for report in reports)
        for key, reports in value.items()
    )


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"
