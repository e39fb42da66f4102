"""Flotilla's round overhead against the floor, and the aggregator's memory as clients grow.

Runs a real aggregator and N real clients on 127.0.0.1 with trivial local work (one
SGD step) on synthetic ~10M and ~50M float32-parameter models, so the framework
dominates the round. Reports, per model and client count: the overhead (round wall
time minus the slowest client's training, median of the rounds after the first), the
floor (the round's bytes over loopback bandwidth measured in this same run, plus the
weighted average at this machine's memory bandwidth), their ratio; and the aggregator's
peak RSS against its RSS before round 1, in models, with the bytes each extra client adds;
each client's peak RSS against its base (client_base.py: runtime and data, no model), in
models; the peak of all processes' summed PSS (shared library pages counted once); and
the CPU seconds per measured round of the aggregator and of all clients together.

With `--transport plain,tls` each job runs over plain HTTP and over TLS (the product's
default; a throwaway CA as `flotilla run` makes), back to back; the TLS rows' floor is
the same bytes over one TLS connection on loopback (floor.py), and they add the ratio
of their overhead to the plain row's.

    .venv/bin/python bench/round_bench.py [--models 10m,50m] [--clients 2,8] [--rounds 4]
        [--transport plain,tls]

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

from floor import floor_seconds, loopback_bandwidth, tls_loopback_bandwidth
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
    *,
    model: str,
    clients: int,
    rounds: int,
    data: Path,
    root: Path,
    profile: Path | None,
    tls: bool = False,
    receive_buffers: int | None = None,
) -> dict[str, Any]:
    job = overhead_job(
        root=root,
        data=data,
        model=model,
        clients=clients,
        rounds=rounds,
        tls=tls,
        receive_buffers=receive_buffers,
    )
    sites = [f"site-{i:02d}" for i in range(clients)]
    transport = "tls" if tls else "plain"
    scratch = Path(tempfile.mkdtemp(prefix=f"flotilla-{model}-{clients}-{transport}-", dir=root))
    if profile:
        profile = profile.resolve() / f"aggregator-{model}-{clients}-{transport}.speedscope.json"
    result = run_flotilla(
        job=job, sites=sites, env=model_env(model), scratch=scratch, profile=profile, tls=tls
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
        "cpu": [seconds / len(rows) for seconds in result["cpuAfterRound1"]],
    }


HEADER = (
    "| model | clients | transport | round wall | overhead | floor (wire + fold) "
    "| **overhead / floor** | **overhead / plain's** | aggregator before → peak "
    "| **(peak - before) / model** | client base → peak | **(client peak - base) / model** "
    "| all processes, peak PSS | CPU per round: aggregator + clients |"
)


def row(
    *, m: dict[str, Any], wire: float, fold: float, model_bytes: int, plain: float | None
) -> str:
    """One measured run as the table's cells after model, clients and transport."""
    versus = f"**{m['overhead'] / plain:.2f}x**" if plain else "-"
    return (
        f"{m['wall']:.3f} s | {m['overhead']:.3f} s | "
        f"{wire + fold:.3f} s ({wire:.3f} + {fold:.3f}) | "
        f"**{m['overhead'] / (wire + fold):.2f}x** | {versus} | "
        f"{m['base'] / MIB:.0f} → {m['peak'] / MIB:.0f} MiB | "
        f"**{(m['peak'] - m['base']) / model_bytes:.2f}x** | "
        f"{m['client_base'] / MIB:.0f} → {m['client'] / MIB:.0f} MiB | "
        f"**{(m['client'] - m['client_base']) / model_bytes:.2f}x** | "
        f"{m['everything'] / GIB:.2f} GiB | "
        f"{m['cpu'][0] + m['cpu'][1]:.2f} s ({m['cpu'][0]:.2f} + {m['cpu'][1]:.2f}) |"
    )


