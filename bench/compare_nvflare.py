"""Flotilla against NVIDIA FLARE (2.9): round overhead, server memory, time to accuracy on digits.

Same model, same data and local training code (the NVFlare job in nvflare_app/ calls
Flotilla's), FedAvg over every client in both; NVFlare in its simulator (`SimEnv`) and
in POC mode (`PocEnv`: server, clients and admin as separate processes on 127.0.0.1).
For each round after the first (process warm-up): overhead = round wall time minus the
slowest client's training. Ratios are measured in one run; absolute times are context.

    .venv-bench/bin/python bench/compare_nvflare.py [--models cnn,10m] [--clients 2,8] \\
        [--rounds 4] [--modes sim,poc] [--flower]

Needs nvflare==2.9.0 beside the project in the bench environment (never a project
dependency): `.venv-bench/bin/pip install 'nvflare==2.9.0'`. `--flower` runs Flower's
Deployment Engine on the same jobs in the same run (compare_flower.py's runner).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_flower import needed_bytes, reached
from flotilla_run import run_flotilla
from jobs import digits_job, model_env, model_parameters, overhead_job
from procs import available_bytes, stop_group, tree_rss_peak

GIB = 1 << 30
MIB = 1 << 20
MARGIN = 2 * GIB
APP_DIR = Path(__file__).resolve().parent / "nvflare_app"
# mode: (label, NVFlare environment, server.task_request_interval or None for its default, 2 s)
FAST = 0.1
MODES = {
    "sim": ("NVFlare simulator", "sim", None),
    "poc": ("NVFlare POC", "poc", None),
    "sim-fast": (f"NVFlare simulator, task_request_interval {FAST}", "sim", FAST),
    "poc-fast": (f"NVFlare POC, task_request_interval {FAST}", "poc", FAST),
}


def run_nvflare(
    *,
    job: Path,
    sites: list[str],
    env: dict[str, str],
    scratch: Path,
    mode: str,
    task_request_interval: float | None = None,
) -> dict[str, Any]:
    """Run the job under NVFlare (`sim` or `poc`) to its end; rounds in the bench's shape.

    The server's memory is what its controller's process read from /proc/self/status:
    RSS before round 1 and VmHWM after the last round (in POC mode: the server's job
    process, where the model and the aggregation live). `treePeakKib`: the summed RSS of
    every process the run started (simulator: server and clients; POC: all of it).
    """
    out = scratch / "nvflare-rounds.json"
    log = scratch / "nvflare.log"
    env = {
        **os.environ,
        **env,
        "PYTHONPATH": f"{APP_DIR}:{env.get('PYTHONPATH', '')}",
        "NVFLARE_POC_WORKSPACE": str(scratch / "poc"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    command = [
        sys.executable,
        str(APP_DIR / "run_job.py"),
        "--job",
        str(job),
        "--out",
        str(out),
        "--sites",
        ",".join(sites),
        "--env",
        mode,
        "--workspace",
        str(scratch / "sim"),
    ]
    if task_request_interval is not None:
        command += ["--task-request-interval", str(task_request_interval)]
    started = time.time()
    process = subprocess.Popen(
        command,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=env,
        cwd=scratch,
        start_new_session=True,
    )
    try:
        with tree_rss_peak(process.pid, period=0.5) as memory:
            process.wait(timeout=3600)
    finally:
        stop_group(process)
        if mode == "poc":  # POC's services run in sessions of their own
            subprocess.run(
                ["nvflare", "poc", "stop"], env=env, capture_output=True, timeout=120, check=False
            )
    data = json.loads(out.read_text()) if out.exists() else {"rounds": []}
    rounds = [
        {
            "round": r["round"],
            "started": r["started"],
            "duration": r["durationSeconds"],
            "slowestTrain": max(r["trainSeconds"]),
            "answered": len(r["trainSeconds"]),
            "bytes": None,
            "accuracy": r.get("accuracy"),
        }
        for r in data["rounds"]
        if "durationSeconds" in r
    ]
    if process.returncode != 0 or len(rounds) < 1:
        raise RuntimeError(f"NVFlare {mode} run failed (rc {process.returncode}); see {log}")
    return {
        "started": started,
        "rounds": rounds,
        "baselineKib": data["baselineKib"],
        "peakKib": data["peakKib"],
        "treePeakKib": memory.peak_kib,
    }


def slug(name: str) -> str:
    return name.split(",")[0].split()[-1].lower()  # flotilla, simulator, poc, flower


def overheads(result: dict[str, Any]) -> tuple[float, float, float]:
    """Medians over the measured rounds: (wall, slowest training, overhead)."""
    rows = result["rounds"][1:] or result["rounds"]
    return (
        statistics.median(r["duration"] for r in rows),
        statistics.median(r["slowestTrain"] for r in rows),
        statistics.median(r["duration"] - r["slowestTrain"] for r in rows),
    )


def runners(args: argparse.Namespace) -> list[tuple[str, Callable[..., dict[str, Any]]]]:
    chosen: list[tuple[str, Callable[..., dict[str, Any]]]] = [("Flotilla", run_flotilla)]
    for mode in args.modes:
        label, where, interval = MODES[mode]
        chosen.append(
            (
                label,
                lambda where=where, interval=interval, **kw: run_nvflare(  # type: ignore[misc]
                    mode=where, task_request_interval=interval, **kw
                ),
            )
        )
    if args.flower:
        from flower_run import run_flower

        chosen.append(("Flower", run_flower))
    return chosen


def memory(result: dict[str, Any]) -> str:
    base = result.get("baselineKib")
    peak = result["peakKib"] * 1024
    if base is None:  # Flower: the SuperLink tree's summed RSS, sampled
        return f"{peak / MIB:.0f} MiB (tree)"
    return f"{peak / MIB:.0f} MiB (+{(peak - base * 1024) / MIB:.0f})"


def overhead_table(args: argparse.Namespace, data: Path, root: Path) -> None:
    print(
        "| model | clients | framework | overhead | **/ Flotilla's** | round wall | slowest "
        "training | server peak RSS (+ over before round 1) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        params = model_parameters(model)
        for clients in args.clients:
            label = f"| {model} ({params / 1e6:.2f}M) | {clients} |"
            need = max(needed_bytes(f, params=params, clients=clients) for f in ("flotilla", "x"))
            if need > available_bytes() - MARGIN:
                free = available_bytes() / GIB
                print(f"{label} not run: would need ~{need / GIB:.0f} GB, {free:.0f} GB free |")
                continue
            job = overhead_job(
                root=root, data=data, model=model, clients=clients, rounds=args.rounds
            )
            sites = [f"site-{i:02d}" for i in range(clients)]
            base: float | None = None
            for name, runner in runners(args):
                scratch = Path(
                    tempfile.mkdtemp(prefix=f"{slug(name)}-{model}-{clients}-", dir=root)
                )
                try:
                    result = runner(job=job, sites=sites, env=model_env(model), scratch=scratch)
                except Exception as error:  # report it, go on with the others
                    print(f"{label} {name} | failed: {str(error)[:200]} | | | | |", flush=True)
                    continue
                wall, train, over = overheads(result)
                base = over if name == "Flotilla" else base
                ratio = f"**{over / base:.1f}x**" if base and name != "Flotilla" else "-"
                print(
                    f"{label} {name} | {over * 1000:.0f} ms | {ratio} | {wall:.2f} s | "
                    f"{train:.3f} s | {memory(result)} |",
                    flush=True,
                )


def accuracy_table(args: argparse.Namespace, data: Path, root: Path) -> None:
    sites = ["site-a", "site-b", "site-c", "site-d"]
    job = digits_job(root=root, data=data, rounds=args.tta_rounds, sites=sites, compression=None)
    print(
        f"\nTime to accuracy {args.target} on the digits job ({len(sites)} sites, FedAvg, "
        f"central test data, up to {args.tta_rounds} rounds):\n"
    )
    print(
        "| framework | round reaching it | seconds | **/ Flotilla's** | final accuracy "
        "| job wall time | median round | server peak RSS (+ over before round 1) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base: float | None = None
    for name, runner in runners(args):
        scratch = Path(tempfile.mkdtemp(prefix=f"tta-{slug(name)}-", dir=root))
        try:
            result = runner(job=job, sites=sites, env=model_env("cnn"), scratch=scratch)
        except Exception as error:  # report it, go on with the others
            print(f"| {name} | failed: {str(error)[:200]} | | | | | | |", flush=True)
            continue
        last = result["rounds"][-1]
        wall = last["started"] + last["duration"] - result["started"]
        hit = reached(result, args.target)
        if hit and name == "Flotilla":
            base = hit[1]
        ratio = f"**{hit[1] / base:.1f}x**" if hit and base and name != "Flotilla" else "-"
        where = f"{hit[0]} | {hit[1]:.1f} s | {ratio}" if hit else "not reached | - | -"
        median = statistics.median(r["duration"] for r in result["rounds"])
        print(
            f"| {name} | {where} | {last['accuracy']:.4f} | {wall:.1f} s | {median:.2f} s "
            f"| {memory(result)} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn", help="of cnn, 10m, 50m (comma-separated)")
    parser.add_argument("--clients", default="2,8", help="client counts (comma-separated)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds per run; the first is warm-up"
    )
    parser.add_argument(
        "--modes",
        default="sim,poc",
        help=f"NVFlare modes: sim, poc (its defaults), sim-fast, poc-fast (the server tells "
        f"clients to ask for their next task after {FAST} s instead of 2 s)",
    )
    parser.add_argument("--flower", action="store_true", help="run Flower's too (needs flwr)")
    parser.add_argument("--target", type=float, default=0.93, help="accuracy for time-to-accuracy")
    parser.add_argument("--tta-rounds", type=int, default=10, help="rounds of the digits job")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep its logs")
    args = parser.parse_args()
    args.models = args.models.split(",")
    args.clients = [int(c) for c in args.clients.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    from importlib.metadata import version

    from flotilla.data.digits_example import write_digits_example

    print(
        f"machine: {os.cpu_count()} cores, {available_bytes() / GIB:.0f} GB free; "
        f"nvflare {version('nvflare')}, torch {version('torch')}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    with tempfile.TemporaryDirectory(prefix="flotilla-nvflare-") as scratch:
        root = Path(scratch)
        if args.keep:
            root = args.keep.resolve()
            root.mkdir(parents=True, exist_ok=True)
        write_digits_example(root / "shared", sites=["site"], seed=0)
        if not args.skip_overhead:
            overhead_table(args, root / "shared", root)
        if not args.skip_accuracy:
            sites = ["site-a", "site-b", "site-c", "site-d"]
            write_digits_example(root / "digits", sites=sites, seed=0)
            accuracy_table(args, root / "digits", root)


if __name__ == "__main__":
    main()
