"""A Byzantine client process for the robust-strategy tests: Flotilla's own client, with
an attack of tests/attacks.py plugged into its update hook.

    FLOTILLA_TOKEN=... python -m tests.poisoned_client --attack signflip \
        --aggregator URL [--ca-file CA] [--threads N] [--device cpu]

It joins, reads its site's data and trains as `flotilla client` does, then sends the
attack instead of its update. Run from the repository's root (or with it on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flotilla.fl.client.joining import Assignment
from flotilla.fl.client.loop import ClientOptions, FederatedClient
from flotilla.fl.client.transport import AggregatorConnection
from tests.attacks import ATTACKS, attack_hook
from tests.client_process import client_parser, run_client


def _poisoned(
    connection: AggregatorConnection, assignment: Assignment, args: argparse.Namespace
) -> FederatedClient:
    hook = attack_hook(args.attack, seed=assignment.job.spec.seed)
    return FederatedClient(
        connection, assignment, ClientOptions(device=args.device), update_hook=hook
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = client_parser("python -m tests.poisoned_client")
    parser.add_argument("--attack", required=True, choices=ATTACKS)
    return run_client(parser.parse_args(argv), _poisoned, name="tests.poisoned_client")


if __name__ == "__main__":
    sys.exit(main())
