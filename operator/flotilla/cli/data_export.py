"""`flotilla data export`: save a live CVAT task's or project's export, to train from offline."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flotilla.cli.arguments import Subcommands, positive_float, positive_int
from flotilla.cli.exits import EXIT_JOB_FAILED, EXIT_USAGE

if TYPE_CHECKING:
    from flotilla.data.cvat_credentials import CvatCredentials

_EXPORT_DESCRIPTION = """\
Ask a live CVAT to export a task or a project, images included, and save the zip it
hands out as FILE, to train from offline: give the job `cvatExport: {path: FILE}` (and
its format), or check it first with `flotilla data inspect FILE`.

The server and the credentials are found as the client finds them: --credentials (a
file of KEY=VALUE lines or a folder of files: url, username and password, or
accessToken), else the CVAT_URL, CVAT_USERNAME, CVAT_PASSWORD, CVAT_ACCESS_TOKEN
variables; --url overrides their URL. A key works with current servers (access tokens)
and CVAT 2.2x (API keys) alike.

FILE is written whole or not at all (a hidden file beside it, renamed when complete);
an existing FILE is kept unless --force. CVAT's COCO 1.0 carries no tags: a
classification task needs cvat-images-1.1, and a warning says so."""

_EXPORT_EPILOG = """\
exit status: 0 saved; 1 the export failed (refused, failed on the server, not finished
within --timeout, the download broke off); 2 bad arguments (FILE exists without --force,
no such folder, no URL or credentials, credentials in --url)."""


def add_export_parser(actions: Subcommands) -> None:
    export = actions.add_parser(
        "export",
        help="save a live CVAT task's or project's export (a zip) to train from offline",
        description=_EXPORT_DESCRIPTION,
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", type=positive_int, metavar="ID", help="the task to export")
    which.add_argument(
        "--project", type=positive_int, metavar="ID", help="the project to export, every task"
    )
    export.add_argument("file", type=Path, metavar="FILE", help="the zip to write")
    export.add_argument(
        "--format",
        choices=["cvat-images-1.1", "coco-1.0"],
        default="cvat-images-1.1",
        help="CVAT for images 1.1 or COCO 1.0 (default: %(default)s)",
    )
    export.add_argument("--url", help="the CVAT server (default: the credentials' url)")
    export.add_argument(
        "--credentials",
        type=Path,
        metavar="PATH",
        help="a KEY=VALUE file or a folder of files (default: the CVAT_* variables)",
    )
    export.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        metavar="SECONDS",
        help="how long the server may take to make the export (default: %(default)g)",
    )
    export.add_argument("--force", action="store_true", help="replace FILE if it exists")
    export.set_defaults(handler=_data_export)


def _data_export(args: argparse.Namespace) -> int:
    from flotilla.data import DataSourceError
    from flotilla.data.cvat_snapshot import FORMATS, ExportTarget, refusal, save_export
    from flotilla.redaction import redact_urls

    found = _export_credentials(args)
    problem = refusal(args.file, force=args.force)
    if problem is not None or isinstance(found, str):
        print(f"flotilla data export: {problem or found}", file=sys.stderr)
        return EXIT_USAGE
    target = ExportTarget("task", args.task) if args.task else ExportTarget("project", args.project)
    try:
        saved = save_export(
            credentials=found,
            target=target,
            format=args.format,
            out=args.file,
            force=args.force,
            timeout=args.timeout,
        )
    except DataSourceError as error:
        print(f"flotilla data export: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
    print(
        f"saved {target} of CVAT {redact_urls(found.url)} ({FORMATS[args.format]}, "
        f"{saved.size} bytes) to {saved.path}\n"
        f"train from it offline with cvatExport: {{path: {saved.path}, format: {args.format}}}"
        f"; check it first with: flotilla data inspect {saved.path}"
    )
    return 0


def _export_credentials(args: argparse.Namespace) -> CvatCredentials | str:
    """The credentials `flotilla data export` signs in with, or why there are none."""
    from flotilla.api.data import CvatCredentialsSpec
    from flotilla.data import DataSourceError
    from flotilla.data.cvat_credentials import find_credentials

    if args.url is not None and "@" in args.url:  # not echoed: it holds a secret
        return "--url holds credentials (user:password@ or token@): give them in --credentials"
    spec = CvatCredentialsSpec(path=str(args.credentials) if args.credentials else None)
    try:
        return find_credentials(spec, url=args.url, environ=os.environ)
    except DataSourceError as error:
        return str(error)
