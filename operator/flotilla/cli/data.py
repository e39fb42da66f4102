"""`flotilla data`: `inspect` a site's data as its client will read it; `export`:
data_export.py; `digest`: data_digest.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flotilla.api import load_job
from flotilla.cli.arguments import Subcommands
from flotilla.cli.data_digest import add_digest_parser
from flotilla.cli.data_export import add_export_parser
from flotilla.cli.exits import EXIT_JOB_FAILED, EXIT_USAGE

_INSPECT_DESCRIPTION = """\
Read a site's data exactly as its client will, before the site joins a job, and print
what the client would train on: frames per CVAT subset and per label, the train /
hold-out split, the site's labels against the job's, and every problem with its file or
CVAT task.

PATH_OR_SITE is an export (a folder or CVAT's zip) when it exists on disk; with --job it
may instead be a site's name, whose source the job gives (spec.sites[].data, else
spec.data): an export, or a live CVAT's tasks or project read with the job's credentials
settings.

With --job the client's settings are the job's: spec.task, spec.labels, the site's
labelAliases, spec.model.input (every image is loaded at that size), spec.seed and
spec.training.validationFraction. The hold-out is the export's Validation subset when it
has one, else a seeded split.

Without --job, what is assumed: the labels are the label names found in the export
(sorted); the task is --task, else classification if any frame has a tag, else
detection; no label aliases; images are decoded at 3x32x32; the split uses the
defaults (validationFraction 0.1, seed 0)."""

_INSPECT_EPILOG = """\
exit status: 0 the client could train on it; 1 it could not (the data cannot be read,
no usable frames, nothing left to train on); 2 bad arguments (no such PATH, a site name
without --job, a site the job does not know, an invalid job file)."""


def add_data_parser(commands: Subcommands) -> None:
    data = commands.add_parser(
        "data", help="check a site's data before it joins a job, or save a CVAT export of it"
    )
    actions = data.add_subparsers(required=True, metavar="ACTION")
    _add_inspect_parser(actions)
    add_export_parser(actions)
    add_digest_parser(actions)


def _add_inspect_parser(actions: Subcommands) -> None:
    inspect = actions.add_parser(
        "inspect",
        help="read a site's export or CVAT as its client will and say what it would train on",
        description=_INSPECT_DESCRIPTION,
        epilog=_INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument(
        "target",
        metavar="PATH_OR_SITE",
        help="a CVAT export (folder or zip), or with --job the name of one of the job's sites",
    )
    inspect.add_argument(
        "--job", type=Path, metavar="FILE", help="FederatedJob YAML file the site would join"
    )
    inspect.add_argument(
        "--site",
        metavar="NAME",
        help="with --job and a PATH: read PATH as this site's client would with "
        "`flotilla client --data PATH` (the site's labelAliases and export format; "
        "default: spec.data's)",
    )
    inspect.add_argument(
        "--task",
        choices=["classification", "detection"],
        help="without --job: the task to read the export for (default: classification if "
        "any frame has a tag, else detection)",
    )
    inspect.add_argument(
        "--format",
        choices=["auto", "cvat-images-1.1", "coco-1.0"],
        help="a PATH's export format (default: the site's cvatExport.format with --site, "
        "else auto: annotations.xml is CVAT for images 1.1, annotations/*.json COCO 1.0)",
    )
    inspect.add_argument(
        "--json", action="store_true", help="print the same facts as one JSON object"
    )
    inspect.set_defaults(handler=_data_inspect)


def _data_inspect(args: argparse.Namespace) -> int:
    from flotilla.data.inspection import inspect_site
    from flotilla.data.inspection_report import as_json, as_text
    from flotilla.data.inspection_target import TargetError, choose_target

    job = load_job(args.job) if args.job is not None else None
    try:
        target = choose_target(
            args.target, job=job, site=args.site, task=args.task, format=args.format
        )
    except TargetError as error:
        print(f"flotilla data inspect: {error}", file=sys.stderr)
        return EXIT_USAGE
    inspection = inspect_site(target)
    if args.json:
        print(json.dumps(as_json(inspection), indent=2))
    else:
        sys.stdout.write(as_text(inspection))
    return 0 if inspection.ready else EXIT_JOB_FAILED
