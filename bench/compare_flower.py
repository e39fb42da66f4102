"""Flotilla against Flower's Deployment Engine: round overhead, and time to accuracy on digits.

Same model, same client processes on 127.0.0.1, same data and local training code (the
Flower App in flower_app/ calls Flotilla's), FedAvg over every client in both. For each
round after the first (process warm-up): overhead = round wall time minus the slowest
client's training. Ratios are measured in one run; absolute times are context only.

    .venv-bench/bin/python bench/compare_flower.py [--models cnn,10m] [--clients 2,8] [--rounds 4]

Needs flwr: `make bench-env` builds .venv-bench with it. Runs that would not fit in the
machine's available memory are reported as not run, with the memory they would need.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import floor_seconds, loopback_bandwidth
from flotilla_run import run_flotilla
from flower_run import run_flower
from jobs import digits_job, model_env, model_parameters, overhead_job
from procs import available_bytes

GIB = 1 << 30
MARGIN = 2 * GIB  # left for the machine's other work


def needed_bytes(framework: str, *, params: int, clients: int) -> int:
    """A generous estimate from measured process sizes: runtime + model copies."""
    model = params * 4
    if framework == "flotilla":  # aggregator ~4 models; a client: model, grads, buffers
        return int(0.5 * GIB + 4 * model + clients * (0.4 * GIB + 4 * model))
    # SuperLink + ServerApp hold every reply (~3 copies per client); a SuperNode and the
    # ClientApp process it starts per message
    return int(0.8 * GIB + 3 * clients * model + clients * (0.6 * GIB + 4 * model))


def overheads(result: dict[str, Any]) -> tuple[float, float, float]:
    """Medians over the measured rounds: (wall, slowest training, overhead)."""
    rows = result["rounds"][1:] or result["rounds"]
    return (
        statistics.median(r["duration"] for r in rows),
        statistics.median(r["slowestTrain"] for r in rows),
        statistics.median(r["duration"] - r["slowestTrain"] for r in rows),
    )


def run_both(
    *, model: str, clients: int, rounds: int, data: Path, root: Path
) -> dict[str, Any] | str:
    params = model_parameters(model)
    need = max(needed_bytes(f, params=params, clients=clients) for f in ("flotilla", "flower"))
    if need > available_bytes() - MARGIN:
        return f"not run: would need ~{need / GIB:.0f} GB, {available_bytes() / GIB:.0f} GB free"
    job = overhead_job(root=root, data=data, model=model, clients=clients, rounds=rounds)
    sites = [f"site-{i:02d}" for i in range(clients)]
    out: dict[str, Any] = {}
    for name, runner in (("flotilla", run_flotilla), ("flower", run_flower)):
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-{model}-{clients}-", dir=root))
        out[name] = runner(job=job, sites=sites, env=model_env(model), scratch=scratch)
    return out


def overhead_table(args: argparse.Namespace, data: Path, root: Path) -> None:
    bandwidth = loopback_bandwidth()
    print(f"loopback bandwidth (this run): {bandwidth / 1e9:.2f} GB/s\n")
    print(
        "| model | clients | Flotilla overhead | Flower overhead | **Flower / Flotilla** "
        "| Flotilla / floor | floor (wire + fold) | round wall Flotilla / Flower |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in args.models:
        params = model_parameters(model)
        for clients in args.clients:
            label = f"| {model} ({params / 1e6:.2f}M) | {clients} |"
            result = run_both(
                model=model, clients=clients, rounds=args.rounds, data=data, root=root
            )
            if isinstance(result, str):
                print(f"{label} {result} | | | | | |", flush=True)
                continue
            f_wall, _, f_over = overheads(result["flotilla"])
            w_wall, _, w_over = overheads(result["flower"])
            wire, fold = floor_seconds(params=params, clients=clients, bandwidth=bandwidth)
            print(
                f"{label} {f_over * 1000:.0f} ms | {w_over * 1000:.0f} ms | "
                f"**{w_over / f_over:.1f}x** | {f_over / (wire + fold):.2f}x | "
                f"{(wire + fold) * 1000:.0f} ms ({wire * 1000:.0f} + {fold * 1000:.0f}) | "
                f"{f_wall:.2f} s / {w_wall:.2f} s |",
                flush=True,
            )


def reached(result: dict[str, Any], target: float) -> tuple[int, float] | None:
    """(round, seconds from the first round's start to that round's aggregate) or None."""
    rounds = result["rounds"]
    for r in rounds:
        if r["accuracy"] is not None and r["accuracy"] >= target:
            return r["round"], r["started"] + r["duration"] - rounds[0]["started"]
    return None


def accuracy_table(args: argparse.Namespace, data: Path, root: Path) -> None:
    sites = ["site-a", "site-b", "site-c", "site-d"]
    job = digits_job(root=root, data=data, rounds=args.tta_rounds, sites=sites, compression=None)
    print(
        f"\nTime to accuracy {args.target} on the digits job ({len(sites)} sites, FedAvg, "
        f"central test data, up to {args.tta_rounds} rounds):\n"
    )
    print("| framework | rounds | seconds | final accuracy | job wall time |")
    print("| --- | --- | --- | --- | --- |")
    seconds: dict[str, float] = {}
    for name, runner in (("Flotilla", run_flotilla), ("Flower", run_flower)):
        scratch = Path(tempfile.mkdtemp(prefix=f"tta-{name}-", dir=root))
        result = runner(job=job, sites=sites, env=model_env("cnn"), scratch=scratch)
        last = result["rounds"][-1]
        wall = last["started"] + last["duration"] - result["started"]
        hit = reached(result, args.target)
        if hit:
            seconds[name] = hit[1]
        where = f"{hit[0]} | {hit[1]:.1f} s" if hit else "not reached | -"
        print(f"| {name} | {where} | {last['accuracy']:.4f} | {wall:.1f} s |", flush=True)
    if len(seconds) == 2:
        print(
            f"\n**Flower / Flotilla time to {args.target}: "
            f"{seconds['Flower'] / seconds['Flotilla']:.1f}x**"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="cnn,10m", help="of cnn, 10m, 50m (comma-separated)")
    parser.add_argument("--clients", default="2,8", help="client counts (comma-separated)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds per run; the first is warm-up"
    )
    parser.add_argument("--target", type=float, default=0.93, help="accuracy for time-to-accuracy")
    parser.add_argument("--tta-rounds", type=int, default=10, help="rounds of the digits job")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    args.models = args.models.split(",")
    args.clients = [int(c) for c in args.clients.split(",")]
    from flotilla.data.digits_example import write_digits_example

    print(
        f"machine: {os.cpu_count()} cores, {available_bytes() / GIB:.0f} GB free; "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as scratch:
        root = Path(scratch)
        write_digits_example(root / "shared", sites=["site"], seed=0)
        if not args.skip_overhead:
            overhead_table(args, root / "shared", root)
        if not args.skip_accuracy:
            sites = ["site-a", "site-b", "site-c", "site-d"]
            write_digits_example(root / "digits", sites=sites, seed=0)
            accuracy_table(args, root / "digits", root)


if __name__ == "__main__":
    main()
