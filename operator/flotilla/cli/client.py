"""`flotilla client`: train on this site's data for a job (one process per site)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flotilla.cli.arguments import (
    Subcommands,
    non_negative_int,
    positive_float,
    positive_int,
    seconds_or_never,
)
from flotilla.cli.exits import EXIT_JOB_FAILED, EXIT_USAGE
from flotilla.fl.client.memory import DEFAULT_MMAP_THRESHOLD

if TYPE_CHECKING:
    import ssl

    from flotilla.fl.client.loop import ClientOptions


def add_client_parser(commands: Subcommands) -> None:
    client = commands.add_parser("client", help="train on this site's data for a job")
    _aggregator_flags(client)
    _node_flags(client)
    _training_flags(client)
    client.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (0: a free one; default: none)",
    )
    client.add_argument(
        "--give-up-after",
        type=seconds_or_never,
        default=600.0,
        help="seconds without an answer from the aggregator (or with its token still refused) "
        "before exiting; 0: never, as client pods in a cluster wait (default: %(default)s)",
    )
    client.set_defaults(handler=_client)


def _aggregator_flags(client: argparse.ArgumentParser) -> None:
    """Where the aggregator is, how to trust it, and who this client is to it."""
    client.add_argument(
        "--aggregator",
        required=True,
        help="aggregator URL: https://host:port, or http:// where the job's spec disables TLS",
    )
    client.add_argument(
        "--ca-file",
        type=Path,
        help="PEM CA certificate that the aggregator's certificate must verify against (the "
        "job's ca.crt); required with https://. Only this CA is trusted, and the host name "
        "dialled must be in the certificate",
    )
    client.add_argument(
        "--site",
        default=os.environ.get("FLOTILLA_SITE") or None,
        help="this client's site, sent as X-Flotilla-Site from the first request; the "
        "aggregator refuses a token of another site (default: $FLOTILLA_SITE, else "
        "learnt from the aggregator)",
    )
    client.add_argument(
        "--token-file",
        type=Path,
        help="file holding this client's token (default: $FLOTILLA_TOKEN)",
    )


def _node_flags(client: argparse.ArgumentParser) -> None:
    """This node's data and hardware."""
    client.add_argument(
        "--data", type=Path, help="this site's CVAT export (default: the site's data in the spec)"
    )
    client.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    client.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    client.add_argument(
        "--mmap-threshold",
        type=non_negative_int,
        default=DEFAULT_MMAP_THRESHOLD,
        metavar="BYTES",
        help="glibc: allocations this large or larger (a layer's gradient, a large activation) "
        "go back to the OS when freed (torch maps them as huge pages), so the client's memory "
        "stays its model's; 0 leaves "
        "glibc's moving threshold, as does $MALLOC_MMAP_THRESHOLD_ (default: 1 MiB)",
    )


def _training_flags(client: argparse.ArgumentParser) -> None:
    """This node's overrides of spec.training, and its patience with its own data."""
    client.add_argument(
        "--batch-size", type=positive_int, help="override spec.training.batchSize on this node"
    )
    client.add_argument(
        "--local-epochs",
        type=positive_int,
        help="override spec.training.localEpochs on this node",
    )
    client.add_argument(
        "--max-seconds",
        type=positive_float,
        help="override spec.training.maxSeconds (local time budget per round) on this node",
    )
    client.add_argument(
        "--data-retry-seconds",
        type=positive_float,
        default=30.0,
        help="when the site's data cannot be read (CVAT refuses or is down, a bad export), "
        "try again after this many seconds, doubling up to 300 (default: 30); the "
        "aggregator shows the error and the rounds go on without this site meanwhile",
    )


def _client(args: argparse.Namespace) -> int:
    from flotilla.fl.client.memory import return_large_blocks_to_the_os

    return_large_blocks_to_the_os(args.mmap_threshold)  # before torch is imported
    from flotilla.data import DataSourceError
    from flotilla.fl.client.loop import FederatedClient
    from flotilla.fl.client.transport import (
        AggregatorConnection,
        AggregatorRefused,
        AggregatorUnavailable,
        AggregatorUntrusted,
        Backoff,
    )
    from flotilla.ml.models import ModelError
    from flotilla.ml.training import configure_threads

    trust = _token_and_tls(args)
    if isinstance(trust, str):
        print(f"flotilla client: {trust}", file=sys.stderr)
        return EXIT_USAGE
    token, context = trust
    configure_threads(args.threads)
    connection = AggregatorConnection(
        args.aggregator,
        token,
        backoff=Backoff(give_up_after=args.give_up_after),
        ssl_context=context,
        site=args.site,
    )
    try:
        client = FederatedClient.open(connection, _options(args))
        phase = client.run()
    except (
        DataSourceError,
        ModelError,
        AggregatorUnavailable,
        AggregatorRefused,
        AggregatorUntrusted,
    ) as error:
        print(f"flotilla client: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, DataSourceError | ModelError) else EXIT_JOB_FAILED
    # A job that failed is the aggregator's to report; this client did its part.
    logging.getLogger("flotilla").info("the job ended: %s", phase)
    return 0


def _token_and_tls(args: argparse.Namespace) -> tuple[str, ssl.SSLContext | None] | str:
    """The client's token and the TLS context it dials with, or what is wrong with them."""
    from flotilla.fl.tls import TlsConfigError, client_context

    token = (
        args.token_file.read_text().strip()
        if args.token_file
        else os.environ.get("FLOTILLA_TOKEN", "")
    )
    if not token:
        return "no token: pass --token-file or set FLOTILLA_TOKEN"
    https = args.aggregator.startswith("https://")
    if https != (args.ca_file is not None):
        return "https:// needs --ca-file" if https else "--ca-file needs an https:// URL"
    try:
        context = client_context(ca_file=args.ca_file) if args.ca_file else None
    except TlsConfigError as error:
        return str(error)
    return token, context


def _options(args: argparse.Namespace) -> ClientOptions:
    from flotilla.fl.client.loop import ClientOptions

    return ClientOptions(
        data_path=args.data,
        device=args.device,
        metrics_port=args.metrics_port,
        batch_size=args.batch_size,
        local_epochs=args.local_epochs,
        max_seconds=args.max_seconds,
        data_retry_seconds=args.data_retry_seconds,
    )
