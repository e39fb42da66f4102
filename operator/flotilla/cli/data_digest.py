"""`flotilla data digest`: print a site's data digest, the probe a FederatedSchedule runs.

Run in a probe pod, it writes the digest (or, failing, one line saying why) to the pod's
termination message, where the operator reads it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from flotilla.cli.arguments import Subcommands

EXIT_FAILED = 1
EXIT_USAGE = 2
# The kubelet keeps at most 4096 bytes of a termination message.
MAX_MESSAGE = 4000

_DESCRIPTION = """\
Print a digest of a site's data's identity, never the data: for a live CVAT, its tasks'
ids and when each was last updated; for an export, a SHA-256 of its files. The same data
gives the same digest; new or changed annotations give another. A FederatedSchedule with
onDataChange runs this in a probe pod on each site's node and makes a job when a digest
changes."""


def add_digest_parser(actions: Subcommands) -> None:
    digest = actions.add_parser(
        "digest",
        help="print a digest of a site's data (task ids and update times, or a content hash)",
        description=_DESCRIPTION,
        epilog="exit status: 0 printed; 1 the data cannot be read; 2 bad arguments",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    digest.add_argument("job", type=Path, metavar="JOB.yaml", help="FederatedJob YAML file")
    digest.add_argument("--site", required=True, metavar="NAME", help="the site to digest")
    digest.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="where the site's export is, when not at the job's cvatExport.path",
    )
    digest.add_argument(
        "--termination-log",
        type=Path,
        metavar="PATH",
        help="also write the digest, or why there is none, to this file (in a pod: "
        "/dev/termination-log)",
    )
    digest.set_defaults(handler=digest_main)


def digest_main(args: argparse.Namespace) -> int:
    from flotilla.api import SpecError, read_job
    from flotilla.data.digest import data_digest
    from flotilla.data.errors import DataSourceError

    try:
        job = read_job(args.job)
        digest = data_digest(job, args.site, data=args.data, environ=os.environ)
    except SpecError as error:
        return _fail(args, " ".join(error.problems), EXIT_USAGE)
    except (DataSourceError, OSError) as error:
        return _fail(args, f"site {args.site}: {error}", EXIT_FAILED)
    print(digest)
    _write(args.termination_log, digest)
    return 0


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"flotilla data digest: {message}", file=sys.stderr)
    _write(args.termination_log, message)
    return code


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        path.write_text(text[:MAX_MESSAGE])
