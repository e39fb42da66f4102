"""The `flotilla` command: run a job locally, or be one of its processes (aggregator, client).

One module per subcommand or small group of them, each with a function that adds its
parser; a subcommand's handler imports what it needs when it runs, so that `flotilla
operator` never loads torch and `flotilla client` never loads kopf.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from flotilla import __version__
from flotilla.api import SpecError
from flotilla.cli.aggregator import add_aggregator_parser
from flotilla.cli.client import add_client_parser
from flotilla.cli.cluster import add_crd_parser, add_operator_parser, add_plan_parser
from flotilla.cli.data import add_data_parser
from flotilla.cli.examples import add_examples_parser
from flotilla.cli.exits import EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_USAGE
from flotilla.cli.run import add_run_parser, add_validate_parser
from flotilla.cli.serve import add_serve_parser
from flotilla.redaction import install_log_redaction

__all__ = ["EXIT_INTERRUPTED", "EXIT_JOB_FAILED", "EXIT_USAGE", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    install_log_redaction()  # every process (run, aggregator, client, operator) starts here
    logging.basicConfig(
        level=os.environ.get("FLOTILLA_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.handler(args)
        return code
    except SpecError as error:
        print(f"flotilla: invalid job spec:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flotilla",
        description="Federated training of vision models on data that stays where it was labelled.",
    )
    parser.add_argument("--version", action="version", version=f"flotilla {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_run_parser(commands)
    add_validate_parser(commands)
    add_plan_parser(commands)
    add_aggregator_parser(commands)
    add_client_parser(commands)
    add_operator_parser(commands)
    add_serve_parser(commands)
    add_data_parser(commands)
    add_crd_parser(commands)
    add_examples_parser(commands)
    return parser
