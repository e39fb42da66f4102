"""Many simulated sites on one real aggregator: round overhead, memory, dispatch, descriptors.

The aggregator is the product's own process (`flotilla aggregator`, TLS by default with a
throwaway CA, as `flotilla run` makes one). The sites are light simulated clients, a few
hundred per OS process on one asyncio loop each, that speak the real protocol: a bearer
token each (tokens.json, as the local runner writes it), `GET /v1/job`, the `/v1/task`
long-poll, the site report, the model download, and the update upload with the real
client's headers and body (the trained weights for float32 jobs, the job's compressed delta
otherwise, encoded by the product's `UpdateEncoder`). Local training is a fixed
perturbation of the downloaded weights and `--train-seconds` of sleep. Clients of one
process check every download as the real client does (its size and layout header) and keep
the bytes of the first one per model version: their updates are the same bytes, computed
once, so 1,000 sites need neither 1,000 models in memory nor 1,000 trainings of CPU.

Per model (`cnn`: the digits CNN, 38,282 parameters; `1m`: bench_models.deep_mlp 496 wide,
4 deep, 1.02M) and site count: the round's wall time (the aggregator's record, median of
the rounds after the first) and its overhead (wall minus the fake training); the
aggregator's CPU seconds per round and the generator's (both from /proc, over the same
rounds); the time from a round opening (its record's start) to each client receiving its
task (p50, p99, max); the aggregator's RSS before any client, with every client connected
(before round 1 opens) and at its peak (`VmHWM`), against the target of 3 models + 200 KiB
per connected client, and the peak's growth per client fitted over the site counts; the
bytes queued in the kernel for its connections (`ss`) and the host's TCP buffer memory,
with how often the host entered TCP memory pressure; its open descriptors and threads at
their peak; updates sampled, answered, refused and lost. Each site's own socket buffers are
held at 64 KiB (SOCKET_BUFFER): a real site's are in its own kernel, not the aggregator's.

    .venv/bin/python bench/load_sites.py [--models cnn,1m] [--clients 100,300,1000]
        [--rounds 4] [--processes 2] [--transport tls|plain] [--train-seconds 0.5]
        [--deadline 300] [--keep DIR] [--profile DIR] [--pin] [--timeline]

The bench raises its own open-files limit to the hard limit, for its worker processes; the
aggregator raises its own at start. A job whose round fails is not retried
(`maxRoundRetries: 0`): the table then says how many updates the failed round took, and why it
failed.

The simulated sites are load_sites_worker.py, what is sampled of the aggregator and the host
load_sites_watch.py, the figures and the table load_sites_report.py, a round's course
step by step (`--timeline`) load_sites_timeline.py.

Not part of the test suite: figures in one run, never pass/fail (bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_sites_config import BENCH_DIR, GIB, MODELS, RunConfig, raise_fd_limit
from load_sites_report import HEADER, needed_bytes, report_targets, row, summarize
from load_sites_timeline import LoopClock, timeline
from load_sites_watch import Watch, tcp_memory_pressures
from procs import available_bytes, status_kib, stop_group

from flotilla.fl.tls import client_context


def model_env(model: str) -> dict[str, str]:
    """What the aggregator and the generator need to build the model: bench/, its shape."""
    width, depth = MODELS[model] or (0, 0)
    return {
        "PYTHONPATH": f"{BENCH_DIR}:{os.environ.get('PYTHONPATH', '')}",
        "FLOTILLA_BENCH_WIDTH": str(width),
        "FLOTILLA_BENCH_DEPTH": str(depth),
    }


# -- the aggregator and what is measured of it -----------------------------------------------


def write_job(
    *, scratch: Path, model: str, sites: list[str], rounds: int, tls: bool, deadline: float
) -> Path:
    """Every site in every round, a deadline no healthy round comes near, no evaluation."""
    spec: dict[str, Any] = {
        "rounds": rounds,
        "labels": [str(d) for d in range(10)],
        "model": {"name": "cnn-small"},
        "data": {"cvatExport": {"path": str(scratch / "no-data")}},  # never read: sites simulate
        "sites": [{"name": site} for site in sites],
        "evaluation": {"federated": False},
        "clients": {  # a round that fails, fails the job: its figures say why
            "minClients": len(sites),
            "roundDeadlineSeconds": deadline,
            "joinGraceSeconds": 300,
            "maxRoundRetries": 0,
        },
        "strategy": {"name": "fedavg"},
        "security": {"tls": {"mode": "operator" if tls else "disabled"}},
    }
    if MODELS[model]:
        spec["model"] = {"entrypoint": "bench_models:deep_mlp"}
    spec["model"]["input"] = {"channels": 1, "height": 8, "width": 8}
    document = {
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "load"},
        "spec": spec,
    }
    path = scratch / "job.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(document))
    return path


def pinned_to(cores: set[int] | None) -> Callable[[], None] | None:
    """A child's pre-exec step that binds it (and the threads it will start) to `cores`."""
    return None if cores is None else lambda: os.sched_setaffinity(0, cores)


