"""Flotilla's round overhead against the floor, and the aggregator's memory as clients grow.

Runs a real aggregator and N real clients on 127.0.0.1 with trivial local work (one
SGD step) on synthetic ~10M and ~50M float32-parameter models, so the framework
dominates the round. Reports, per model and client count: the overhead (round wall
time minus the slowest client's training, median of the rounds after the first), the
floor (the round's bytes over loopback bandwidth measured in this same run, plus the
weighted average at this machine's memory bandwidth), their ratio; and the aggregator's
peak RSS against its RSS before round 1, in models, with the bytes each extra client adds;
each client's peak RSS against its base (client_base.py: runtime and data, no model), in
models; and the peak of all processes' summed PSS (shared library pages counted once).

    .venv/bin/python bench/round_bench.py [--models 10m,50m] [--clients 2,8] [--rounds 4]

Not part of the test suite: figures vary with the machine and its load; the ratios are
what to compare. Runs that would not fit in available memory are reported, not run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import floor_seconds, loopback_bandwidth
from flotilla_run import run_flotilla
from jobs import model_env, model_parameters, overhead_job
from procs import available_bytes

GIB, MIB = 1 << 30, 1 << 20
MARGIN = 2 * GIB  # left for the machine's other work


def needed_bytes(*, params: int, clients: int) -> int:
    """Aggregator ~4 models; a client: its runtime's own pages (torch's libraries are
    shared between the processes) and ~1.5 models: the model, one layer's gradient."""
    model = params * 4
    return int(0.5 * GIB + 4 * model + clients * (0.25 * GIB + 1.5 * model))


def client_base(job: Path, model: str) -> int:
    """Peak RSS of a process holding what a client holds before its model (client_base.py)."""
    script = Path(__file__).resolve().parent / "client_base.py"
    env = {**os.environ, **model_env(model)}
    out = subprocess.run(
        [sys.executable, str(script), str(job), "site-00"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.split()[-1]) * 1024


def measure(
    *, model: str, clients: int, rounds: int, data: Path, root: Path, profile: Path | None
) -> dict[str, Any]:
    job = overhead_job(root=root, data=data, model=model, clients=clients, rounds=rounds)
    sites = [f"site-{i:02d}" for i in range(clients)]
    scratch = Path(tempfile.mkdtemp(prefix=f"flotilla-{model}-{clients}-", dir=root))
    if profile:
        profile = profile.resolve() / f"aggregator-{model}-{clients}.speedscope.json"
    result = run_flotilla(
        job=job, sites=sites, env=model_env(model), scratch=scratch, profile=profile
    )
    rows = result["rounds"][1:] or result["rounds"]  # round 1 includes process warm-up
    return {
        "wall": statistics.median(r["duration"] for r in rows),
        "overhead": statistics.median(r["duration"] - r["slowestTrain"] for r in rows),
        "base": result["baselineKib"] * 1024,
        "peak": result["peakKib"] * 1024,
        "client": result["clientPeakKib"] * 1024,
        "client_base": client_base(job, model),
        "everything": result["allPssPeakKib"] * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="10m,50m", help="of cnn, 10m, 50m (comma-separated)")
    parser.add_argument("--clients", default="2,8", help="client counts (comma-separated)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds per run; the first is warm-up"
    )
    parser.add_argument(
        "--profile", type=Path, help="run the aggregator under py-spy, writing profiles here"
    )
    args = parser.parse_args()
    from flotilla.data.digits_example import write_digits_example

    bandwidth = loopback_bandwidth()
    print(
        f"machine: {os.cpu_count()} cores, {available_bytes() / GIB:.0f} GB free; "
        f"{time.strftime('%Y-%m-%d')}; loopback bandwidth (this run) {bandwidth / 1e9:.2f} GB/s\n"
    )
    print(
        "| model | clients | round wall | overhead | floor (wire + fold) | **overhead / floor** "
        "| aggregator before → peak | **(peak - before) / model** | client base → peak "
        "| **(client peak - base) / model** | all processes, peak PSS |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    peaks: dict[str, list[tuple[int, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as scratch:
        root = Path(scratch)
        write_digits_example(root / "data", sites=["site"], seed=0)
        for model in args.models.split(","):
            params = model_parameters(model)
            model_bytes = params * 4
            for clients in (int(c) for c in args.clients.split(",")):
                label = f"| {model} ({params / 1e6:.2f}M) | {clients} |"
                need = needed_bytes(params=params, clients=clients)
                if need > available_bytes() - MARGIN:
                    print(
                        f"{label} not run: would need ~{need / GIB:.0f} GB, "
                        f"{available_bytes() / GIB:.0f} GB free | | | | | | | | | |",
                        flush=True,
                    )
                    continue
                m = measure(
                    model=model,
                    clients=clients,
                    rounds=args.rounds,
                    data=root / "data",
                    root=root,
                    profile=args.profile,
                )
                wire, fold = floor_seconds(params=params, clients=clients, bandwidth=bandwidth)
                peaks.setdefault(model, []).append((clients, m["peak"]))
                print(
                    f"{label} {m['wall']:.3f} s | {m['overhead']:.3f} s | "
                    f"{wire + fold:.3f} s ({wire:.3f} + {fold:.3f}) | "
                    f"**{m['overhead'] / (wire + fold):.2f}x** | "
                    f"{m['base'] / MIB:.0f} → {m['peak'] / MIB:.0f} MiB | "
                    f"**{(m['peak'] - m['base']) / model_bytes:.2f}x** | "
                    f"{m['client_base'] / MIB:.0f} → {m['client'] / MIB:.0f} MiB | "
                    f"**{(m['client'] - m['client_base']) / model_bytes:.2f}x** | "
                    f"{m['everything'] / GIB:.2f} GiB |",
                    flush=True,
                )
    for model, points in peaks.items():
        if len(points) >= 2:
            (c0, p0), (c1, p1) = points[0], points[-1]
            print(
                f"\n{model}: aggregator peak grows {(p1 - p0) / (c1 - c0) / MIB:.1f} MiB per extra "
                f"client ({c0} → {c1} clients; model {model_parameters(model) * 4 / MIB:.0f} MiB)"
            )


if __name__ == "__main__":
    main()
