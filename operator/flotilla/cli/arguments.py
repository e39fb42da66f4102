"""What several subcommands share: argument types that say what is wrong with a value, and
the flags of `run` and `aggregator` for tracking and initial weights."""

from __future__ import annotations

import argparse
from typing import TypeAlias

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def port(text: str) -> int:
    number = _int_at_least(text, 1)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return number


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
    return value


def seconds_or_never(text: str) -> float:
    """A positive number of seconds, or 0 for never."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value == 0:
        return 0.0
    return positive_float(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def tracking_flags(parser: argparse.ArgumentParser, *, default_help: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--tracking-uri",
        metavar="URI",
        help=f"MLflow tracking URI for the job's run ({default_help})",
    )
    group.add_argument(
        "--no-tracking",
        dest="tracking",
        action="store_false",
        help="do not record the job in MLflow",
    )


def init_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init",
        metavar="URI",
        help="start from these weights instead of the seed's: models:/NAME@ALIAS, "
        "models:/NAME/VERSION or runs:/RUN_ID, read from the job's MLflow server "
        "(overrides spec.model.init; a job resumed from its checkpoint ignores both)",
    )
