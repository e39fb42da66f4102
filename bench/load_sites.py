"""Many simulated sites on one real aggregator: round overhead, memory, dispatch, descriptors.

The aggregator is the product's own process (`flotilla aggregator`, TLS by default with a
throwaway CA, as `flotilla run` makes one). The sites are light simulated clients, a few
hundred per OS process on one asyncio loop each, that speak the real protocol: a bearer
token each (tokens.json, as the local runner writes it), `GET /v1/job`, the `/v1/task`
long-poll, the site report, the model download, and the update upload with the real
client's headers and body (the trained weights for float32 jobs, the job's compressed delta
otherwise, encoded by the product's `UpdateEncoder`). Local training is a fixed
perturbation of the downloaded weights and `--train-seconds` of sleep. Clients of one
process check every download as the real client does (its size and layout header) and keep
the bytes of the first one per model version: their updates are the same bytes, computed
once, so 1,000 sites need neither 1,000 models in memory nor 1,000 trainings of CPU.

Per model (`cnn`: the digits CNN, 38,282 parameters; `1m`: bench_models.deep_mlp 496 wide,
4 deep, 1.02M) and site count: the round's wall time (the aggregator's record, median of
the rounds after the first) and its overhead (wall minus the fake training); the
aggregator's CPU seconds per round and the generator's (both from /proc, over the same
rounds); the time from a round opening (its record's start) to each client receiving its
task (p50, p99, max); the aggregator's RSS before any client, with every client connected
(before round 1 opens) and at its peak (`VmHWM`), against the target of 3 models + 200 KiB
per connected client, and the peak's growth per client fitted over the site counts; the
bytes queued in the kernel for its connections (`ss`) and the host's TCP buffer memory,
with how often the host entered TCP memory pressure; its open descriptors and threads at
their peak; updates sampled, answered, refused and lost. Each site's own socket buffers are
held at 64 KiB (SOCKET_BUFFER): a real site's are in its own kernel, not the aggregator's.

    .venv/bin/python bench/load_sites.py [--models cnn,1m] [--clients 100,300,1000]
        [--rounds 4] [--processes 2] [--transport tls|plain] [--train-seconds 0.5]
        [--deadline 300] [--keep DIR] [--profile DIR]

The open-files limit is raised to the hard limit here; the aggregator inherits it (it does
not raise its own). A job whose round fails is not retried (`maxRoundRetries: 0`): the
table then says how many updates the failed round took, and why it failed.

Not part of the test suite: figures in one run, never pass/fail (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from bench_models import parameter_count
from procs import available_bytes, status_kib, stop_group

from flotilla.fl.client.transport import SITE_HEADER, Backoff
from flotilla.fl.resume import UPLOAD_ID_HEADER, new_upload_id
from flotilla.fl.tls import client_context

GIB, MIB, KIB = 1 << 30, 1 << 20, 1 << 10
BENCH_DIR = Path(__file__).resolve().parent
# (width, hidden layers) of bench_models.deep_mlp; None: the digits CNN on 8x8 images.
MODELS: dict[str, tuple[int, int] | None] = {"cnn": None, "1m": (496, 4)}
CNN_PARAMETERS = 38_282
EXAMPLES = 64  # what each simulated site says it trained on
PERTURBATION = 1e-3  # the fake training's step: a fixed pattern of this size
PIECE = 64 * KIB  # upload bodies are sent in pieces of this size
# Each site's socket buffers. A real site's are in its own kernel; here all share the
# aggregator's host, and autotuned (tcp_wmem, tcp_rmem: up to 4 and 32 MB), 1,000 sites put
# the host in TCP memory pressure (tcp_mem), which drops packets of every connection on it.
SOCKET_BUFFER = 64 * KIB
TARGET_OVERHEAD_S = 1.0  # CNN at 1,000 clients
TARGET_MODELS, TARGET_PER_CLIENT = 3, 200 * KIB


def model_parameters(model: str) -> int:
    shape = MODELS[model]
    return CNN_PARAMETERS if shape is None else parameter_count(*shape)


def model_env(model: str) -> dict[str, str]:
    """What the aggregator and the generator need to build the model: bench/, its shape."""
    width, depth = MODELS[model] or (0, 0)
    return {
        "PYTHONPATH": f"{BENCH_DIR}:{os.environ.get('PYTHONPATH', '')}",
        "FLOTILLA_BENCH_WIDTH": str(width),
        "FLOTILLA_BENCH_DEPTH": str(depth),
    }


def raise_fd_limit() -> int:
    """Soft limit on open files up to the hard one (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the simulated sites (worker processes) ------------------------------------------------


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
        from flotilla.fl.client.loop import LONG_POLL_SECONDS, STALE

        try:
            info = await self.call("GET", "/v1/job", _json)
            self.headers[SITE_HEADER] = info["site"]
            shared = await self.run.model(info)
            while True:
                path = f"/v1/task?wait={LONG_POLL_SECONDS:g}"
                task = await self.call("GET", path, _json)
                received, action = time.time(), task["action"]
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
            await self.call("PUT", path, _json, body=body.data, headers=headers)
            event["answer"] = "accepted"
        except Refused as refused:
            event["answer"] = refused.reason
            raise
        finally:
            event["done"] = time.time()

    async def download(self, version: int, shared: SharedModel, into: bytearray | None) -> None:
        """The model, checked as the real client checks it: its size and layout header."""
        size, header = shared.layout.total_size, shared.layout.header

        async def read(response: aiohttp.ClientResponse) -> None:
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

        await self.call("GET", f"/v1/model/{version}", read)

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
        self._shared: SharedModel | None = None
        self._lock = asyncio.Lock()

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


# -- the aggregator and what is measured of it -----------------------------------------------


def write_job(
    *, scratch: Path, model: str, sites: list[str], rounds: int, tls: bool, deadline: float
) -> Path:
    """Every site in every round, a deadline no healthy round comes near, no evaluation."""
    spec: dict[str, Any] = {
        "rounds": rounds,
        "labels": [str(d) for d in range(10)],
        "model": {"name": "cnn-small"},
        "data": {"cvatExport": {"path": str(scratch / "no-data")}},  # never read: sites simulate
        "sites": [{"name": site} for site in sites],
        "evaluation": {"federated": False},
        "clients": {  # a round that fails, fails the job: its figures say why
            "minClients": len(sites),
            "roundDeadlineSeconds": deadline,
            "joinGraceSeconds": 300,
            "maxRoundRetries": 0,
        },
        "strategy": {"name": "fedavg"},
        "security": {"tls": {"mode": "operator" if tls else "disabled"}},
    }
    if MODELS[model]:
        spec["model"] = {"entrypoint": "bench_models:deep_mlp"}
    spec["model"]["input"] = {"channels": 1, "height": 8, "width": 8}
    document = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "load"},
        "spec": spec,
    }
    path = scratch / "job.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(document))
    return path


