"""The `flotilla` command: run a job locally, or be one of its processes (aggregator, client)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flotilla import __version__
from flotilla.api import SpecError, load_job, read_job
from flotilla.fl.client.memory import DEFAULT_MMAP_THRESHOLD
from flotilla.redaction import install_log_redaction

if TYPE_CHECKING:
    from flotilla.data.cvat_credentials import CvatCredentials

EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flotilla",
        description="Federated training of vision models on data that stays where it was labelled.",
    )
    parser.add_argument("--version", action="version", version=f"flotilla {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

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
    _tracking_flags(
        run,
        default_help="default: spec.tracking.trackingUri, else $MLFLOW_TRACKING_URI, "
        "else a SQLite store in ./mlruns",
    )
    _init_flag(run)
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check a FederatedJob file and exit")
    validate.add_argument("job", type=Path)
    validate.set_defaults(handler=_validate)

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
    plan.set_defaults(handler=_plan)

    aggregator = commands.add_parser("aggregator", help="serve a job's rounds over HTTP")
    aggregator.add_argument("--job", type=Path, required=True, help="FederatedJob YAML file")
    aggregator.add_argument(
        "--tokens-file",
        type=Path,
        required=True,
        help="JSON object: site name -> bearer token; re-read when it changes (sites join and "
        "leave, tokens rotate: no restart)",
    )
    aggregator.add_argument(
        "--state-dir", type=Path, required=True, help="checkpoints; an existing one is resumed"
    )
    aggregator.add_argument(
        "--tls-cert",
        type=Path,
        help="serve HTTPS (TLS 1.2+) with this PEM certificate (its SANs must hold the names "
        "clients dial); required unless spec.security.tls.mode is disabled",
    )
    aggregator.add_argument(
        "--tls-key", type=Path, help="the PEM private key of --tls-cert (keep it 0600)"
    )
    aggregator.add_argument("--host", default="0.0.0.0")
    aggregator.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    aggregator.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit when the job ends instead of serving its status",
    )
    aggregator.add_argument(
        "--ready-line",
        action="store_true",
        help="print 'FLOTILLA-READY URL' on stdout once listening",
    )
    aggregator.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="where central evaluation runs",
    )
    aggregator.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (default: on the API port)",
    )
    _tracking_flags(
        aggregator,
        default_help="default: spec.tracking.trackingUri, else $MLFLOW_TRACKING_URI, else none",
    )
    _init_flag(aggregator)
    aggregator.set_defaults(handler=_aggregator)

    client = commands.add_parser("client", help="train on this site's data for a job")
    client.add_argument(
        "--aggregator",
        required=True,
        help="aggregator URL: https://host:port, or http:// where the job's spec disables TLS",
    )
    client.add_argument(
        "--ca-file",
        type=Path,
        help="PEM CA certificate that the aggregator's certificate must verify against (the "
        "job's ca.crt); required with https://. Only this CA is trusted, and the host name "
        "dialled must be in the certificate",
    )
    client.add_argument(
        "--site",
        default=os.environ.get("FLOTILLA_SITE") or None,
        help="this client's site, sent as X-Flotilla-Site from the first request; the "
        "aggregator refuses a token of another site (default: $FLOTILLA_SITE, else "
        "learnt from the aggregator)",
    )
    client.add_argument(
        "--token-file",
        type=Path,
        help="file holding this client's token (default: $FLOTILLA_TOKEN)",
    )
    client.add_argument(
        "--data", type=Path, help="this site's CVAT export (default: the site's data in the spec)"
    )
    client.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    client.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    client.add_argument(
        "--mmap-threshold",
        type=_non_negative_int,
        default=DEFAULT_MMAP_THRESHOLD,
        metavar="BYTES",
        help="glibc: allocations this large or larger (a layer's gradient, a large activation) "
        "go back to the OS when freed (torch maps them as huge pages), so the client's memory "
        "stays its model's; 0 leaves "
        "glibc's moving threshold, as does $MALLOC_MMAP_THRESHOLD_ (default: 1 MiB)",
    )
    client.add_argument(
        "--batch-size", type=_positive_int, help="override spec.training.batchSize on this node"
    )
    client.add_argument(
        "--local-epochs",
        type=_positive_int,
        help="override spec.training.localEpochs on this node",
    )
    client.add_argument(
        "--max-seconds",
        type=_positive_float,
        help="override spec.training.maxSeconds (local time budget per round) on this node",
    )
    client.add_argument(
        "--data-retry-seconds",
        type=_positive_float,
        default=30.0,
        help="when the site's data cannot be read (CVAT refuses or is down, a bad export), "
        "try again after this many seconds, doubling up to 300 (default: 30); the "
        "aggregator shows the error and the rounds go on without this site meanwhile",
    )
    client.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (0: a free one; default: none)",
    )
    client.add_argument(
        "--give-up-after",
        type=_seconds_or_never,
        default=600.0,
        help="seconds without an answer from the aggregator (or with its token still refused) "
        "before exiting; 0: never, as client pods in a cluster wait (default: %(default)s)",
    )
    # A test tool (tests/integration/test_poisoned_clients.py): this client sends a
    # Byzantine update instead of its own. Hidden from --help: no deployment wants it.
    client.add_argument("--poison", choices=["scale", "signflip", "random"], help=argparse.SUPPRESS)
    client.set_defaults(handler=_client)

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
    operator.add_argument(
        "--default-tracking-uri",
        metavar="URI",
        default=os.environ.get("FLOTILLA_DEFAULT_TRACKING_URI"),
        help="the MLflow server of jobs that name none (spec.tracking.trackingUri, or "
        "MLFLOW_TRACKING_URI in runtime.aggregator.envFromSecret); the chart sets its own "
        "(default: $FLOTILLA_DEFAULT_TRACKING_URI, else none: such jobs record nothing)",
    )
    operator.add_argument(
        "--resync-seconds",
        type=_positive_float,
        default=10.0,
        help="reconcile every job this often, for status and elasticity; node changes "
        "trigger one at once (default: %(default)s)",
    )
    operator.set_defaults(handler=_operator)

    _serve_parser(commands)
    _data_parser(commands)

    crd = commands.add_parser("crd", help="print the FederatedJob CustomResourceDefinition")
    crd.set_defaults(handler=_crd)

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
    return parser


def _serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    serve.add_argument("--port", type=_port, default=5001, help="default: %(default)s")
    serve.set_defaults(handler=_serve)


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


def _data_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data = commands.add_parser(
        "data", help="check a site's data before it joins a job, or save a CVAT export of it"
    )
    actions = data.add_subparsers(required=True, metavar="ACTION")
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
    _data_export_parser(actions)


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


def _data_export_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = actions.add_parser(
        "export",
        help="save a live CVAT task's or project's export (a zip) to train from offline",
        description=_EXPORT_DESCRIPTION,
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", type=_positive_int, metavar="ID", help="the task to export")
    which.add_argument(
        "--project", type=_positive_int, metavar="ID", help="the project to export, every task"
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
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="how long the server may take to make the export (default: %(default)g)",
    )
    export.add_argument("--force", action="store_true", help="replace FILE if it exists")
    export.set_defaults(handler=_data_export)


def _port(text: str) -> int:
    port = _int_at_least(text, 1)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return port


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
    return value


def _seconds_or_never(text: str) -> float:
    """A positive number of seconds, or 0 for never."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value == 0:
        return 0.0
    return _positive_float(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _tracking_flags(parser: argparse.ArgumentParser, *, default_help: str) -> None:
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


def _init_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--init",
        metavar="URI",
        help="start from these weights instead of the seed's: models:/NAME@ALIAS, "
        "models:/NAME/VERSION or runs:/RUN_ID, read from the job's MLflow server "
        "(overrides spec.model.init; a job resumed from its checkpoint ignores both)",
    )


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


