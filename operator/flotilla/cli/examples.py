"""`flotilla examples`: write the example data sets as per-site CVAT exports."""

from __future__ import annotations

import argparse
from pathlib import Path

from flotilla.cli.arguments import Subcommands


def add_examples_parser(commands: Subcommands) -> None:
    examples = commands.add_parser("examples", help="write example data sets")
    which = examples.add_subparsers(required=True, metavar="EXAMPLE")
    digits = which.add_parser("digits", help="scikit-learn digits as per-site CVAT exports")
    digits.add_argument("--out", type=Path, default=Path("examples/data/digits"))
    digits.add_argument(
        "--sites", default="site-a,site-b,site-c,site-d", help="comma-separated site names"
    )
    digits.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration of the label skew (smaller: less IID)",
    )
    digits.add_argument("--seed", type=int, default=0)
    digits.set_defaults(handler=_digits)
    shapes = which.add_parser("shapes", help="synthetic shapes with boxes as per-site CVAT exports")
    shapes.add_argument("--out", type=Path, default=Path("examples/data/shapes"))
    shapes.add_argument("--sites", default="site-a,site-b,site-c", help="comma-separated names")
    shapes.add_argument("--images", type=int, default=200, help="images per site")
    shapes.add_argument("--alpha", type=float, default=1.0, help="Dirichlet skew of the shapes")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.set_defaults(handler=_shapes)


def _digits(args: argparse.Namespace) -> int:
    from flotilla.data.digits_example import write_digits_example

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    example = write_digits_example(args.out, sites=sites, alpha=args.alpha, seed=args.seed)
    print(f"wrote the digits example to {args.out}: {example}")
    return 0


def _shapes(args: argparse.Namespace) -> int:
    from flotilla.data.shapes_example import write_shapes_example

    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    example = write_shapes_example(
        args.out, sites=sites, images_per_site=args.images, alpha=args.alpha, seed=args.seed
    )
    print(f"wrote the shapes example to {args.out}: boxes per shape {example.boxes}")
    return 0
