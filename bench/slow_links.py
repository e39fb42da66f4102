"""Rounds over slow, far links: each client behind its own capped, delayed link.

Every client dials the aggregator through its own network fault proxy (tests/netfault.py:
a token bucket per direction, a one-way delay each way), by default 20 Mbit/s and 100 ms
round trips, 4 clients, the ~10M-parameter synthetic model (float32, plain HTTP). Reports
per round: wall time against the deadline, clients answered, the overhead (wall time
minus the slowest client's training) and the floor: the model down and the update up
over one client's link (the links run in parallel), and what is left in round trips
(requests, TCP slow start). Rounds after the first are the ones to read.

    .venv/bin/python bench/slow_links.py [--model 10m] [--clients 4] [--mbit 20]
        [--rtt-ms 100] [--rounds 3] [--deadline 120]

Not part of the test suite: figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.netfault

from flotilla_run import run_flotilla
from jobs import model_env, model_parameters, overhead_job
from tests.netfault import Link, NetFault


def slow_job(*, root: Path, data: Path, args: argparse.Namespace) -> Path:
    job = overhead_job(
        root=root, data=data, model=args.model, clients=args.clients, rounds=args.rounds
    )
    document = yaml.safe_load(job.read_text())
    document["spec"]["clients"]["roundDeadlineSeconds"] = args.deadline
    job.write_text(yaml.safe_dump(document))
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="10m", help="cnn, 10m or 50m")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--mbit", type=float, default=20.0, help="each link, each way")
    parser.add_argument("--rtt-ms", type=float, default=100.0, help="each link's round trip")
    parser.add_argument("--rounds", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--deadline", type=float, default=120.0, help="roundDeadlineSeconds")
    args = parser.parse_args()
    from flotilla.data.digits_example import write_digits_example

    link = Link.of(mbit=args.mbit, rtt_ms=args.rtt_ms)
    assert link.rate is not None
    params = model_parameters(args.model)
    floor = 2 * params * 4 / link.rate
    proxies: dict[str, NetFault] = {}

    def through_proxy(site: str, url: str) -> str:
        proxies[site] = NetFault(int(url.rsplit(":", 1)[1]), up=link, down=link).start()
        return proxies[site].url()

    print(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: {args.clients} clients, "
        f"{args.model} ({params / 1e6:.2f}M float32), each link {args.mbit:g} Mbit/s, "
        f"{args.rtt_ms:g} ms round trip; deadline {args.deadline:g} s; "
        f"floor {floor:.1f} s (the model down and the update up at {link.rate / 1e6:.2f} MB/s)\n"
    )
    with tempfile.TemporaryDirectory(prefix="flotilla-slow-") as scratch:
        root = Path(scratch)
        write_digits_example(root / "data", sites=["site"], seed=0)
        job = slow_job(root=root, data=root / "data", args=args)
        sites = [f"site-{i:02d}" for i in range(args.clients)]
        try:
            result = run_flotilla(
                job=job,
                sites=sites,
                env=model_env(args.model),
                scratch=root,
                dial=through_proxy,
            )
        finally:
            stats = {site: proxy.stats() for site, proxy in proxies.items()}
            for proxy in proxies.values():
                proxy.close()

    rtt = args.rtt_ms / 1000
    print(
        "| round | wall | answered | slowest training | overhead | **overhead / floor** "
        "| (overhead - floor) / RTT |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in result["rounds"]:
        overhead = r["duration"] - r["slowestTrain"]
        print(
            f"| {r['round']} | {r['duration']:.1f} s of {args.deadline:g} | "
            f"{r['answered']}/{args.clients} | {r['slowestTrain']:.2f} s | "
            f"{overhead:.1f} s | **{overhead / floor:.2f}x** | "
            f"{(overhead - floor) / rtt:.1f} |"
        )
    rows = result["rounds"][1:] or result["rounds"]
    median = statistics.median(r["duration"] - r["slowestTrain"] for r in rows)
    print(f"\nmedian overhead, rounds 2+: {median:.1f} s = **{median / floor:.2f}x** the floor")
    for site, counters in stats.items():
        print(
            f"{site}: {counters.down / 1e6:.1f} MB down, {counters.up / 1e6:.1f} MB up, "
            f"{counters.connections} connection(s), {counters.peer_resets} reset by an end"
        )


if __name__ == "__main__":
    main()
