"""Round overhead and aggregator memory for a ~10M-parameter model with N client processes.

Runs a real aggregator and N real clients on 127.0.0.1 with trivial local work
(one SGD step), so the framework dominates the round. Reports, per round, the
overhead (round wall time minus the slowest client's training), the floor (the
round's bytes over loopback bandwidth measured in this same run, plus the
weighted average at this machine's memory bandwidth), their ratio, and the
aggregator's peak RSS against its RSS before the first round.

    .venv/bin/python bench/round_bench.py [--clients 8] [--rounds 4] [--hidden 140000]

Not part of the test suite: figures vary with the machine and its load; the
ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch
import yaml

BENCH_DIR = Path(__file__).resolve().parent


def loopback_bandwidth(size: int = 256 << 20) -> float:
    """Bytes per second through a TCP socket on 127.0.0.1, received into a reused buffer."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = memoryview(bytearray(os.urandom(1 << 20)) * (size >> 20))

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(payload)

    sender = threading.Thread(target=send)
    started = time.perf_counter()
    sender.start()
    connection, _ = server.accept()
    buffer = memoryview(bytearray(1 << 20))
    got = 0
    with connection:
        while got < size:
            n = connection.recv_into(buffer)
            if not n:
                break
            got += n
    elapsed = time.perf_counter() - started
    sender.join()
    server.close()
    return got / elapsed


def fold_seconds(params: int, clients: int) -> float:
    """Time to fold `clients` float32 deltas of `params` values into one sum, in place."""
    total = torch.zeros(params)
    delta = torch.randn(params)
    started = time.perf_counter()
    for _ in range(clients):
        total.add_(delta, alpha=0.5)
    return time.perf_counter() - started


def write_job(root: Path, data: Path, clients: int, rounds: int, hidden: int) -> Path:
    sites = [f"site-{i:02d}" for i in range(clients)]
    spec: dict[str, Any] = {
        "rounds": rounds,
        "labels": [str(d) for d in range(10)],
        "model": {
            "entrypoint": "bench_models:wide_mlp",
            "input": {"channels": 1, "height": 8, "width": 8},
        },
        "sites": [{"name": s, "data": {"cvatExport": {"path": str(data / "site")}}} for s in sites],
        "evaluation": {"federated": False},
        "clients": {"minClients": clients, "roundDeadlineSeconds": 600, "joinGraceSeconds": 600},
        "training": {
            "localEpochs": 1,
            "batchSize": 64,
            "learningRate": 0.001,
            "maxSeconds": 0.001,
            "validationFraction": 0,
        },
        "strategy": {"name": "fedavg"},
    }
    os.environ["FLOTILLA_BENCH_HIDDEN"] = str(hidden)
    path = root / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "flotilla.dev/v1alpha1",
                "kind": "FederatedJob",
                "metadata": {"name": "bench"},
                "spec": spec,
            }
        )
    )
    return path


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found for pid {pid}")


def get_json(url: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def run(clients: int, rounds: int, hidden: int) -> dict[str, Any]:
    from flotilla.data.digits_example import write_digits_example

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_digits_example(root / "data", sites=["site"], seed=0)
        job = write_job(root, root / "data", clients, rounds, hidden)
        tokens = {f"site-{i:02d}": f"bench-token-{i:02d}-0123456789" for i in range(clients)}
        (root / "tokens.json").write_text(json.dumps(tokens))
        env = {
            **os.environ,
            "PYTHONPATH": f"{BENCH_DIR}:{os.environ.get('PYTHONPATH', '')}",
            "FLOTILLA_LOG_LEVEL": "WARNING",
        }
        log = open(root / "aggregator.log", "wb")  # noqa: SIM115
        aggregator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flotilla",
                "aggregator",
                "--job",
                str(job),
                "--tokens-file",
                str(root / "tokens.json"),
                "--state-dir",
                str(root / "state"),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--ready-line",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        assert aggregator.stdout is not None
        url = aggregator.stdout.readline().decode().split()[-1]
        baseline = rss_kib(aggregator.pid, "VmRSS")
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flotilla",
                    "client",
                    "--aggregator",
                    url,
                    "--threads",
                    "1",
                    "--device",
                    "cpu",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**env, "FLOTILLA_TOKEN": token},
            )
            for token in tokens.values()
        ]
        try:
            seq = -1
            while True:
                status = get_json(f"{url}/v1/status?after={seq}&wait=20")
                seq = status["seq"]
                if status["phase"] in ("done", "failed"):
                    break
            peak = rss_kib(aggregator.pid, "VmHWM")
            history = get_json(f"{url}/v1/history")
        finally:
            for process in [*workers, aggregator]:
                process.terminate()
            for process in [*workers, aggregator]:
                process.wait(timeout=30)
        if status["phase"] != "done":
            raise RuntimeError(f"bench job failed: {status['failure']}")
    return {"history": history, "baseline_kib": baseline, "peak_kib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--hidden",
        type=int,
        default=140_000,
        help="hidden width of the bench MLP (140000: ~10.5M parameters)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH_DIR))
    from bench_models import parameter_count

    params = parameter_count(args.hidden)
    model_bytes = params * 4
    bandwidth = loopback_bandwidth()
    result = run(args.clients, args.rounds, args.hidden)
    fold = fold_seconds(params, args.clients)
    wire_floor = 2 * args.clients * model_bytes / bandwidth
    floor = wire_floor + fold
    rows = result["history"][1:] or result["history"]  # round 1 includes process warm-up
    overheads = [
        r["duration_seconds"] - max(c["trainSeconds"] for c in r["clients"].values()) for r in rows
    ]
    overhead = statistics.median(overheads)
    peak_mib = result["peak_kib"] / 1024
    base_mib = result["baseline_kib"] / 1024
    model_mib = model_bytes / 2**20
    print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print(
        f"model: {params / 1e6:.2f}M float32 parameters ({model_mib:.0f} MiB); "
        f"{args.clients} client processes; {len(rows)} measured rounds"
    )
    print(
        f"loopback bandwidth (this run): {bandwidth / 1e9:.2f} GB/s; "
        f"fold of {args.clients} deltas: {fold * 1000:.0f} ms"
    )
    print()
    wall = statistics.median(r["duration_seconds"] for r in rows)
    slowest = statistics.median(max(c["trainSeconds"] for c in r["clients"].values()) for r in rows)
    table = [
        ("round wall time (median)", f"{wall:.3f} s"),
        ("slowest client training (median)", f"{slowest:.3f} s"),
        ("round overhead (median)", f"{overhead:.3f} s"),
        ("floor: bytes / loopback + fold", f"{floor:.3f} s ({wire_floor:.3f} + {fold:.3f})"),
        ("**overhead / floor**", f"**{overhead / floor:.2f}x**"),
        ("aggregator RSS before round 1", f"{base_mib:.0f} MiB"),
        ("aggregator peak RSS", f"{peak_mib:.0f} MiB"),
        ("**(peak - before) / model size**", f"**{(peak_mib - base_mib) / model_mib:.2f}x**"),
    ]
    print("| measure | value |")
    print("| --- | --- |")
    for name, value in table:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
