"""A slow site for the buffered-aggregation tests and bench: Flotilla's own client, whose
local training takes `--slowdown` times as long (a slower machine doing the same work).

    FLOTILLA_TOKEN=... python -m tests.slow_client --slowdown 10 \
        --aggregator URL [--ca-file CA] [--threads N] [--device cpu]

After each local training of T seconds it waits (slowdown - 1) x T more before it sends
its update: the update is the one the fast client would send, only later. Run from the
repository's root (or with it on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from flotilla.fl.client.joining import Assignment
from flotilla.fl.client.loop import ClientOptions, FederatedClient
from flotilla.fl.client.transport import AggregatorConnection
from tests.client_process import client_parser, run_client


class _Slowed:
    """The client's learning, its training `slowdown` times as long."""

    def __init__(self, learning: Any, slowdown: float) -> None:
        self._learning = learning
        self._slowdown = slowdown

    def __getattr__(self, name: str) -> Any:
        return getattr(self._learning, name)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = self._learning.train(*args, **kwargs)
        time.sleep((self._slowdown - 1) * (time.monotonic() - started))
        return result


def _slowed(
    connection: AggregatorConnection, assignment: Assignment, args: argparse.Namespace
) -> FederatedClient:
    client = FederatedClient(connection, assignment, ClientOptions(device=args.device))
    client.learning = _Slowed(client.learning, args.slowdown)
    return client


def main(argv: Sequence[str] | None = None) -> int:
    parser = client_parser("python -m tests.slow_client")
    parser.add_argument("--slowdown", type=float, required=True, help="training takes x times")
    return run_client(parser.parse_args(argv), _slowed, name="tests.slow_client")


if __name__ == "__main__":
    sys.exit(main())
