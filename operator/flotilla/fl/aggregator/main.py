"""The aggregator process: build the engine from the spec (or resume it), serve HTTP, run rounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from flotilla.api import FederatedJob
from flotilla.fl.aggregator.checkpoint import CheckpointError, CheckpointStore
from flotilla.fl.aggregator.connection_buffers import FleetSizedBuffers
from flotilla.fl.aggregator.ending import (
    RELEASE_CLIENTS_SECONDS,
    SHUTDOWN_SECONDS,
    os_error_text,
    write_summary,
)
from flotilla.fl.aggregator.engine import Phase, RoundEngine
from flotilla.fl.aggregator.evaluation import CentralEvaluator
from flotilla.fl.aggregator.metrics import AggregatorMetrics
from flotilla.fl.aggregator.pace import UploadPace
from flotilla.fl.aggregator.server import build_app, choose_request_parser
from flotilla.fl.aggregator.statelock import StateDirBusy, lock_state_dir
from flotilla.fl.aggregator.tls_transport import serve_tls
from flotilla.fl.aggregator.tokens import TokenBook, TokenFileWatcher
from flotilla.fl.aggregator.tracked import (
    attach_exporter,
    recover_state,
    resolve_tracking_uri,
    run_exporter,
)
from flotilla.fl.aggregator.warm_start import WarmStartError, forget_lineage, warm_start
from flotilla.fl.modelstate import initial_global_model
from flotilla.fl.strategies import build_strategy
from flotilla.fl.tls import server_context
from flotilla.tracking.exporter import TrackingExporter

log = logging.getLogger(__name__)

EXIT_STATE_DIR_BUSY = 2


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
    # Every client runs on this machine (`flotilla run`): an upload that comes in slowly
    # is a busy CPU, not a slow link, so no receive buffer is added for it (pace.py).
    clients_on_this_host: bool = False


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
        upload_pace=UploadPace(slow_link_bytes_per_second=0.0)
        if options.clients_on_this_host
        else None,
    )
    # The engine's restore is the last check: a checkpoint it refuses is skipped like a
    # corrupt one. None good at all raises CheckpointError: the job stops (checkpoint.py).
    resumed = store.load(layout, accept=engine.persister.restore) is not None
    init = job.spec.model.init
    if resumed and init is not None:
        log.info("resuming from the checkpoint: spec.model.init %r is not read again", init)
    elif init is not None:  # WarmStartError stops the job before its MLflow run exists
        warm_start(
            job,
            layout=layout,
            model=model,
            state_dir=options.state_dir,
            tracking_uri=resolve_tracking_uri(job, override=options.tracking_uri),
        )
    elif not resumed:
        forget_lineage(options.state_dir)  # a start over without init has no parent
    return engine


async def serve(
    job: FederatedJob,
    *,
    tokens: Mapping[str, str],
    options: AggregatorOptions,
    on_ready: Callable[[str], None],
    tokens_file: Path | None = None,
) -> int:
    """Run the job to its end (or forever, unless exit_when_done). Returns the exit code:
    the job's own (0 done, 1 failed, 143 stopped before its end), or 2 when another process
    holds the state directory (statelock.py).

    With `tokens_file` (where `tokens` came from), sites join and leave as the file changes."""
    check_transport(job, options)
    try:
        lock = lock_state_dir(options.state_dir)
    except StateDirBusy as error:
        log.error("%s", error)
        return EXIT_STATE_DIR_BUSY
    except OSError as error:  # a read-only or full volume: no checkpoint could be written
        log.error("cannot lock the state directory %s: %s", options.state_dir, os_error_text(error))
        return 1
    try:
        book = TokenBook(tokens)
        await asyncio.to_thread(
            recover_state,
            job,
            state_dir=options.state_dir,
            uri_override=options.tracking_uri,
            enabled=options.tracking,
        )
        try:
            engine = build_engine(job, sites=book.sites, options=options)
        except CheckpointError as error:
            log.error("cannot resume the job: %s", error)
            return 1
        except WarmStartError as error:
            log.error("cannot start the job: %s", error)
            return 1
        return await _serve_engine(
            engine, book=book, options=options, on_ready=on_ready, tokens_file=tokens_file
        )
    finally:
        lock.release()


async def _serve_engine(
    engine: RoundEngine,
    *,
    book: TokenBook,
    options: AggregatorOptions,
    on_ready: Callable[[str], None],
    tokens_file: Path | None,
) -> int:
    job = engine.job
    buffers = FleetSizedBuffers(len(book.sites))

    def sites_changed(sites: Sequence[str]) -> None:
        engine.set_sites(sites)
        buffers.resize(len(sites))

    watcher = TokenFileWatcher(tokens_file, book, on_change=sites_changed) if tokens_file else None
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
    choose_request_parser(engine.intake.max_body_bytes)
    # Long keep-alive: an idle connection is how the aggregator knows a training
    # client is still there; its close is how it learns that the client died.
    runner = web.AppRunner(
        build_app(
            engine,
            tokens=book,
            metrics=metrics,
            serve_metrics=metrics_runner is None,
            buffers=buffers,
        ),
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
    # TLS on OpenSSL's own socket reads and writes (tls_transport.py); plain HTTP as aiohttp
    # serves it.
    protocols = cast(Callable[[], asyncio.Protocol], runner.server)
    tls_server = serve_tls(protocols, tls, options.host, options.port) if tls else None
    if tls_server is None:
        await web.TCPSite(runner, options.host, options.port).start()
    address = tls_server.address if tls_server else runner.addresses[0]
    on_ready(f"{'https' if tls else 'http'}://{address[0]}:{address[1]}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine_task = asyncio.create_task(engine.run())
    tracking_task = asyncio.create_task(run_exporter(exporter, engine)) if exporter else None
    watch_task = asyncio.create_task(watcher.run()) if watcher else None
    stopper = asyncio.create_task(stop.wait())
    summary_path = options.state_dir / "summary.json"
    try:
        await asyncio.wait({engine_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if engine_task.done():
            # The outcome is on disk before MLflow is flushed: an aggregator stopped or
            # killed during the final registration still leaves a summary saying "done".
            write_summary(summary_path, engine.summary())
        if engine_task.done() and options.exit_when_done:
            await engine.desk.wait_released(timeout=RELEASE_CLIENTS_SECONDS)
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
        # Long-polls (/v1/task, /v1/status) answer now: the server's shutdown would wait
        # SHUTDOWN_SECONDS for them, and every Ctrl-C or pod stop took that long.
        engine.changes.close()
        if tls_server is not None:
            tls_server.close()
        await runner.cleanup()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        write_summary(summary_path, engine.summary())  # logs a failure; never masks the outcome
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
        cut = "was stopped by a signal" if stop.is_set() else f"took more than {timeout:.0f}s"
        log.warning(
            "the job is done, but sending its last records to MLflow %s (%s); run the job "
            "again with the same state dir to send them",
            cut,
            status["lastError"] or status["state"],
        )
