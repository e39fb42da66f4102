"""`flotilla run`: the job as local processes, one aggregator and one client per site.

The same spec, aggregator and client code as in a cluster, on 127.0.0.1 with a
free port. Progress comes from the aggregator's long-polled /v1/status (the
endpoint the operator reads); the result from the summary the aggregator writes
when the job ends (outcome.py). Ctrl-C, a failed aggregator or the loss of every client
stops everything in order. The state directory is locked for the run's life
(statelock.py): a second run on it is refused before it writes anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.ending import exit_deadline_seconds, os_error_text, write_summary
from flotilla.fl.aggregator.statelock import StateLock, lock_state_dir
from flotilla.local.outcome import RunFailed, job_failed, settle_summary
from flotilla.local.processes import Child, start_child, stop_children
from flotilla.local.progress import Progress
from flotilla.local.supervise import Seen, Watched, supervise
from flotilla.local.tls import write_local_tls

__all__ = ["RunFailed", "RunOptions", "job_failed", "run_local"]

log = logging.getLogger(__name__)

READY_PREFIX = "FLOTILLA-READY "
READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class RunOptions:
    job_path: Path
    state_dir: Path | None = None
    summary_json: Path | None = None
    threads: int = 1
    device: str = "cpu"
    progress: Progress | None = None
    tracking: bool = True
    tracking_uri: str | None = None
    init: str | None = None  # overrides spec.model.init (the aggregator's --init)


LOCAL_MLFLOW_DIR = Path("mlruns")


def local_tracking_args(job: FederatedJob, options: RunOptions) -> list[str]:
    """Aggregator flags: the user's choice, else the spec's or the environment's, else a
    SQLite store in ./mlruns, so a local run needs no MLflow server."""
    if not options.tracking or not job.spec.tracking.enabled:
        return ["--no-tracking"]
    if options.tracking_uri:
        return ["--tracking-uri", options.tracking_uri]
    if job.spec.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return []
    store = (LOCAL_MLFLOW_DIR / "mlflow.db").absolute()
    store.parent.mkdir(parents=True, exist_ok=True)
    return ["--tracking-uri", f"sqlite:///{store}"]


def default_state_dir(job: FederatedJob) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(".flotilla") / "runs" / f"{job.metadata.name}-{stamp}"


async def run_local(job: FederatedJob, options: RunOptions) -> dict[str, Any]:
    """Run the job to its end and return the aggregator's summary (with `stateDir`).

    Raises StateDirBusy, before writing anything, when another process holds the state
    directory; RunFailed when the run could not complete."""
    job.require_local_sites()
    state_dir = (options.state_dir or default_state_dir(job)).resolve()
    try:
        lock = lock_state_dir(state_dir)
    except OSError as error:
        raise RunFailed(f"cannot lock {state_dir}: {os_error_text(error)}") from None
    try:
        return await _run_locked(job, options, state_dir=state_dir, lock=lock)
    finally:
        lock.release()


def _prepare(job: FederatedJob, state_dir: Path) -> dict[str, str]:
    """The run's logs folder and fresh site tokens in tokens.json (0600)."""
    try:
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)
        tokens = {site.name: secrets.token_urlsafe(32) for site in job.spec.sites}
        tokens_path = state_dir / "tokens.json"
        tokens_path.touch(mode=0o600)
        tokens_path.write_text(json.dumps(tokens))
        (state_dir / "summary.json").unlink(missing_ok=True)
    except OSError as error:
        raise RunFailed(
            f"could not prepare {error.filename or state_dir}: {os_error_text(error)}"
        ) from None
    return tokens


async def _run_locked(
    job: FederatedJob, options: RunOptions, *, state_dir: Path, lock: StateLock
) -> dict[str, Any]:
    logs = state_dir / "logs"
    tokens = _prepare(job, state_dir)
    tokens_path = state_dir / "tokens.json"
    progress = options.progress or Progress(job)
    progress.started(state_dir=state_dir)
    summary_path = state_dir / "summary.json"
    tracking_args = local_tracking_args(job, options)
    init_args = ["--init", options.init] if options.init is not None else []
    deadline = exit_deadline_seconds(job, tracking="--no-tracking" not in tracking_args)
    seen = Seen()
    children: list[Child] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # TLS unless the spec opts out: the same transport as in a cluster.
    tls = write_local_tls(state_dir / "tls") if job.spec.security.tls.enabled else None
    try:
        aggregator, url = await _start_aggregator(
            options,
            tokens_path,
            state_dir,
            logs,
            extra=[*tracking_args, *init_args, *(tls.aggregator_args() if tls else [])],
            lock=lock,
        )
        children.append(aggregator)
        progress.serving(url)
        trust = ["--ca-file", str(tls.ca)] if tls else []
        for site, token in tokens.items():
            children.append(
                await start_child(
                    site,
                    [
                        "client",
                        "--aggregator",
                        url,
                        *trust,
                        "--threads",
                        str(options.threads),
                        "--device",
                        options.device,
                    ],
                    log_path=logs / f"{site}.log",
                    env={"FLOTILLA_TOKEN": token, "FLOTILLA_SITE": site},
                )
            )
        await supervise(
            aggregator,
            children[1:],
            Watched(url, tls.ca if tls else None, seen),
            progress,
            stop,
            min_clients=job.spec.clients.min_clients,
            exit_deadline=deadline,
        )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await stop_children(children)
    summary = settle_summary(
        summary_path, last_status=seen.status, aggregator_log=logs / "aggregator.log"
    )
    if summary is None:
        tail = children[0].tail() if children else ""
        raise RunFailed(f"the aggregator ended without a summary\n{tail}".rstrip())
    summary["stateDir"] = str(state_dir)
    if options.summary_json is not None:
        problem = write_summary(options.summary_json, summary)
        if problem is not None:
            summary.setdefault("summaryError", problem)
    progress.finished(summary)
    return summary


async def _start_aggregator(
    options: RunOptions,
    tokens_path: Path,
    state_dir: Path,
    logs: Path,
    *,
    extra: list[str],
    lock: StateLock,
) -> tuple[Child, str]:
    child = await start_child(
        "aggregator",
        [
            "aggregator",
            "--job",
            str(options.job_path),
            "--tokens-file",
            str(tokens_path),
            "--state-dir",
            str(state_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--exit-when-done",
            "--ready-line",
            "--clients-on-this-host",
            *extra,
        ],
        log_path=logs / "aggregator.log",
        stdout_pipe=True,
        env=lock.child_env(),  # the aggregator holds the run's lock, not a second one
        pass_fds=(lock.fd,),
    )
    assert child.process.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            while line := (await child.process.stdout.readline()).decode():
                if line.startswith(READY_PREFIX):
                    return child, line[len(READY_PREFIX) :].strip()
    except TimeoutError:
        pass
    await stop_children([child])
    raise RunFailed(f"the aggregator did not start:\n{child.tail()}")
