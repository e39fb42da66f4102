"""How `flotilla run` ends: the aggregator's deadline, the job's own outcome, a summary that
could not be written."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from flotilla.api import load_job
from flotilla.cli import main
from flotilla.fl.aggregator import ending
from flotilla.fl.aggregator.ending import exit_deadline_seconds, write_summary
from flotilla.local import runner, supervise
from flotilla.local.outcome import (
    CLIENTS_GONE,
    INTERRUPTED,
    RunFailed,
    job_failed,
    settle_summary,
    stop_reason,
)
from flotilla.local.processes import Child
from tests.integration.harness import write_job

DONE_STATUS = {
    "job": "itest",
    "phase": "done",
    "rounds": 1,
    "completedRounds": 1,
    "failure": None,
    "tracking": {"enabled": False},
}


def _job(tmp_path: Path, **tracking: Any) -> Any:
    path = write_job(
        tmp_path / "job.yaml",
        data_dir=tmp_path / "data",
        sites=["a"],
        rounds=1,
        overrides={"tracking": tracking} if tracking else None,
    )
    return load_job(path)


# -- the runner waits for the aggregator's own deadline --------------------------------------


@pytest.mark.parametrize("flush", [60.0, 300.0])
def test_the_runner_waits_out_the_flush_timeout_and_the_registration(
    tmp_path: Path, flush: float
) -> None:
    job = _job(tmp_path, flushTimeoutSeconds=flush)

    deadline = exit_deadline_seconds(job, tracking=True)

    assert deadline >= flush + ending.RELEASE_CLIENTS_SECONDS + ending.REGISTRATION_MARGIN_SECONDS
    assert exit_deadline_seconds(job, tracking=False) < 30.0  # nothing to flush


def test_a_job_the_aggregator_reported_done_is_done_whatever_happened_after() -> None:
    assert stop_reason(phase="done", interrupted=False, aggregator_exited=False) is None
    assert stop_reason(phase="done", interrupted=True, aggregator_exited=False) is None
    assert stop_reason(phase="failed", interrupted=True, aggregator_exited=False) is None
    assert stop_reason(phase="training", interrupted=True, aggregator_exited=False) == INTERRUPTED
    assert stop_reason(phase="training", interrupted=False, aggregator_exited=False) == (
        CLIENTS_GONE
    )
    assert stop_reason(phase=None, interrupted=False, aggregator_exited=True) is None
    assert not job_failed({"phase": "done"}) and job_failed({"phase": "failed"})


class _Progress:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def update(self, status: dict[str, Any]) -> None:
        pass


async def _child(tmp_path: Path, name: str, code: str) -> Child:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    return Child(name=name, process=process, log_path=tmp_path / f"{name}.log")


def _supervise_after_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, interrupt: bool, phase: str = "done"
) -> _Progress:
    """Clients exit once the job is `phase`; the aggregator (a sleeper) never does."""

    async def watch(watched: supervise.Watched, progress: Any, min_clients: int) -> None:
        watched.seen.status = DONE_STATUS | {"phase": phase}
        if phase != "done":
            await asyncio.sleep(3600)

    monkeypatch.setattr(supervise, "_watch_status", watch)
    monkeypatch.setattr(supervise, "STATUS_GRACE_SECONDS", 0.2)
    progress = _Progress()

    async def scenario() -> None:
        aggregator = await _child(tmp_path, "aggregator", "import time; time.sleep(60)")
        clients = [await _child(tmp_path, "a", "pass")]
        stop = asyncio.Event()
        if interrupt:
            asyncio.get_running_loop().call_later(0.3, stop.set)  # Ctrl-C while it registers
        try:
            await supervise.supervise(
                aggregator,
                clients,
                supervise.Watched("http://unused", None, supervise.Seen()),
                progress,  # type: ignore[arg-type]
                stop,
                min_clients=1,
                exit_deadline=0.3 if not interrupt else 30.0,
            )
        finally:
            aggregator.process.kill()
            await aggregator.process.wait()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    return progress


def test_an_aggregator_stopped_after_done_is_not_every_client_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = _supervise_after_done(tmp_path, monkeypatch, interrupt=False)

    (note,) = progress.warnings
    assert "did not exit within" in note and "flushTimeoutSeconds" in note
    assert "The job itself is done" in note


def test_ctrl_c_during_the_final_registration_says_the_job_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = _supervise_after_done(tmp_path, monkeypatch, interrupt=True)

    (note,) = progress.warnings
    assert note.startswith("interrupted while the aggregator was finishing the job")
    assert "The job itself is done" in note


def test_clients_gone_while_the_job_runs_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RunFailed, match="every client exited while the job was still running"):
        _supervise_after_done(tmp_path, monkeypatch, interrupt=False, phase="training")


# -- a summary that cannot be written is said, and does not change the outcome ---------------


@pytest.mark.parametrize(("code", "name"), [(errno.ENOSPC, "ENOSPC"), (errno.EROFS, "EROFS")])
def test_a_summary_write_that_fails_is_logged_with_errno_and_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
    name: str,
) -> None:
    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_text", full)
    path = tmp_path / "summary.json"

    problem = write_summary(path, {"phase": "done"})

    assert problem is not None and f"({name})" in problem and str(path) in problem
    assert f"({name})" in caplog.text and str(path) in caplog.text
    assert not path.with_suffix(".tmp").exists()


def test_the_runner_names_the_aggregators_summary_failure_and_keeps_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The aggregator logs its failed write into logs/aggregator.log, as a real one does.
    log_path = tmp_path / "aggregator.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger(ending.__name__).addHandler(handler)

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patched:
        patched.setattr(Path, "write_text", full)
        write_summary(tmp_path / "summary.json", {"phase": "done"})
    logging.getLogger(ending.__name__).removeHandler(handler)
    handler.close()

    summary = settle_summary(
        tmp_path / "summary.json", last_status=DONE_STATUS, aggregator_log=log_path
    )

    assert summary is not None and summary["phase"] == "done" and not job_failed(summary)
    assert summary["summaryError"].startswith("could not write summary")
    assert summary["summaryError"].endswith("(ENOSPC)")


def test_no_summary_and_no_final_status_is_a_failed_run(tmp_path: Path) -> None:
    training = DONE_STATUS | {"phase": "training"}

    assert (
        settle_summary(tmp_path / "s.json", last_status=training, aggregator_log=tmp_path) is None
    )


@pytest.mark.parametrize(("phase", "exit_code"), [("done", 0), ("failed", 1)])
def test_the_cli_says_enospc_last_and_exits_with_the_jobs_code(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    phase: str,
    exit_code: int,
) -> None:
    problem = "could not write summary /s/summary.json: No space left on device (ENOSPC)"

    async def run_local(job: Any, options: Any) -> dict[str, Any]:
        return {"phase": phase, "summaryError": problem}

    monkeypatch.setattr(runner, "run_local", run_local)
    job = write_job(tmp_path / "job.yaml", data_dir=tmp_path, sites=["a"], rounds=1)

    code = main(["run", str(job), "--state-dir", str(tmp_path / "state")])

    assert code == exit_code
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"flotilla: {problem}"
