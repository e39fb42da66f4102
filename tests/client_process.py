"""What the test-only client processes (tests/poisoned_client.py, tests/slow_client.py)
share: the arguments `flotilla client` takes for a local job, the connection they make,
and the run. Each adds one twist to Flotilla's own client and nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from flotilla.fl.client.joining import Assignment, join
from flotilla.fl.client.loop import FederatedClient
from flotilla.fl.client.transport import AggregatorConnection, Backoff
from flotilla.fl.tls import client_context
from flotilla.ml.training import configure_threads

Build = Callable[[AggregatorConnection, Assignment, argparse.Namespace], FederatedClient]


def client_parser(prog: str) -> argparse.ArgumentParser:
    """--aggregator URL [--ca-file CA] [--threads N] [--device D]; the token in FLOTILLA_TOKEN."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--aggregator", required=True)
    parser.add_argument("--ca-file", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    return parser


def run_client(args: argparse.Namespace, build: Build, *, name: str) -> int:
    """Join the job, build the client with `build`, read the site's data, run to the end."""
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    configure_threads(args.threads)
    connection = AggregatorConnection(
        args.aggregator,
        os.environ["FLOTILLA_TOKEN"],
        backoff=Backoff(give_up_after=600.0),
        ssl_context=client_context(ca_file=args.ca_file) if args.ca_file else None,
    )
    client = build(connection, join(connection), args)
    client.load_data()
    phase = client.run()
    logging.getLogger(name).info("the job ended: %s", phase)
    return 0
