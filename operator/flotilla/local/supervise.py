"""Watching a local run's processes: progress from /v1/status, the clients, the end.

The run ends when the aggregator exits, every client has, or the user stops it. A job
whose end the aggregator reported gets the aggregator's own deadline to exit
(ending.exit_deadline_seconds: the MLflow flush and the model's registration) before it
is stopped; its outcome stands either way (outcome.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from flotilla.fl.tls import client_context
from flotilla.local.outcome import CLIENTS_GONE, FINISHED, RunFailed, stop_reason
from flotilla.local.processes import Child
from flotilla.local.progress import Progress

# Clients exit as soon as they learn the job is done. Until the status says so too, the
# aggregator gets this long; once it does, its own deadline.
STATUS_GRACE_SECONDS = 30.0


@dataclass
class Seen:
    """The last /v1/status the runner saw: how the job ended if the summary cannot say."""

    status: dict[str, Any] | None = None

    @property
    def phase(self) -> str | None:
        return None if self.status is None else str(self.status.get("phase"))


@dataclass(frozen=True)
class Watched:
    url: str
    ca: Path | None  # the run's CA, when the aggregator serves HTTPS
    seen: Seen


async def supervise(
    aggregator: Child,
    clients: list[Child],
    watched: Watched,
    progress: Progress,
    stop: asyncio.Event,
    *,
    min_clients: int,
    exit_deadline: float,
) -> None:
    watcher = asyncio.create_task(_watch_status(watched, progress, min_clients))
    aggregator_done = asyncio.create_task(aggregator.process.wait())
    clients_done = asyncio.create_task(_watch_clients(clients, progress, min_clients))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait(
            {aggregator_done, clients_done, stopped, watcher}, return_when=asyncio.FIRST_COMPLETED
        )
        if not stop.is_set():
            for task in (clients_done, watcher):
                if task.done() and task.exception():
                    raise task.exception()  # type: ignore[misc]
            if not aggregator_done.done():
                await _await_aggregator_exit(
                    aggregator_done, stopped, watcher, watched.seen, deadline=exit_deadline
                )
    finally:
        for pending in (watcher, clients_done, stopped):
            pending.cancel()
    phase = watched.seen.phase
    reason = stop_reason(
        phase=phase, interrupted=stop.is_set(), aggregator_exited=aggregator_done.done()
    )
    if reason == CLIENTS_GONE:
        tails = "\n".join(f"--- {c.name} ---\n{c.tail(8)}" for c in clients)
        raise RunFailed(f"{reason}:\n{tails}")
    if reason is not None:
        raise RunFailed(reason)
    if not aggregator_done.done():
        progress.warn(_stopping_note(phase, interrupted=stop.is_set(), deadline=exit_deadline))


async def _await_aggregator_exit(
    aggregator_done: asyncio.Task[int],
    stopped: asyncio.Task[Any],
    watcher: asyncio.Task[None],
    seen: Seen,
    *,
    deadline: float,
) -> None:
    """The clients left: give the aggregator time to end the job on its own. Once its
    status says the job ended, that is its own deadline: flush MLflow, register the model."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    if seen.phase not in FINISHED:
        await asyncio.wait(
            {aggregator_done, stopped, watcher},
            timeout=min(STATUS_GRACE_SECONDS, deadline),
            return_when=asyncio.FIRST_COMPLETED,
        )
    if seen.phase in FINISHED and not (aggregator_done.done() or stopped.done()):
        await asyncio.wait(
            {aggregator_done, stopped},
            timeout=max(until - loop.time(), 0.0),
            return_when=asyncio.FIRST_COMPLETED,
        )


def _stopping_note(phase: str | None, *, interrupted: bool, deadline: float) -> str:
    why = (
        "interrupted while the aggregator was finishing the job (its last MLflow records, "
        "the model's registration)"
        if interrupted
        else f"the aggregator did not exit within {deadline:.0f}s of the job's end "
        "(spec.tracking.flushTimeoutSeconds plus time to register the model)"
    )
    return (
        f"{why}; stopping it. The job itself is {phase}. Whatever MLflow lacks is sent "
        "when the job is run again with the same --state-dir"
    )


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


async def _watch_status(watched: Watched, progress: Progress, min_clients: int) -> None:
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
            watched.seen.status = status
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
