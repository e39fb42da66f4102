"""The aggregator process: build the engine from the spec (or resume it), serve HTTP, run rounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.checkpoint import CheckpointStore
from flotilla.fl.aggregator.engine import Phase, RoundEngine
from flotilla.fl.aggregator.evaluation import CentralEvaluator
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from flotilla.fl.aggregator.server import build_app
from flotilla.fl.aggregator.tokens import TokenBook, TokenFileWatcher
from flotilla.fl.aggregator.tracked import attach_exporter, recover_state, run_exporter
from flotilla.fl.modelstate import initial_global_model
from flotilla.fl.strategies import build_strategy
from flotilla.fl.tls import server_context
from flotilla.tracking.exporter import TrackingExporter

log = logging.getLogger(__name__)

RELEASE_CLIENTS_SECONDS = 5.0
SHUTDOWN_SECONDS = 5.0


@dataclass(frozen=True)
class AggregatorOptions:
    state_dir: Path
    host: str = "0.0.0.0"
    port: int = 8080
    exit_when_done: bool = False
    device: str = "cpu"
    tracking: bool = True
    tracking_uri: str | None = None  # overrides the spec's and $MLFLOW_TRACKING_URI
    metrics_port: int | None = None  # None: /metrics on the API port
    # HTTPS with this certificate and key; both None: plain HTTP (spec.security.tls disabled).
    tls_cert: Path | None = None
    tls_key: Path | None = None


def check_transport(job: FederatedJob, options: AggregatorOptions) -> None:
    """Plain HTTP only when the spec says so: tokens and models would cross the network in
    clear. Raises ValueError naming what is missing."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    mode = job.spec.security.tls.mode
    if options.tls_cert is None and mode != "disabled":
        raise ValueError(
            f"spec.security.tls.mode is {mode!r}: serve HTTPS with --tls-cert and --tls-key, "
            "or set spec.security.tls.mode: disabled for plain HTTP"
        )


def build_engine(job: FederatedJob, *, sites: list[str], options: AggregatorOptions) -> RoundEngine:
    layout, model = initial_global_model(job)
    test_data = job.spec.evaluation.test_data
    evaluator = (
        CentralEvaluator(job, test_data, device=options.device) if test_data is not None else None
    )
    store = CheckpointStore(options.state_dir)
    engine = RoundEngine(
        job=job,
        sites=sites,
        strategy=build_strategy(job.spec.strategy),
        layout=layout,
        initial_model=model,
        store=store,
        evaluator=evaluator,
    )
    loaded = store.load(layout)
    if loaded is not None:
        engine.restore(loaded[0])
    return engine


async def serve(
    job: FederatedJob,
    *,
    tokens: Mapping[str, str],
    options: AggregatorOptions,
    on_ready: Callable[[str], None],
    tokens_file: Path | None = None,
) -> int:
    """Run the job to its end (or forever, unless exit_when_done). Returns the exit code.

    With `tokens_file` (where `tokens` came from), sites join and leave as the file changes."""
    check_transport(job, options)
    book = TokenBook(tokens)
    await asyncio.to_thread(
        recover_state,
        job,
        state_dir=options.state_dir,
        uri_override=options.tracking_uri,
        enabled=options.tracking,
    )
    engine = build_engine(job, sites=book.sites, options=options)
    watcher = (
        TokenFileWatcher(tokens_file, book, on_change=engine.set_sites) if tokens_file else None
    )
    exporter = attach_exporter(
        engine,
        state_dir=options.state_dir,
        uri_override=options.tracking_uri,
        enabled=options.tracking,
    )
    metrics = AggregatorMetrics(
        engine, tracking_failures=lambda: exporter.failures_total if exporter else 0
    )
    metrics_runner = await _serve_metrics(metrics, options) if options.metrics_port else None
    # Long keep-alive: an idle connection is how the aggregator knows a training
    # client is still there; its close is how it learns that the client died.
    runner = web.AppRunner(
        build_app(engine, tokens=book, metrics=metrics, serve_metrics=metrics_runner is None),
        keepalive_timeout=3600,
        access_log=None,
        shutdown_timeout=SHUTDOWN_SECONDS,
    )
    await runner.setup()
    tls = (
        server_context(options.tls_cert, options.tls_key)
        if options.tls_cert and options.tls_key
        else None
    )
    site = web.TCPSite(runner, options.host, options.port, ssl_context=tls)
    await site.start()
    address = runner.addresses[0]
    on_ready(f"{'https' if tls else 'http'}://{address[0]}:{address[1]}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine_task = asyncio.create_task(engine.run())
    tracking_task = asyncio.create_task(run_exporter(exporter, engine)) if exporter else None
    watch_task = asyncio.create_task(watcher.run()) if watcher else None
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({engine_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if engine_task.done() and options.exit_when_done:
            await engine.wait_released(timeout=RELEASE_CLIENTS_SECONDS)
            if exporter is not None:
                await _flush_tracking(exporter, stop, job.spec.tracking.flush_timeout_seconds)
        elif engine_task.done():
            await stop.wait()
    finally:
        stopper.cancel()
        for task in (engine_task, tracking_task, watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        _write_summary(options.state_dir / "summary.json", engine.summary())
    if stop.is_set() and engine.phase not in (Phase.DONE, Phase.FAILED):
        log.info("stopped by signal at round %d", engine.current_round)
        return 143
    return 0 if engine.phase is Phase.DONE else 1


async def _serve_metrics(metrics: AggregatorMetrics, options: AggregatorOptions) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, options.host, options.metrics_port).start()
    log.info("Prometheus metrics on port %d at /metrics", options.metrics_port)
    return runner


async def _flush_tracking(exporter: TrackingExporter, stop: asyncio.Event, timeout: float) -> None:
    """Give MLflow a bounded time to take the rest; a signal cuts the wait short."""
    stopped = asyncio.create_task(stop.wait())
    drained = asyncio.create_task(exporter.drain(timeout))
    await asyncio.wait({stopped, drained}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not drained.done() or not drained.result():
        drained.cancel()
        status = exporter.status()
        log.warning(
            "MLflow did not take the job's last records in %.0fs (%s); run the job again "
            "with the same state dir to send them",
            timeout,
            status["lastError"] or status["state"],
        )


def _write_summary(path: Path, summary: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(summary, indent=2))
    temporary.replace(path)
