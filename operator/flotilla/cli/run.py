"""`flotilla run` (a job as local processes) and `flotilla validate` (check a job file)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from flotilla.api import load_job
from flotilla.cli.arguments import Subcommands, init_flag, tracking_flags
from flotilla.cli.exits import EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_USAGE


def add_run_parser(commands: Subcommands) -> None:
    run = commands.add_parser("run", help="run a FederatedJob as local processes")
    run.add_argument("job", type=Path, help="FederatedJob YAML file")
    run.add_argument(
        "--state-dir",
        type=Path,
        help="checkpoints and logs; run again with the same directory to resume "
        "(default: a new .flotilla/runs/JOB-TIME)",
    )
    run.add_argument("--summary-json", type=Path, help="write the run's summary here as JSON")
    run.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per client process (default 1: best on a shared CPU)",
    )
    run.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="where clients train (default cpu)",
    )
    tracking_flags(
        run,
        default_help="default: spec.tracking.trackingUri, else $MLFLOW_TRACKING_URI, "
        "else a SQLite store in ./mlruns",
    )
    init_flag(run)
    run.set_defaults(handler=_run)


def add_validate_parser(commands: Subcommands) -> None:
    validate = commands.add_parser("validate", help="check a FederatedJob file and exit")
    validate.add_argument("job", type=Path)
    validate.set_defaults(handler=_validate)


def _run(args: argparse.Namespace) -> int:
    from flotilla.fl.aggregator.statelock import StateDirBusy
    from flotilla.local.runner import RunFailed, RunOptions, job_failed, run_local

    job = load_job(args.job)
    if args.init is not None:
        job = job.with_model_init(args.init)
    options = RunOptions(
        job_path=args.job.resolve(),
        state_dir=args.state_dir,
        summary_json=args.summary_json,
        threads=args.threads,
        device=args.device,
        tracking=args.tracking,
        tracking_uri=args.tracking_uri,
        init=args.init,
    )
    try:
        summary = asyncio.run(run_local(job, options))
    except StateDirBusy as error:  # refused before anything in the directory was touched
        print(f"flotilla: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as error:
        print(f"flotilla: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED if "interrupted" in str(error) else EXIT_JOB_FAILED
    if summary.get("summaryError"):  # said last; the exit code stays the job's own
        print(f"flotilla: {summary['summaryError']}", file=sys.stderr)
    return EXIT_JOB_FAILED if job_failed(summary) else 0


def _validate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    spec = job.spec
    print(
        f"{args.job}: valid FederatedJob {job.metadata.name!r}: {spec.rounds} rounds of "
        f"{spec.strategy.name}, {len(spec.sites)} sites, {len(spec.labels)} labels"
    )
    return 0
