"""`flotilla serve`: serve a registered model over HTTP (MLflow's scoring server)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flotilla.cli.arguments import Subcommands, port
from flotilla.cli.exits import EXIT_USAGE


def add_serve_parser(commands: Subcommands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a registered model over HTTP (mlflow models serve: POST /invocations)",
    )
    serve.add_argument(
        "--model-uri",
        required=True,
        metavar="URI",
        help="models:/NAME@ALIAS (as a job registers it), models:/NAME/VERSION or runs:/...",
    )
    serve.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="the MLflow server holding it (default: $MLFLOW_TRACKING_URI, else "
        "$FLOTILLA_DEFAULT_TRACKING_URI, which the operator sets in a cluster)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument("--port", type=port, default=5001, help="default: %(default)s")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from flotilla.tracking.serve import NoTrackingServer, exec_serve, serve_command

    try:
        command = serve_command(
            args.model_uri,
            host=args.host,
            port=args.port,
            tracking_uri=args.tracking_uri,
            environ=os.environ,
        )
    except NoTrackingServer as error:
        print(f"flotilla serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger("flotilla").info("serving %s on %s:%d", args.model_uri, args.host, args.port)
    exec_serve(command)
    return 0  # not reached: the scoring server replaced this process
