"""The simulated sites of bench/load_sites.py, a few hundred per worker process on one asyncio
loop, each with one keep-alive connection speaking the aggregator's real protocol: a bearer
token, `GET /v1/job`, the `/v1/task` long-poll (taking the model with the task, as the real
client does), the site report, the model checked as the real client checks it, and the update
upload with the real client's headers and body; the training is a fixed perturbation and
`trainSeconds` of sleep. The driver starts it as a script, `python bench/load_sites_worker.py
CONFIG.json` (the aggregator's URL and CA, the sites and their tokens, where to write), and it
writes what it saw (per site and round, refusals, retries, sites that gave up) as JSON to the
config's `out`, also when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from load_sites_config import KIB, raise_fd_limit

from flotilla.fl.client.transport import SITE_HEADER, Backoff
from flotilla.fl.resume import UPLOAD_ID_HEADER, new_upload_id
from flotilla.fl.tls import client_context

EXAMPLES = 64  # what each simulated site says it trained on
PERTURBATION = 1e-3  # the fake training's step: a fixed pattern of this size
PIECE = 64 * KIB  # upload bodies are sent in pieces of this size
# Each site's socket buffers. A real site's are in its own kernel; here all share the
# aggregator's host, and autotuned (tcp_wmem, tcp_rmem: up to 4 and 32 MB), 1,000 sites put
# the host in TCP memory pressure (tcp_mem), which drops packets of every connection on it.
SOCKET_BUFFER = 64 * KIB
# The protocol's names for a task that brings its model (fl/headers.py), spelled
# here too so this generator also runs against trees from before them (A/B runs).
MODEL_HELD_HEADER, TASK_HEADER = "X-Flotilla-Model-Held", "X-Flotilla-Task"


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


@dataclass
class Tally:
    """What one worker process saw: per site and round, and what went wrong."""

    events: list[dict[str, Any]] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    fatal: list[str] = field(default_factory=list)
    ended: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Body:
    data: memoryview
    headers: dict[str, str]


class SharedModel:
    """The job's layout and, per model version, the update every site of this process sends:
    the first site to download a version keeps its bytes; the others check theirs and drop."""

    def __init__(self, job: Any) -> None:
        from flotilla.fl.modelstate import build_job_model
        from flotilla.fl.wire import model_layout

        self.job = job
        self.layout = model_layout(build_job_model(job).state_dict())
        self._bodies: dict[int, asyncio.Future[Body]] = {}

    async def body(
        self, version: int, download: Callable[[bytearray | None], Awaitable[None]]
    ) -> Body:
        while (kept := self._bodies.get(version)) is not None:
            await download(None)
            with contextlib.suppress(Exception):  # its keeper's download failed: keep it here
                return await kept
        kept = self._bodies[version] = asyncio.get_running_loop().create_future()
        kept.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            buffer = self.layout.allocate()
            await download(buffer)
            kept.set_result(self._update(buffer))
        except BaseException as error:
            del self._bodies[version]
            kept.set_exception(error if isinstance(error, Exception) else RuntimeError("stopped"))
            raise
        return kept.result()

    def _update(self, weights: bytearray) -> Body:
        """What the real client uploads after training (fl/client/loop.py `_train_round`)."""
        import torch

        from flotilla.fl.codec import UpdateEncoder

        compression = self.job.spec.compression
        encoder = UpdateEncoder(
            self.layout,
            dtype=compression.dtype,
            zstd_level=compression.zstd_level if compression.zstd else None,
        )
        views = self.layout.views(weights)
        generator = torch.Generator().manual_seed(0)
        step = {
            name: torch.randn(view.shape, generator=generator).sign_() * PERTURBATION
            for name, view in views.items()
        }
        headers = {"Content-Type": "application/octet-stream"}
        if compression.dtype == "float32":  # the trained weights, from the wire buffer
            with torch.no_grad():
                for name, view in views.items():
                    view.add_(step[name])
            data = encoder.encode(weights, views)
            headers["X-Flotilla-Update"] = "weights"
        else:  # the delta, quantized
            delta = self.layout.allocate()
            delta_views = self.layout.views(delta)
            for name, view in delta_views.items():
                view.copy_(step[name])
            data = encoder.encode(delta, delta_views)
        if encoder.compression:
            headers["X-Flotilla-Compression"] = encoder.compression
        return Body(data=data, headers=headers | encoder.restarts.headers())


class Site:
    """One simulated client: one keep-alive connection, the real client's requests in order
    (fl/client/loop.py `run`), training replaced by the shared fixed perturbation."""

    def __init__(self, *, name: str, token: str, run: WorkerRun) -> None:
        self.name, self.run = name, run
        self.received: tuple[int, Body] | None = None  # the model that came with a task
        self.task_heard = 0.0  # when the last task's answer began
        self.headers = {"Authorization": f"Bearer {token}"}
        connector = aiohttp.TCPConnector(
            limit=1, ssl=run.ssl or False, keepalive_timeout=3600, socket_factory=_socket
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=300),
        )

    async def play(self) -> str:
        """Join, then do what the aggregator says until the job ends; returns its phase."""
        from flotilla.fl.client.loop import STALE

        try:
            info = await self.call("GET", "/v1/job", _json)
            self.headers[SITE_HEADER] = info["site"]
            shared = await self.run.model(info)
            self.run.joined()
            while True:
                task = await self.next_task(shared)
                received, action = self.task_heard, task["action"]
                try:
                    if action == "train":
                        await self.train(task, received, shared)
                    elif action in ("report", "evaluate"):
                        await self.report(task)
                    elif action in ("done", "failed"):
                        return str(action)
                except Refused as refused:
                    self.run.tally.refused[refused.reason] += 1
                    if refused.reason not in STALE:
                        raise
        finally:
            await self.session.close()

    async def next_task(self, shared: SharedModel) -> dict[str, Any]:
        """The /v1/task long-poll, offering to take the model with the task as the real
        client does (it holds none here: each round's model is new)."""
        from flotilla.fl.client.loop import LONG_POLL_SECONDS

        async def read(response: aiohttp.ClientResponse) -> Any:
            self.task_heard = time.time()  # before a model that comes with it
            raw = response.headers.get(TASK_HEADER)
            if raw is None:
                return await _json(response)
            task = json.loads(raw)
            version, unread = int(task["modelVersion"]), [response]

            async def download(into: bytearray | None) -> None:
                if unread:  # this answer's body; a retry for a failed keeper asks anew
                    await self.read_model(unread.pop(), shared, version, into)
                else:
                    await self.download(version, shared, into)

            self.received = (version, await shared.body(version, download))
            return task

        path = f"/v1/task?wait={LONG_POLL_SECONDS:g}"
        task: dict[str, Any] = await self.call("GET", path, read, headers={MODEL_HELD_HEADER: "-1"})
        return task

    async def report(self, task: dict[str, Any]) -> None:
        if task["action"] == "report":
            ready = {"ready": True, "data": {"train": EXAMPLES, "holdout": 0}}
            await self.call("POST", "/v1/site-report", _json, json=ready)
        else:  # no hold-out here: an evaluation of nothing
            path = f"/v1/evaluations/{task['modelVersion']}"
            await self.call("POST", path, _json, json={"loss": None, "examples": 0})

    async def train(self, task: dict[str, Any], received: float, shared: SharedModel) -> None:
        event: dict[str, Any] = {"site": self.name, "round": int(task["round"]), "task": received}
        self.run.tally.events.append(event)
        version = int(task["modelVersion"])
        if self.received is not None and self.received[0] == version:
            body = self.received[1]  # it came with the task
        else:
            body = await shared.body(version, lambda into: self.download(version, shared, into))
        event["model"] = time.time()
        await asyncio.sleep(self.run.train_seconds)
        metrics = {"train": {"loss": 0.0, "seconds": self.run.train_seconds, "epochs": 1}}
        headers = body.headers | {
            "X-Flotilla-Examples": str(EXAMPLES),
            "X-Flotilla-Metrics": json.dumps(metrics | {"eval": None}),
            UPLOAD_ID_HEADER: new_upload_id(),
        }
        path = f"/v1/rounds/{event['round']}/update"
        event["answer"] = "sent"
        try:
            # Its body held back until asked for, as the real client does (continued.py).
            await self.call("PUT", path, _json, body=body.data, headers=headers, expect100=True)
            event["answer"] = "accepted"
        except Refused as refused:
            event["answer"] = refused.reason
            raise
        finally:
            event["done"] = time.time()

    async def download(self, version: int, shared: SharedModel, into: bytearray | None) -> None:
        await self.call(
            "GET",
            f"/v1/model/{version}",
            lambda response: self.read_model(response, shared, version, into),
        )

    @staticmethod
    async def read_model(
        response: aiohttp.ClientResponse,
        shared: SharedModel,
        version: int,
        into: bytearray | None,
    ) -> None:
        """The model, checked as the real client checks it: its size and layout header."""
        size, header = shared.layout.total_size, shared.layout.header
        got, head = 0, bytearray()
        async for chunk in response.content.iter_any():
            if into is not None:
                into[got : got + len(chunk)] = chunk
            elif got < len(header):
                head += chunk[: len(header) - got]
            got += len(chunk)
        kept = into if into is not None else head
        if got != size or kept[: len(header)] != header:
            raise RuntimeError(f"model {version}: {got} bytes of {size}, or another layout")

    async def call(
        self,
        method: str,
        path: str,
        read: Callable[[aiohttp.ClientResponse], Awaitable[Any]],
        **kwargs: Any,
    ) -> Any:
        """One request, retried with the real client's backoff after a broken connection, a
        5xx or an unknown token (401); any other 4xx raises `Refused`."""
        backoff, started = Backoff(), time.monotonic()
        delays = backoff.delays()
        headers = self.headers | kwargs.pop("headers", {})
        body: memoryview | None = kwargs.pop("body", None)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        while True:
            if body is not None:
                kwargs["data"] = _pieces(body)
            try:
                async with self.session.request(
                    method, self.run.url + path, headers=headers, **kwargs
                ) as response:
                    if response.status >= 400:
                        raise Refused(response.status, await _reason(response))
                    return await read(response)
            except Refused as refused:
                if refused.status != 401 and refused.status < 500:
                    raise
                self.run.tally.errors[f"{refused.status} {refused.reason}"] += 1
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                self.run.tally.errors[type(error).__name__] += 1
            if backoff.expired(started):
                raise RuntimeError(f"{method} {path}: no answer in {backoff.give_up_after:.0f}s")
            await asyncio.sleep(next(delays))


def _socket(address: tuple[Any, ...]) -> socket.socket:
    family, kind, proto, _, _ = address
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    return sock


async def _pieces(body: memoryview) -> AsyncIterator[memoryview]:
    """A body in bounded pieces, each sent once the last drained, as a blocking socket
    sends (the real client): handed over whole, asyncio's TLS would encrypt all of it at
    once and keep it in memory until the aggregator reads it; 1,000 waiting uploads of a
    4 MB model made the generator 11 GB."""
    for start in range(0, len(body), PIECE):
        yield body[start : start + PIECE]


async def _json(response: aiohttp.ClientResponse) -> Any:
    return await response.json(content_type=None)


async def _reason(response: aiohttp.ClientResponse) -> str:
    """A refusal's `reason` (the aggregator answers 4xx as JSON), else its start."""
    raw = await response.read()
    try:
        return str(json.loads(raw).get("reason", ""))
    except (ValueError, AttributeError):
        return raw[:40].decode(errors="replace")


class WorkerRun:
    """One worker process: where the aggregator is, the shared model, the tally."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.url: str = config["url"]
        self.train_seconds: float = config["trainSeconds"]
        self.ssl = client_context(ca_file=Path(config["ca"])) if config["ca"] else None
        self.tally = Tally()
        self.joining = len(config["sites"])
        self._shared: SharedModel | None = None
        self._lock = asyncio.Lock()

    def joined(self) -> None:
        """A site has its session and the model: once all have, what they hold lives to the
        end, and the collector stops walking it (500 sites' sessions and connections: the
        collector was a quarter of this loop)."""
        self.joining -= 1
        if self.joining == 0:
            gc.collect()
            gc.freeze()

    async def model(self, info: dict[str, Any]) -> SharedModel:
        """The job's model, built once per process, checked against the aggregator's layout
        as the real client checks it."""
        from flotilla.api import parse_job

        async with self._lock:
            if self._shared is None:
                job = parse_job(info["spec"], source="the aggregator's /v1/job")
                self._shared = await asyncio.to_thread(SharedModel, job)
        if self._shared.layout.header[8:].decode().rstrip() != info["layoutHeader"]:
            raise RuntimeError("the aggregator builds other tensors for the job's model")
        return self._shared


async def play_sites(config: dict[str, Any]) -> Tally:
    """Every site of this worker, their starts spread over `rampSeconds`."""
    run = WorkerRun(config)
    sites: dict[str, str] = config["sites"]

    async def one(index: int, name: str, token: str) -> None:
        await asyncio.sleep(config["rampSeconds"] * index / max(len(sites), 1))
        try:
            run.tally.ended[await Site(name=name, token=token, run=run).play()] += 1
        except Exception as error:
            run.tally.fatal.append(f"{name}: {error!r}")

    # Stopped (SIGTERM: the run is over or stuck), a worker still reports what it saw.
    everything = asyncio.gather(*(one(i, *item) for i, item in enumerate(sites.items())))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, everything.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await everything
    return run.tally


def worker(config_path: Path) -> None:
    raise_fd_limit()
    # As the aggregator settles its collector (flotilla.cli.aggregator.settle_collector),
    # written out so the same generator can drive an aggregator of an older tree.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    config = json.loads(config_path.read_text())
    tally = asyncio.run(play_sites(config))
    result = {
        "events": tally.events,
        "refused": dict(tally.refused),
        "errors": dict(tally.errors),
        "fatal": tally.fatal[:20],
        "fatalCount": len(tally.fatal),
        "ended": dict(tally.ended),
    }
    Path(config["out"]).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description="One worker process of bench/load_sites.py: its share of the simulated sites."
    )
    parser.add_argument("config", type=Path, help="the worker's settings, as load_sites.py writes")
    worker(parser.parse_args().config)


if __name__ == "__main__":
    main()
