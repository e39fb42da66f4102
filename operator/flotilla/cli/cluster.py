"""The cluster's commands: `flotilla operator` (reconcile FederatedJobs), `flotilla plan`
(what it would make for a job) and `flotilla crd` (its CustomResourceDefinition)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from flotilla.api import read_job
from flotilla.cli.arguments import Subcommands, positive_float
from flotilla.cli.exits import EXIT_USAGE

TRACKING_DEFAULT_MEANING = (
    "the MLflow server of jobs that name none (spec.tracking.trackingUri, or "
    "MLFLOW_TRACKING_URI in runtime.aggregator.envFromSecret)"
)


def _add_default_tracking_uri(parser: argparse.ArgumentParser, text: str) -> None:
    """The operator's --default-tracking-uri; `plan` takes it too, with the same meaning."""
    parser.add_argument(
        "--default-tracking-uri",
        metavar="URI",
        default=os.environ.get("FLOTILLA_DEFAULT_TRACKING_URI"),
        help=text,
    )


def add_plan_parser(commands: Subcommands) -> None:
    plan = commands.add_parser(
        "plan",
        help="print, as YAML, every object the operator would make for a job on given nodes",
    )
    plan.add_argument("job", type=Path, help="FederatedJob YAML file")
    plan.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME[,label=value...]",
        help="a node of the cluster, e.g. edge-1,flotilla.dev/edge=true,kubernetes.io/arch=arm64 "
        "(repeat for more; nvidia.com/gpu.present=true makes a GPU node)",
    )
    plan.add_argument(
        "--namespace",
        help="where the job would live (default: its metadata.namespace, else default)",
    )
    plan.add_argument(
        "--status-phase",
        choices=["Running", "Succeeded"],
        default="Running",
        help="the job's phase to plan for: Succeeded shows the objects made after success "
        "(the served model's Deployment and Service; no client pods) (default: %(default)s)",
    )
    _add_default_tracking_uri(
        plan,
        "the operator's flag, to plan as an operator started with it: "
        f"{TRACKING_DEFAULT_MEANING}, set as FLOTILLA_DEFAULT_TRACKING_URI on the aggregator "
        "and serving containers; a chart-installed operator has the chart's, "
        "http://<release>-mlflow.<namespace>.svc:5000 "
        "(default: $FLOTILLA_DEFAULT_TRACKING_URI, else none)",
    )
    plan.set_defaults(handler=_plan)


def add_operator_parser(commands: Subcommands) -> None:
    operator = commands.add_parser(
        "operator", help="reconcile FederatedJobs in a cluster (kopf; in-cluster or kubeconfig)"
    )
    operator.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeat for more; default: all namespaces)",
    )
    operator.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="kopf's health endpoint (default: %(default)s)",
    )
    operator.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="serve Prometheus /metrics on this port (default: %(default)s)",
    )
    _add_default_tracking_uri(
        operator,
        f"{TRACKING_DEFAULT_MEANING}; the chart sets its own "
        "(default: $FLOTILLA_DEFAULT_TRACKING_URI, else none: such jobs record nothing)",
    )
    operator.add_argument(
        "--resync-seconds",
        type=positive_float,
        default=10.0,
        help="reconcile every job this often, for status and elasticity; node changes "
        "trigger one at once (default: %(default)s)",
    )
    operator.set_defaults(handler=_operator)


def add_crd_parser(commands: Subcommands) -> None:
    crd = commands.add_parser("crd", help="print a CustomResourceDefinition of Flotilla's")
    crd.add_argument(
        "--kind",
        choices=["FederatedJob", "FederatedSchedule"],
        default="FederatedJob",
        help="which one (default: %(default)s)",
    )
    crd.set_defaults(handler=_crd)


def _plan(args: argparse.Namespace) -> int:
    from flotilla.k8s.objects import ClusterDefaults
    from flotilla.k8s.preview import manifest, parse_node, preview

    job = read_job(args.job)  # paths as the cluster holds them, not resolved for this machine
    try:
        nodes = [parse_node(text) for text in args.node]
    except ValueError as error:
        print(f"flotilla plan: {error}", file=sys.stderr)
        return EXIT_USAGE
    namespace = args.namespace or job.metadata.namespace or "default"
    plan = preview(
        job,
        nodes,
        namespace=namespace,
        succeeded=args.status_phase == "Succeeded",
        defaults=ClusterDefaults(tracking_uri=args.default_tracking_uri or None),
    )
    if not plan.placements:
        print("flotilla plan: no node matches spec.clients.nodeSelector", file=sys.stderr)
    for site, problem in plan.unplaceable.items():
        print(f"flotilla plan: site {site} gets no client: {problem}", file=sys.stderr)
    sys.stdout.write(manifest(plan))
    return 0


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from flotilla.k8s.handlers import register
    from flotilla.k8s.objects import ClusterDefaults

    registry = kopf.OperatorRegistry()
    register(
        registry,
        metrics_port=args.metrics_port,
        resync_seconds=args.resync_seconds,
        defaults=ClusterDefaults(tracking_uri=args.default_tracking_uri or None),
    )
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,  # one replica (Recreate): no peering objects needed
            clusterwide=not args.namespaces,
            namespaces=args.namespaces or [],
            liveness_endpoint=args.liveness,
        )
    )
    return 0


def _crd(args: argparse.Namespace) -> int:
    from flotilla.k8s.crd import crd_yaml
    from flotilla.k8s.schedule_crd import schedule_crd_yaml

    sys.stdout.write(crd_yaml() if args.kind == "FederatedJob" else schedule_crd_yaml())
    return 0