def bandwidths(transports: list[str]) -> dict[str, float]:
    """Loopback bytes per second for each transport, measured now; says what it measured."""
    found = {"plain": loopback_bandwidth()}
    line = f"loopback bandwidth (this run) {found['plain'] / 1e9:.2f} GB/s"
    if "tls" in transports:
        found["tls"], cipher = tls_loopback_bandwidth()
        line += f", over TLS {found['tls'] / 1e9:.2f} GB/s ({cipher})"
    print(
        f"machine: {os.cpu_count()} cores, {available_bytes() / GIB:.0f} GB free; "
        f"{time.strftime('%Y-%m-%d')}; {line}\n"
    )
    return found


def run_all(args: argparse.Namespace, root: Path) -> dict[str, list[tuple[int, int]]]:
    """Every model x clients x transport; prints a row for each; the aggregator's peaks
    (under the first transport)."""
    transports = args.transport.split(",")
    speed = bandwidths(transports)
    print(HEADER)
    print("| --- " * (HEADER.count("|") - 1) + "|")
    peaks: dict[str, list[tuple[int, int]]] = {}
    for model in args.models.split(","):
        for clients in (int(c) for c in args.clients.split(",")):
            first: float | None = None
            for transport in transports:
                m = one_job(args, root, model=model, clients=clients, transport=transport)
                if m is None:
                    continue
                wire, fold = floor_seconds(
                    params=model_parameters(model), clients=clients, bandwidth=speed[transport]
                )
                plain = first if transport == "tls" else None
                cells = row(m=m, wire=wire, fold=fold, model_bytes=m["model_bytes"], plain=plain)
                print(f"{m['label']} {cells}", flush=True)
                if first is None:
                    first = m["overhead"]
                    peaks.setdefault(model, []).append((clients, m["peak"]))
    return peaks


def one_job(
    args: argparse.Namespace, root: Path, *, model: str, clients: int, transport: str
) -> dict[str, Any] | None:
    """One run's measurements and its row label; None (a row saying so) if it cannot fit."""
    params = model_parameters(model)
    label = f"| {model} ({params / 1e6:.2f}M) | {clients} | {transport} |"
    need = needed_bytes(params=params, clients=clients)
    if need > available_bytes() - MARGIN:
        free = available_bytes() / GIB
        print(f"{label} not run: would need ~{need / GIB:.0f} GB, {free:.0f} GB free", flush=True)
        return None
    m = measure(
        model=model,
        clients=clients,
        rounds=args.rounds,
        data=root / "data",
        root=root,
        profile=args.profile,
        tls=transport == "tls",
        receive_buffers=args.receive_buffers,
    )
    return {**m, "label": label, "model_bytes": params * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", default="10m,50m", help="of cnn, 10m, 50m, 600m (comma-separated)"
    )
    parser.add_argument("--clients", default="2,8", help="client counts (comma-separated)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="rounds per run; the first is warm-up"
    )
    parser.add_argument(
        "--transport", default="plain", help="plain, tls or plain,tls (each job under each)"
    )
    parser.add_argument(
        "--profile", type=Path, help="run the aggregator under py-spy, writing profiles here"
    )
    parser.add_argument(
        "--receive-buffers",
        type=int,
        help="spec.limits.receiveBuffers of every job (default: the spec's default)",
    )
    args = parser.parse_args()
    from flotilla.data.digits_example import write_digits_example

    with tempfile.TemporaryDirectory(prefix="flotilla-bench-") as scratch:
        root = Path(scratch)
        write_digits_example(root / "data", sites=["site"], seed=0)
        peaks = run_all(args, root)
    for model, points in peaks.items():
        if len(points) >= 2:
            (c0, p0), (c1, p1) = points[0], points[-1]
            print(
                f"\n{model}: aggregator peak grows {(p1 - p0) / (c1 - c0) / MIB:.1f} MiB per extra "
                f"client ({c0} → {c1} clients; model {model_parameters(model) * 4 / MIB:.0f} MiB)"
            )


if __name__ == "__main__":
    main()
