"""One run per state directory: a second `flotilla run` or aggregator is refused at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flotilla.api import load_job
from flotilla.cli import main
from flotilla.fl.aggregator.main import AggregatorOptions, serve
from flotilla.fl.aggregator.statelock import (
    INHERITED_FD_ENV,
    LOCK_FILE,
    StateDirBusy,
    lock_state_dir,
)
from tests.integration.harness import write_job


def test_a_second_lock_on_one_directory_is_refused_naming_the_holder(tmp_path: Path) -> None:
    held = lock_state_dir(tmp_path)

    with pytest.raises(StateDirBusy) as refused:
        lock_state_dir(tmp_path)

    assert refused.value.holder == str(os.getpid())
    assert str(tmp_path) in str(refused.value) and str(os.getpid()) in str(refused.value)
    held.release()
    lock_state_dir(tmp_path).release()  # free again once its holder let go


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    # A process killed while holding it leaves no stale lock (flock, not a pid file).
    code = "import sys, os; from flotilla.fl.aggregator.statelock import lock_state_dir; "
    code += f"lock_state_dir(__import__('pathlib').Path({str(tmp_path)!r})); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    lock_state_dir(tmp_path).release()


def test_a_lock_handed_down_to_a_child_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = lock_state_dir(tmp_path)
    monkeypatch.setenv(INHERITED_FD_ENV, str(held.fd))  # as `flotilla run` tells its aggregator

    inherited = lock_state_dir(tmp_path)

    assert inherited.fd == held.fd
    held.release()


def test_a_handed_down_descriptor_of_another_file_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = lock_state_dir(tmp_path)
    with open(tmp_path / "other", "w") as other:
        monkeypatch.setenv(INHERITED_FD_ENV, str(other.fileno()))
        with pytest.raises(StateDirBusy):
            lock_state_dir(tmp_path)
    held.release()


def _job_file(tmp_path: Path) -> Path:
    return write_job(tmp_path / "job.yaml", data_dir=tmp_path / "data", sites=["a", "b"], rounds=1)


def test_a_second_run_exits_2_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    held = lock_state_dir(state)  # the first run
    (state / "tokens.json").write_text('{"a": "first-run-token"}')
    before = sorted(p.name for p in state.iterdir())

    code = main(["run", str(_job_file(tmp_path)), "--state-dir", str(state)])

    assert code == 2
    message = capsys.readouterr().err
    assert str(state) in message and f"process {os.getpid()}" in message
    assert json.loads((state / "tokens.json").read_text()) == {"a": "first-run-token"}
    assert sorted(p.name for p in state.iterdir()) == before
    held.release()


def test_an_aggregator_on_a_locked_directory_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held = lock_state_dir(tmp_path / "state")
    job = load_job(_job_file(tmp_path))

    code = asyncio.run(
        serve(
            job,
            tokens={"a": "t"},
            options=AggregatorOptions(state_dir=tmp_path / "state", tracking=False, port=0),
            on_ready=lambda url: None,
        )
    )

    assert code == 2 and f"process {os.getpid()}" in caplog.text
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [LOCK_FILE]
    held.release()
