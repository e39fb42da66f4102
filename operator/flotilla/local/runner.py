"""`flotilla run`: the job as local processes, one aggregator and one client per site.

The same spec, aggregator and client code as in a cluster, on 127.0.0.1 with a
free port. Progress comes from the aggregator's long-polled /v1/status (the
endpoint the operator reads); the result from the summary the aggregator writes
when the job ends. Ctrl-C, a failed aggregator or the loss of every client stops
everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from flotilla.api import FederatedJob
from flotilla.fl.tls import client_context
from flotilla.local.processes import Child, start_child, stop_children
from flotilla.local.progress import Progress
from flotilla.local.tls import write_local_tls

log = logging.getLogger(__name__)

READY_PREFIX = "FLOTILLA-READY "
READY_TIMEOUT_SECONDS = 120.0
# Clients exit as soon as they learn the job is done; the aggregator follows them.
AGGREGATOR_EXIT_SECONDS = 30.0


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


class RunFailed(Exception):
    """The local run could not complete; the message says which part failed and why."""


def default_state_dir(job: FederatedJob) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(".flotilla") / "runs" / f"{job.metadata.name}-{stamp}"


async def run_local(job: FederatedJob, options: RunOptions) -> dict[str, Any]:
    """Run the job to its end and return the aggregator's summary (with `stateDir`)."""
    job.require_local_sites()
    state_dir = (options.state_dir or default_state_dir(job)).resolve()
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tokens = {site.name: secrets.token_urlsafe(32) for site in job.spec.sites}
    tokens_path = state_dir / "tokens.json"
    tokens_path.touch(mode=0o600)
    tokens_path.write_text(json.dumps(tokens))
    progress = options.progress or Progress(job)
    progress.started(state_dir=state_dir)
    summary_path = state_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
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
            extra=[*local_tracking_args(job, options), *(tls.aggregator_args() if tls else [])],
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
        await _supervise(
            aggregator,
            children[1:],
            _Watched(url, tls.ca if tls else None),
            progress,
            stop,
            min_clients=job.spec.clients.min_clients,
        )
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await stop_children(children)
    summary = _read_summary(summary_path, children)
    summary["stateDir"] = str(state_dir)
    if options.summary_json is not None:
        options.summary_json.parent.mkdir(parents=True, exist_ok=True)
        options.summary_json.write_text(json.dumps(summary, indent=2))
    progress.finished(summary)
    return summary


async def _start_aggregator(
    options: RunOptions, tokens_path: Path, state_dir: Path, logs: Path, *, extra: list[str]
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
            *extra,
        ],
        log_path=logs / "aggregator.log",
        stdout_pipe=True,
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


@dataclass(frozen=True)
class _Watched:
    url: str
    ca: Path | None  # the run's CA, when the aggregator serves HTTPS


async def _supervise(
    aggregator: Child,
    clients: list[Child],
    watched: _Watched,
    progress: Progress,
    stop: asyncio.Event,
    *,
    min_clients: int,
) -> None:
    watcher = asyncio.create_task(_watch_status(watched, progress, min_clients))
    aggregator_done = asyncio.create_task(aggregator.process.wait())
    clients_done = asyncio.create_task(_watch_clients(clients, progress, min_clients))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait(
            {aggregator_done, clients_done, stopped, watcher}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (watcher, clients_done, stopped):
            task.cancel()
    if stop.is_set():
        raise RunFailed("interrupted; the state directory keeps the last completed round")
    for task in (clients_done, watcher):
        if task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]
    if not aggregator_done.done():
        # Give the aggregator a moment to end the job itself (clients exit on "done").
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(aggregator_done), AGGREGATOR_EXIT_SECONDS)
    if not aggregator_done.done():
        tails = "\n".join(f"--- {c.name} ---\n{c.tail(8)}" for c in clients)
        raise RunFailed(f"every client exited while the job was still running:\n{tails}")


async def _watch_clients(clients: list[Child], progress: Progress, min_clients: int) -> None:
    """Return once every client exited; fail early once too few are left to run a round."""
    waiting = {asyncio.create_task(c.process.wait()): c for c in clients}
    alive = len(clients)
    while waiting:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            child, code = waiting.pop(task), task.result()
            alive -= 1
            if code == 0:
                continue
            progress.warn(f"client {child.name} exited with code {code}:\n{child.tail(6)}")
            if alive < min_clients:
                raise RunFailed(
                    f"only {alive} clients are left and the job needs minClients={min_clients}; "
                    f"client {child.name} failed:\n{child.tail(6)}"
                )


async def _watch_status(watched: _Watched, progress: Progress, min_clients: int) -> None:
    """Show progress; fail once sites that cannot read their data leave too few to train.

    Locally a site's data is files on this machine, which do not fix themselves while the
    job waits (in a cluster the aggregator does wait: someone may fix the export or CVAT).
    """
    seq = -1
    timeout = aiohttp.ClientTimeout(total=60)
    trust = client_context(ca_file=watched.ca) if watched.ca else None
    connector = aiohttp.TCPConnector(ssl=trust) if trust else None
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        while True:
            try:
                async with session.get(
                    f"{watched.url}/v1/status", params={"after": seq, "wait": 20}
                ) as response:
                    status = await response.json()
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)  # the aggregator is restarting or gone
                continue
            seq = int(status["seq"])
            progress.update(status)
            errors = status.get("siteErrors") or {}
            able = int(status["clients"]["known"]) - len(errors)
            if errors and able < min_clients and status["phase"] not in ("done", "failed"):
                reasons = "\n".join(f"  {error}" for error in errors.values())
                raise RunFailed(
                    f"only {able} of {status['clients']['known']} sites can read their data "
                    f"and the job needs minClients={min_clients}:\n{reasons}"
                )
            if status["phase"] in ("done", "failed"):
                return


def _read_summary(path: Path, children: list[Child]) -> dict[str, Any]:
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
        return summary
    except (OSError, json.JSONDecodeError):
        aggregator = children[0] if children else None
        detail = f"\n{aggregator.tail()}" if aggregator else ""
        raise RunFailed(f"the aggregator ended without a summary{detail}") from None


def job_failed(summary: dict[str, Any]) -> bool:
    return summary.get("phase") != "done"