def start_aggregator(
    *, job: Path, scratch: Path, env: dict[str, str], tls_args: list[str], profile: Path | None
) -> tuple[subprocess.Popen[bytes], str]:
    """`flotilla aggregator` as `flotilla run` starts it; returns it and its URL. With
    `profile`, under cProfile (its event-loop thread only), the stats written there."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    command = [
        *(sys.executable, *profiler, "-m", "flotilla", "aggregator", "--job", str(job)),
        *("--tokens-file", str(scratch / "tokens.json"), "--state-dir", str(scratch / "state")),
        *("--host", "127.0.0.1", "--port", "0", "--ready-line", "--no-tracking", *tls_args),
    ]
    with open(scratch / "aggregator.log", "wb") as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("FLOTILLA-READY "):
        stop_group(process)
        raise RuntimeError(f"the aggregator did not start; see {scratch}/aggregator.log")
    return process, line.split()[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Sample(NamedTuple):
    at: float  # wall-clock time
    cpu: float  # the aggregator's CPU seconds so far
    rss: int  # KiB
    fds: int
    threads: int
    generator: float  # the workers' CPU seconds so far
    tcp: int  # KiB of kernel memory in TCP buffers, the whole host (/proc/net/sockstat)
    sockets: int  # KiB queued in the aggregator's client sockets (ss: receive + send), or -1


class Watch:
    """Samples the aggregator (CPU, RSS, descriptors, threads), the workers' CPU and the
    host's TCP buffer memory from /proc every `period` seconds, in a thread."""

    def __init__(self, pid: int, port: int, period: float = 0.1) -> None:
        self.pid, self.port, self.period = pid, port, period
        self.workers: list[int] = []
        self.rows: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.period):
            pid, count = self.pid, count + 1
            self.rows.append(
                Sample(
                    at=time.time(),
                    cpu=cpu_seconds(pid),
                    rss=status_kib(pid, "VmRSS"),
                    fds=open_fds(pid),
                    threads=status_kib(pid, "Threads"),
                    generator=sum(cpu_seconds(w) for w in self.workers),
                    tcp=tcp_kib(),
                    sockets=socket_kib(self.port) if count % 10 == 0 else -1,
                )
            )

    def at(self, moment: float) -> Sample:
        """The last sample taken before `moment` (the first one if none was)."""
        before = [row for row in self.rows if row.at <= moment]
        return before[-1] if before else self.rows[0]

    def connected(self, clients: int) -> Sample:
        """The first sample with a descriptor per client: every site connected, round 1 not
        yet open (it opens once every site has reported)."""
        return next((row for row in self.rows if row.fds >= clients), self.rows[-1])

    def peak(self, column: str) -> int:
        return max((int(getattr(row, column)) for row in self.rows), default=0)


