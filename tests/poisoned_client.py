"""A Byzantine client process for the robust-strategy tests: Flotilla's own client, with
an attack of tests/attacks.py plugged into its update hook.

    FLOTILLA_TOKEN=... python -m tests.poisoned_client --attack signflip \
        --aggregator URL [--ca-file CA] [--threads N] [--device cpu]

It joins, reads its site's data and trains as `flotilla client` does, then sends the
attack instead of its update. Run from the repository's root (or with it on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flotilla.fl.client.joining import join
from flotilla.fl.client.loop import ClientOptions, FederatedClient
from flotilla.fl.client.transport import AggregatorConnection, Backoff
from flotilla.fl.tls import client_context
from flotilla.ml.training import configure_threads
from tests.attacks import ATTACKS, attack_hook


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.poisoned_client")
    parser.add_argument("--attack", required=True, choices=ATTACKS)
    parser.add_argument("--aggregator", required=True)
    parser.add_argument("--ca-file", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
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
    assignment = join(connection)
    hook = attack_hook(args.attack, seed=assignment.job.spec.seed)
    client = FederatedClient(
        connection, assignment, ClientOptions(device=args.device), update_hook=hook
    )
    client.load_data()
    phase = client.run()
    logging.getLogger("tests.poisoned_client").info("the job ended: %s", phase)
    return 0


if __name__ == "__main__":
    sys.exit(main())
