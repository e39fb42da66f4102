"""`flotilla aggregator`: serve a job's rounds over HTTP (one process per job)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import resource
import sys
from pathlib import Path

from flotilla.api import load_job
from flotilla.cli.arguments import Subcommands, init_flag, tracking_flags
from flotilla.cli.exits import EXIT_USAGE


def add_aggregator_parser(commands: Subcommands) -> None:
    aggregator = commands.add_parser("aggregator", help="serve a job's rounds over HTTP")
    aggregator.add_argument("--job", type=Path, required=True, help="FederatedJob YAML file")
    aggregator.add_argument(
        "--tokens-file",
        type=Path,
        required=True,
        help="JSON object: site name -> bearer token; re-read when it changes (sites join and "
        "leave, tokens rotate: no restart)",
    )
    aggregator.add_argument(
        "--state-dir", type=Path, required=True, help="checkpoints; an existing one is resumed"
    )
    _listening_flags(aggregator)
    aggregator.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="where central evaluation runs",
    )
    aggregator.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (default: on the API port)",
    )
    tracking_flags(
        aggregator,
        default_help="default: spec.tracking.trackingUri, else $MLFLOW_TRACKING_URI, else none",
    )
    init_flag(aggregator)
    aggregator.add_argument(
        "--test-data",
        type=Path,
        metavar="PATH",
        help="where spec.evaluation.testData's export is on this machine (default: its path "
        "in the spec; in a cluster the operator mounts it and passes this)",
    )
    aggregator.set_defaults(handler=_aggregator)


def _listening_flags(aggregator: argparse.ArgumentParser) -> None:
    """Where and how it listens, and when it stops."""
    aggregator.add_argument(
        "--tls-cert",
        type=Path,
        help="serve HTTPS (TLS 1.2+) with this PEM certificate (its SANs must hold the names "
        "clients dial); required unless spec.security.tls.mode is disabled",
    )
    aggregator.add_argument(
        "--tls-key", type=Path, help="the PEM private key of --tls-cert (keep it 0600)"
    )
    aggregator.add_argument(
        "--clients-on-this-host",
        action="store_true",
        help="every client runs on this machine (flotilla run sets it): an upload that comes "
        "in slowly is then a busy CPU, not a slow link, and gets no extra receive buffer",
    )
    aggregator.add_argument("--host", default="0.0.0.0")
    aggregator.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    aggregator.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit when the job ends instead of serving its status",
    )
    aggregator.add_argument(
        "--ready-line",
        action="store_true",
        help="print 'FLOTILLA-READY URL' on stdout once listening",
    )


def _aggregator(args: argparse.Namespace) -> int:
    raise_open_files_limit()
    from flotilla.fl.aggregator.main import AggregatorOptions, check_transport, serve
    from flotilla.fl.aggregator.tokens import load_tokens
    from flotilla.fl.tls import TlsConfigError, server_context

    settle_collector()
    job = load_job(args.job)
    if args.init is not None:
        job = job.with_model_init(args.init)
    if args.test_data is not None:
        job = job.with_test_data_path(args.test_data)
    options = AggregatorOptions(
        state_dir=args.state_dir,
        host=args.host,
        port=args.port,
        exit_when_done=args.exit_when_done,
        device=args.device,
        tracking=args.tracking,
        tracking_uri=args.tracking_uri,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        clients_on_this_host=args.clients_on_this_host,
    )
    try:
        tokens = load_tokens(args.tokens_file)
        check_transport(job, options)
        if args.tls_cert and args.tls_key:
            server_context(args.tls_cert, args.tls_key)  # a bad file fails here, not mid-start
    except (ValueError, TlsConfigError) as error:
        print(f"flotilla aggregator: {error}", file=sys.stderr)
        return EXIT_USAGE

    def ready(url: str) -> None:
        logging.getLogger("flotilla").info("aggregator listening on %s", url)
        if args.ready_line:
            print(f"FLOTILLA-READY {url}", flush=True)

    return asyncio.run(
        serve(job, tokens=tokens, tokens_file=args.tokens_file, options=options, on_ready=ready)
    )


# Young objects are collected after this many allocations (Python's default: 700). At
# 1,000 sites, each upload's request, lease and views outlive a few hundred allocations
# while it waits its turn, so at 700 most young collections moved them on instead of
# freeing anything, and every 10th walked them again (bench/README.md, "The collector").
YOUNG_COLLECTION_EVERY = 10_000


def settle_collector() -> None:
    """Once the aggregator's modules are imported: what they made (~200,000 objects: torch,
    aiohttp, pydantic, ours) lives as long as the process, so the collector stops walking it
    (gc.freeze): each full collection walked it all, ~170 ms of the event loop at a time. Only
    what exists now is frozen; the engine, the model and the connections are made after,
    and collected as ever."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])


def raise_open_files_limit() -> None:
    """One connection per site: a shell's soft limit (1024, or 256) is hit past a few
    hundred sites, and then every accept fails (bench/load_sites.py). Take the hard limit,
    as servers do; a container's limit is its runtime's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