def tcp_kib() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // KIB
    return 0


def socket_kib(port: int) -> int:
    """Bytes queued in the kernel for the aggregator's side of its connections, in KiB."""
    out = subprocess.run(
        ["ss", "-tmnH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    total = 0
    for part in out.split("skmem:(")[1:]:
        fields = dict(
            (item[0], int(item[1:])) for item in part.split(")")[0].split(",") if item[1:].isdigit()
        )
        total += fields.get("r", 0) + fields.get("w", 0)
    return total // KIB


def tcp_memory_pressures() -> int:
    """How often the host's TCP entered memory pressure (tcp_mem) since boot."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names[0] == "TcpExt:" and "TCPMemoryPressures" in names:
            return int(values[names.index("TCPMemoryPressures")])
    return 0


def get_json(url: str, context: Any, timeout: float = 60) -> Any:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        return json.loads(response.read())


@dataclass(frozen=True)
class RunConfig:
    model: str
    clients: int
    rounds: int
    processes: int
    tls: bool
    train_seconds: float
    ramp_seconds: float
    timeout: float
    deadline: float
    profile: Path | None = None


def start_workers(
    config: RunConfig, *, url: str, ca: Path | None, tokens: dict[str, str], scratch: Path
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    names = sorted(tokens)
    workers = []
    for index in range(config.processes):
        mine = names[index :: config.processes]
        settings = {
            "url": url,
            "ca": str(ca) if ca else None,
            "trainSeconds": config.train_seconds,
            "rampSeconds": config.ramp_seconds,
            "sites": {name: tokens[name] for name in mine},
            "out": str(scratch / f"worker-{index}.json"),
        }
        path = scratch / f"worker-{index}.config.json"
        path.write_text(json.dumps(settings))
        with open(scratch / f"worker-{index}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **model_env(config.model)},
                start_new_session=True,
            )
        workers.append((process, Path(settings["out"])))
    return workers


def wait_for_end(
    url: str, context: Any, workers: list[subprocess.Popen[bytes]], timeout: float
) -> str:
    """The job's end phase, from /healthz twice a second (cheap: a long-poll of /v1/status
    would build the status on every update); 'stuck' or 'workers died' otherwise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            phase = str(get_json(f"{url}/healthz", context, timeout=10)["phase"])
        except (OSError, ValueError):  # URLError, a timeout: an aggregator too busy to answer
            phase = "no answer"
        if phase in ("done", "failed"):
            return phase
        if all(w.poll() is not None for w in workers):
            return "workers died"
        time.sleep(0.5)
    return "stuck"


def final_state(url: str, context: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The completed rounds' records and the status, or none if the aggregator won't say."""
    try:
        return get_json(f"{url}/v1/history", context), get_json(f"{url}/v1/status", context)
    except (OSError, ValueError) as error:
        return [], {"message": f"no status: {error}", "failure": None}


def run_one(config: RunConfig, root: Path) -> dict[str, Any]:
    """One aggregator, `config.clients` simulated sites, the job to its end; the figures."""
    from flotilla.local.tls import write_local_tls

    scratch = Path(tempfile.mkdtemp(prefix=f"load-{config.model}-{config.clients}-", dir=root))
    sites = [f"site-{i:04d}" for i in range(config.clients)]
    tokens = {site: secrets.token_urlsafe(32) for site in sites}  # as the local runner makes
    (scratch / "tokens.json").touch(mode=0o600)
    (scratch / "tokens.json").write_text(json.dumps(tokens))
    job = write_job(
        scratch=scratch,
        model=config.model,
        sites=sites,
        rounds=config.rounds,
        tls=config.tls,
        deadline=config.deadline,
    )
    tls = write_local_tls(scratch / "tls") if config.tls else None
    env = {**os.environ, **model_env(config.model), "FLOTILLA_LOG_LEVEL": "WARNING"}
    aggregator, url = start_aggregator(
        job=job,
        scratch=scratch,
        env=env,
        tls_args=tls.aggregator_args() if tls else [],
        profile=config.profile / f"aggregator-{config.model}-{config.clients}.pstats"
        if config.profile
        else None,
    )
    context = client_context(ca_file=tls.ca) if tls else None
    base = status_kib(aggregator.pid, "VmRSS")
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        pressures = tcp_memory_pressures()
        with Watch(aggregator.pid, port=int(url.rsplit(":", 1)[1])) as watch:
            workers = start_workers(
                config, url=url, ca=tls.ca if tls else None, tokens=tokens, scratch=scratch
            )
            watch.workers = [w.pid for w, _ in workers]
            phase = wait_for_end(url, context, [w for w, _ in workers], config.timeout)
            history, status = final_state(url, context)
            peak = status_kib(aggregator.pid, "VmHWM")
            limit = _fd_limit(aggregator.pid)
            ended = time.monotonic() + (60 if phase in ("done", "failed") else 0)
            for process, _ in workers:  # the sites learn the end on their next task
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(ended - time.monotonic(), 0.1))
    finally:
        for process, _ in workers:
            if process.poll() is None:
                stop_group(process, timeout=5)
        stop_group(aggregator)
    tallies = [json.loads(out.read_text()) for _, out in workers if out.exists()]
    return summarize(
        config,
        phase=phase,
        history=history,
        tallies=tallies,
        watch=watch,
        memory={"base": base, "peak": peak, "pressures": tcp_memory_pressures() - pressures},
        fd_limit=limit,
    ) | {"scratch": str(scratch), "message": status["message"], "failure": status["failure"]}


def _fd_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * share + 0.999999) - 1, 0)] if ordered else float("nan")


def summarize(
    config: RunConfig,
    *,
    phase: str,
    history: list[dict[str, Any]],
    tallies: list[dict[str, Any]],
    watch: Watch,
    memory: dict[str, int],
    fd_limit: str,
) -> dict[str, Any]:
    """The run's figures: rounds after the first (warm-up) unless there is only one."""
    measured = history[1:] or history
    opened = {r["round"]: r["started_at"] for r in history}
    events = [e for t in tallies for e in t["events"]]
    rounds = {r["round"] for r in measured}
    dispatch = [e["task"] - opened[e["round"]] for e in events if e["round"] in rounds]
    cpu, generator = [], []
    for record in measured:
        start, end = record["started_at"], record["started_at"] + record["duration_seconds"]
        cpu.append(watch.at(end).cpu - watch.at(start).cpu)
        generator.append(watch.at(end).generator - watch.at(start).generator)
    return {
        "model": config.model,
        "clients": config.clients,
        "phase": phase,
        "rounds": len(history),
        "first": history[0]["duration_seconds"] if history else float("nan"),
        "wall": statistics.median(r["duration_seconds"] for r in measured) if measured else 0.0,
        "cpu": statistics.median(cpu) if cpu else float("nan"),
        "generator": statistics.median(generator) if generator else float("nan"),
        "dispatch": [percentile(dispatch, q) for q in (0.5, 0.99, 1.0)],
        "base": memory["base"] * KIB,
        "connected": watch.connected(config.clients).rss * KIB,
        "peak": memory["peak"] * KIB,
        "fds": watch.peak("fds"),
        "tcp": watch.peak("tcp") * KIB,
        "sockets": watch.peak("sockets") * KIB,
        "pressures": memory["pressures"],
        "fdLimit": fd_limit,
        "threads": watch.peak("threads"),
        "sampled": sum(len(r["sampled"]) for r in history),
        "answered": sum(len(r["answered"]) for r in history),
        # Sampled and not folded in a completed round, and every task of a round that failed.
        "lost": sum(len(r["sampled"]) - len(r["answered"]) for r in history)
        + sum(e["round"] not in opened for e in events),
        "accepted": sum(e.get("answer") == "accepted" for e in events),
        "unanswered": dict(
            Counter(str(e.get("answer")) for e in events if e.get("answer") != "accepted")
        ),
        "refused": sum((Counter(t["refused"]) for t in tallies), Counter()),
        "errors": sum((Counter(t["errors"]) for t in tallies), Counter()),
        "fatal": [f for t in tallies for f in t["fatal"]][:5],
        "workersReported": len(tallies),
    }


# -- the report ----------------------------------------------------------------------------


def needed_bytes(*, model: str, clients: int, processes: int) -> int:
    """Aggregator: its runtime, 4 models, per client its TLS buffers and a download's
    piece in flight twice (plain and encrypted, at most 1 MiB each); a worker: Python,
    torch and aiohttp, ~100 KiB per site, 2 models."""
    size = model_parameters(model) * 4
    per_client = 0.5 * MIB + 2 * min(size, MIB)
    return int(0.5 * GIB + 4 * size + clients * per_client + processes * (0.4 * GIB + 2 * size))


HEADER = (
    "| model | clients | rounds | round wall (round 1) | **overhead** | CPU / round: "
    "aggregator, generator | task after round opens p50 / p99 / max | aggregator RSS: "
    "before → connected → peak | **(peak - before) / (3 models + 200 KiB x clients)** | "
    "(peak - before - 3 models) / client | aggregator's socket queues peak; host TCP buffers "
    "peak (pressure events) | fds peak "
    "(limit) | threads peak | answered / sampled (lost) | refused; retried |"
)


def row(result: dict[str, Any], train_seconds: float) -> str:
    size = model_parameters(result["model"]) * 4
    clients = result["clients"]
    grown = result["peak"] - result["base"]
    budget = TARGET_MODELS * size + TARGET_PER_CLIENT * clients
    p50, p99, top = result["dispatch"]
    refused = ", ".join(f"{k} {v}" for k, v in result["refused"].items()) or "0"
    retried = ", ".join(f"{k} {v}" for k, v in result["errors"].items()) or "0"
    timing = (
        f"{result['wall']:.3f} s ({result['first']:.2f} s) | "
        f"**{result['wall'] - train_seconds:.3f} s** | "
        f"{result['cpu']:.2f} s, {result['generator']:.2f} s | "
        f"{p50 * 1e3:.0f} / {p99 * 1e3:.0f} / {top * 1e3:.0f} ms"
        if result["rounds"]
        else "none completed | | |"
    )
    return (
        f"| {result['model']} ({model_parameters(result['model']) / 1e6:.2f}M) | {clients} | "
        f"{result['rounds']} ({result['phase']}) | {timing} | "
        f"{result['base'] / MIB:.0f} → {result['connected'] / MIB:.0f} → "
        f"{result['peak'] / MIB:.0f} MiB | **{grown / budget:.2f}x** | "
        f"{(grown - TARGET_MODELS * size) / clients / KIB:.0f} KiB | "
        f"{result['sockets'] / MIB:.0f} MiB; {result['tcp'] / MIB:.0f} MiB "
        f"({result['pressures']}) | "
        f"{result['fds']} ({result['fdLimit']}) | {result['threads']} | "
        f"{result['answered']} / {result['sampled']} ({result['lost']}) | {refused}; {retried} |"
    )


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per client."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def report_targets(results: list[dict[str, Any]], train_seconds: float) -> None:
    print("\nTargets (measured, not asserted):")
    for model in dict.fromkeys(r["model"] for r in results):
        mine = [r for r in results if r["model"] == model]
        if len(mine) >= 2:
            peak = slope([(r["clients"], r["peak"] - r["base"]) for r in mine])
            idle = slope([(r["clients"], r["connected"] - r["base"]) for r in mine])
            print(
                f"- {model}: aggregator peak grows {peak / KIB:.0f} KiB per connected client, "
                f"{idle / KIB:.0f} KiB with clients connected and idle (least squares over "
                f"{', '.join(str(r['clients']) for r in mine)}; target 200 KiB: "
                f"{peak / TARGET_PER_CLIENT:.2f}x)"
            )
    for r in results:
        size = model_parameters(r["model"]) * 4
        budget = TARGET_MODELS * size + TARGET_PER_CLIENT * r["clients"]
        lost = r["lost"]
        refused = sum(r["refused"].values())
        line = (
            f"- {r['model']} x {r['clients']}: memory {(r['peak'] - r['base']) / MIB:.1f} MiB "
            f"of {budget / MIB:.1f} MiB allowed ({(r['peak'] - r['base']) / budget:.2f}x); "
            f"lost {lost} (not folded in a completed round; uploads the generator saw "
            f"accepted: {r['accepted']}, answers in completed rounds: {r['answered']}), "
            f"refused {refused}, sites that gave up {len(r['fatal'])}"
        )
        if r["model"] == "cnn" and r["rounds"]:
            overhead = r["wall"] - train_seconds
            line += f"; overhead {overhead:.3f} s of {TARGET_OVERHEAD_S:g} s "
            line += f"({overhead / TARGET_OVERHEAD_S:.2f}x)"
        print(line)
        if r["phase"] != "done":
            print(f"  the job ended {r['phase']}: {r['failure'] or r['message']}")
            print(f"  uploads the generator did not see accepted: {r['unanswered']}")
        for fatal in r["fatal"]:
            print(f"  gave up: {fatal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,1m", help="of cnn, 1m (comma-separated)")
    parser.add_argument("--clients", default="100,300,1000", help="site counts (comma-separated)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run; the first warms up")
    parser.add_argument("--processes", type=int, default=2, help="generator processes")
    parser.add_argument("--transport", choices=["tls", "plain"], default="tls")
    parser.add_argument("--train-seconds", type=float, default=0.5, help="the fake training")
    parser.add_argument("--ramp-seconds", type=float, default=2.0, help="spread of site starts")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run at most")
    parser.add_argument(
        "--deadline", type=float, default=300, help="roundDeadlineSeconds; no round is retried"
    )
    parser.add_argument("--keep", type=Path, help="keep each run's logs and state under here")
    parser.add_argument(
        "--profile", type=Path, help="run the aggregator under cProfile, writing stats here"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    limit = raise_fd_limit()
    print(
        f"machine: {os.cpu_count()} cores, {available_bytes() / GIB:.0f} GB free; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.transport}; open files limit {limit} "
        f"(the aggregator inherits it); fake training {args.train_seconds:g} s; "
        f"{args.processes} generator processes\n"
    )
    print(HEADER)
    print("|" + " --- |" * (HEADER.count("|") - 1))
    results = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        temporary = None if args.keep else tempfile.TemporaryDirectory(prefix="flotilla-load-")
        root = args.keep or Path(stack.enter_context(temporary))  # type: ignore[arg-type]
        for model in args.models.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                need = needed_bytes(model=model, clients=clients, processes=args.processes)
                if need > available_bytes() - 2 * GIB:
                    print(f"| {model} | {clients} | not run: would need ~{need / GIB:.1f} GB |")
                    continue
                config = RunConfig(
                    model=model,
                    clients=clients,
                    rounds=args.rounds,
                    processes=args.processes,
                    tls=args.transport == "tls",
                    train_seconds=args.train_seconds,
                    ramp_seconds=args.ramp_seconds,
                    timeout=args.timeout,
                    deadline=args.deadline,
                    profile=args.profile.resolve() if args.profile else None,
                )
                results.append(run_one(config, root))
                print(row(results[-1], args.train_seconds), flush=True)
    report_targets(results, args.train_seconds)


if __name__ == "__main__":
    main()