def core_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """With `pin`, the aggregator's cores and the generator's: core 0 for the aggregator
    alone (its sites stand for other machines, whose CPU is not the aggregator's), the
    others for the generator. Without, both float over every core."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or len(cores) < 2:
        return None, None
    return {cores[0]}, set(cores[1:])


def start_aggregator(
    *,
    job: Path,
    scratch: Path,
    env: dict[str, str],
    tls_args: list[str],
    profile: Path | None,
    cores: set[int] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """`flotilla aggregator` as `flotilla run` starts it, but for sites that stand for
    remote ones (no --clients-on-this-host); returns it and its URL. With `profile`, under
    cProfile (its event-loop thread only), the stats written there; with `cores`, bound to
    them."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    command = [
        *(sys.executable, *profiler, "-m", "flotilla", "aggregator", "--job", str(job)),
        *("--tokens-file", str(scratch / "tokens.json"), "--state-dir", str(scratch / "state")),
        *("--host", "127.0.0.1", "--port", "0", "--ready-line", "--no-tracking", *tls_args),
    ]
    with open(scratch / "aggregator.log", "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
            preexec_fn=pinned_to(cores),
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("FLOTILLA-READY "):
        stop_group(process)
        raise RuntimeError(f"the aggregator did not start; see {scratch}/aggregator.log")
    return process, line.split()[-1]


def get_json(url: str, context: Any, timeout: float = 60) -> Any:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        return json.loads(response.read())


def start_workers(
    config: RunConfig,
    *,
    url: str,
    ca: Path | None,
    tokens: dict[str, str],
    scratch: Path,
    cores: set[int] | None = None,
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    names = sorted(tokens)
    workers = []
    for index in range(config.processes):
        mine = names[index :: config.processes]
        settings = {
            "url": url,
            "ca": str(ca) if ca else None,
            "trainSeconds": config.train_seconds,
            "rampSeconds": config.ramp_seconds,
            "sites": {name: tokens[name] for name in mine},
            "out": str(scratch / f"worker-{index}.json"),
        }
        path = scratch / f"worker-{index}.config.json"
        path.write_text(json.dumps(settings))
        with open(scratch / f"worker-{index}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "load_sites_worker.py"), str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **model_env(config.model)},
                start_new_session=True,
                preexec_fn=pinned_to(cores),
            )
        workers.append((process, Path(settings["out"])))
    return workers


def wait_for_end(
    url: str, context: Any, workers: list[subprocess.Popen[bytes]], timeout: float
) -> str:
    """The job's end phase, from /healthz twice a second (cheap: a long-poll of /v1/status
    would build the status on every update); 'stuck' or 'workers died' otherwise."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            phase = str(get_json(f"{url}/healthz", context, timeout=10)["phase"])
        except (OSError, ValueError):  # URLError, a timeout: an aggregator too busy to answer
            phase = "no answer"
        if phase in ("done", "failed"):
            return phase
        if all(w.poll() is not None for w in workers):
            return "workers died"
        time.sleep(0.5)
    return "stuck"


def final_state(url: str, context: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The completed rounds' records and the status, or none if the aggregator won't say."""
    try:
        return get_json(f"{url}/v1/history", context), get_json(f"{url}/v1/status", context)
    except (OSError, ValueError) as error:
        return [], {"message": f"no status: {error}", "failure": None}


def run_one(config: RunConfig, root: Path) -> dict[str, Any]:
    """One aggregator, `config.clients` simulated sites, the job to its end; the figures."""
    from flotilla.local.tls import write_local_tls

    scratch = Path(tempfile.mkdtemp(prefix=f"load-{config.model}-{config.clients}-", dir=root))
    sites = [f"site-{i:04d}" for i in range(config.clients)]
    tokens = {site: secrets.token_urlsafe(32) for site in sites}  # as the local runner makes
    (scratch / "tokens.json").touch(mode=0o600)
    (scratch / "tokens.json").write_text(json.dumps(tokens))
    job = write_job(
        scratch=scratch,
        model=config.model,
        sites=sites,
        rounds=config.rounds,
        tls=config.tls,
        deadline=config.deadline,
    )
    tls = write_local_tls(scratch / "tls") if config.tls else None
    env = {**os.environ, **model_env(config.model), "FLOTILLA_LOG_LEVEL": "WARNING"}
    aggregator_cores, generator_cores = core_split(config.pin)
    aggregator, url = start_aggregator(
        cores=aggregator_cores,
        job=job,
        scratch=scratch,
        env=env,
        tls_args=tls.aggregator_args() if tls else [],
        profile=config.profile / f"aggregator-{config.model}-{config.clients}.pstats"
        if config.profile
        else None,
    )
    context = client_context(ca_file=tls.ca) if tls else None
    base = status_kib(aggregator.pid, "VmRSS")
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        pressures = tcp_memory_pressures()
        clock = LoopClock(aggregator.pid) if config.timeline else None
        with (
            Watch(aggregator.pid, port=int(url.rsplit(":", 1)[1])) as watch,
            clock or contextlib.nullcontext(),
        ):
            workers = start_workers(
                config,
                url=url,
                ca=tls.ca if tls else None,
                tokens=tokens,
                scratch=scratch,
                cores=generator_cores,
            )
            watch.workers = [w.pid for w, _ in workers]
            phase = wait_for_end(url, context, [w for w, _ in workers], config.timeout)
            history, status = final_state(url, context)
            peak = status_kib(aggregator.pid, "VmHWM")
            limit = _fd_limit(aggregator.pid)
            ended = time.monotonic() + (60 if phase in ("done", "failed") else 0)
            for process, _ in workers:  # the sites learn the end on their next task
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(ended - time.monotonic(), 0.1))
    finally:
        for process, _ in workers:
            if process.poll() is None:
                stop_group(process, timeout=5)
        stop_group(aggregator)
    tallies = [json.loads(out.read_text()) for _, out in workers if out.exists()]
    return summarize(
        config,
        phase=phase,
        history=history,
        tallies=tallies,
        watch=watch,
        memory={"base": base, "peak": peak, "pressures": tcp_memory_pressures() - pressures},
        fd_limit=limit,
    ) | {
        "scratch": str(scratch),
        "message": status["message"],
        "failure": status["failure"],
        "timeline": timeline(history, tallies, clock) if clock else "",
    }


def _fd_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,1m", help="of cnn, 1m (comma-separated)")
    parser.add_argument("--clients", default="100,300,1000", help="site counts (comma-separated)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run; the first warms up")
    parser.add_argument("--processes", type=int, default=2, help="generator processes")
    parser.add_argument("--transport", choices=["tls", "plain"], default="tls")
    parser.add_argument("--train-seconds", type=float, default=0.5, help="the fake training")
    parser.add_argument("--ramp-seconds", type=float, default=2.0, help="spread of site starts")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run at most")
    parser.add_argument(
        "--deadline", type=float, default=300, help="roundDeadlineSeconds; no round is retried"
    )
    parser.add_argument("--keep", type=Path, help="keep each run's logs and state under here")
    parser.add_argument(
        "--profile", type=Path, help="run the aggregator under cProfile, writing stats here"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the aggregator alone on core 0, the generator on the others (its sites stand "
        "for other machines)",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="after each run, every round's course in 100 ms steps: the aggregator's event "
        "loop busy, sites with their model, uploads answered",
    )
    args = parser.parse_args()
    if args.profile:  # cProfile writes its stats there only at the end, and not to a missing dir
        args.profile.mkdir(parents=True, exist_ok=True)
    limit = raise_fd_limit()
    print(
        f"machine: {os.cpu_count()} cores, {available_bytes() / GIB:.0f} GB free; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.transport}; open files limit {limit} "
        f"(the aggregator inherits it); fake training {args.train_seconds:g} s; "
        f"{args.processes} generator processes"
        f"{'; aggregator pinned to core 0, generator to the rest' if args.pin else ''}\n"
    )
    print(HEADER)
    print("|" + " --- |" * (HEADER.count("|") - 1))
    results = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        temporary = None if args.keep else tempfile.TemporaryDirectory(prefix="flotilla-load-")
        root = args.keep or Path(stack.enter_context(temporary))  # type: ignore[arg-type]
        for model in args.models.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                need = needed_bytes(model=model, clients=clients, processes=args.processes)
                if need > available_bytes() - 2 * GIB:
                    print(f"| {model} | {clients} | not run: would need ~{need / GIB:.1f} GB |")
                    continue
                config = RunConfig(
                    model=model,
                    clients=clients,
                    rounds=args.rounds,
                    processes=args.processes,
                    tls=args.transport == "tls",
                    train_seconds=args.train_seconds,
                    ramp_seconds=args.ramp_seconds,
                    timeout=args.timeout,
                    deadline=args.deadline,
                    profile=args.profile.resolve() if args.profile else None,
                    pin=args.pin,
                    timeline=args.timeline,
                )
                results.append(run_one(config, root))
                print(row(results[-1], args.train_seconds), flush=True)
                if results[-1]["timeline"]:
                    print(results[-1]["timeline"], flush=True)
    report_targets(results, args.train_seconds)


if __name__ == "__main__":
    main()