def _plan(args: argparse.Namespace) -> int:
    from flotilla.k8s.preview import manifest, parse_node, preview

    job = read_job(args.job)  # paths as the cluster holds them, not resolved for this machine
    try:
        nodes = [parse_node(text) for text in args.node]
    except ValueError as error:
        print(f"flotilla plan: {error}", file=sys.stderr)
        return EXIT_USAGE
    namespace = args.namespace or job.metadata.namespace or "default"
    plan = preview(job, nodes, namespace=namespace, succeeded=args.status_phase == "Succeeded")
    if not plan.placements:
        print("flotilla plan: no node matches spec.clients.nodeSelector", file=sys.stderr)
    for site, problem in plan.unplaceable.items():
        print(f"flotilla plan: site {site} gets no client: {problem}", file=sys.stderr)
    sys.stdout.write(manifest(plan))
    return 0


def _aggregator(args: argparse.Namespace) -> int:
    # aiohttp's C parser copies every piece of a request body into a new bytes object; its
    # Python parser hands the socket's piece on as it is. Uploads are model-sized, so that
    # copy was a third pass over every byte the aggregator receives (~7% of the round at
    # 10M parameters x 32 clients, bench/round_bench.py). Set before aiohttp is imported.
    os.environ.setdefault("AIOHTTP_NO_EXTENSIONS", "1")
    from flotilla.fl.aggregator.main import AggregatorOptions, check_transport, serve
    from flotilla.fl.aggregator.tokens import load_tokens
    from flotilla.fl.tls import TlsConfigError, server_context

    job = load_job(args.job)
    if args.init is not None:
        job = job.with_model_init(args.init)
    options = AggregatorOptions(
        state_dir=args.state_dir,
        host=args.host,
        port=args.port,
        exit_when_done=args.exit_when_done,
        device=args.device,
        tracking=args.tracking,
        tracking_uri=args.tracking_uri,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    try:
        tokens = load_tokens(args.tokens_file)
        check_transport(job, options)
        if args.tls_cert and args.tls_key:
            server_context(args.tls_cert, args.tls_key)  # a bad file fails here, not mid-start
    except (ValueError, TlsConfigError) as error:
        print(f"flotilla aggregator: {error}", file=sys.stderr)
        return EXIT_USAGE

    def ready(url: str) -> None:
        logging.getLogger("flotilla").info("aggregator listening on %s", url)
        if args.ready_line:
            print(f"FLOTILLA-READY {url}", flush=True)

    return asyncio.run(
        serve(job, tokens=tokens, tokens_file=args.tokens_file, options=options, on_ready=ready)
    )


def _client(args: argparse.Namespace) -> int:
    from flotilla.fl.client.memory import return_large_blocks_to_the_os

    return_large_blocks_to_the_os(args.mmap_threshold)  # before torch is imported
    from flotilla.data import DataSourceError
    from flotilla.fl.client.loop import ClientOptions, FederatedClient
    from flotilla.fl.client.transport import (
        AggregatorConnection,
        AggregatorRefused,
        AggregatorUnavailable,
        AggregatorUntrusted,
        Backoff,
    )
    from flotilla.fl.tls import TlsConfigError, client_context
    from flotilla.ml.models import ModelError
    from flotilla.ml.training import configure_threads

    token = (
        args.token_file.read_text().strip()
        if args.token_file
        else os.environ.get("FLOTILLA_TOKEN", "")
    )
    if not token:
        print("flotilla client: no token: pass --token-file or set FLOTILLA_TOKEN", file=sys.stderr)
        return EXIT_USAGE
    https = args.aggregator.startswith("https://")
    if https != (args.ca_file is not None):
        problem = "https:// needs --ca-file" if https else "--ca-file needs an https:// URL"
        print(f"flotilla client: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        context = client_context(ca_file=args.ca_file) if args.ca_file else None
    except TlsConfigError as error:
        print(f"flotilla client: {error}", file=sys.stderr)
        return EXIT_USAGE
    configure_threads(args.threads)
    connection = AggregatorConnection(
        args.aggregator,
        token,
        backoff=Backoff(give_up_after=args.give_up_after),
        ssl_context=context,
        site=args.site,
    )
    try:
        client = FederatedClient(
            connection,
            ClientOptions(
                data_path=args.data,
                device=args.device,
                metrics_port=args.metrics_port,
                batch_size=args.batch_size,
                local_epochs=args.local_epochs,
                max_seconds=args.max_seconds,
                data_retry_seconds=args.data_retry_seconds,
                poison=args.poison,
            ),
        )
        phase = client.run()
    except (
        DataSourceError,
        ModelError,
        AggregatorUnavailable,
        AggregatorRefused,
        AggregatorUntrusted,
    ) as error:
        print(f"flotilla client: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, DataSourceError | ModelError) else EXIT_JOB_FAILED
    # A job that failed is the aggregator's to report; this client did its part.
    logging.getLogger("flotilla").info("the job ended: %s", phase)
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


def _crd(args: argparse.Namespace) -> int:
    from flotilla.k8s.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


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
