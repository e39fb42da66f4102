"""The operator's pure decision at fleet scale, in this process: `plan_job` (every object
the job wants, a client pod manifest per site) and `decide` (what of it to apply, against
the job's pods as the indexes hold them), for one job (examples/federatedjob.yaml) on N
edge nodes (bench/operator_scale.py's), each pod already running: a steady resync tick.

    PYTHONPATH=. .venv/bin/python bench/operator_decide.py [--nodes 10,100,1000]

What operator_scale.py reports as a reconcile is this plus kopf, the API double and the
status; this isolates the part that is our code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_scale import edge_node

from flotilla.api import FederatedJob, parse_job
from flotilla.k8s.client_pods import client_pod
from flotilla.k8s.decide import Seen, Snapshot, decide
from flotilla.k8s.entropy import SystemEntropy
from flotilla.k8s.nodes import NodeInfo, placements
from flotilla.k8s.plan import plan_job

ROOT = Path(__file__).resolve().parents[1]


def best_ms(work: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="10,100,1000", help="comma-separated node counts")
    args = parser.parse_args()
    written = yaml.safe_load((ROOT / "examples" / "federatedjob.yaml").read_text())
    document = parse_job(written, source="examples/federatedjob.yaml").to_dict()
    document["metadata"] |= {"namespace": "ml", "uid": "uid-1"}
    job = parse_job(document, source="bench")
    print("| nodes | plan_job | of it: client pod manifests | decide (plan included) |")
    print("|---|---|---|---|")
    for count in (int(n) for n in args.nodes.split(",")):
        print(f"| {count} | " + " | ".join(f"{ms:.1f} ms" for ms in measure(job, count)) + " |")


def measure(job: FederatedJob, count: int) -> tuple[float, float, float]:
    entropy = SystemEntropy()
    raw = [edge_node(n) for n in range(count)]
    nodes = [NodeInfo.from_api(node) for node in raw]
    first = plan_job(job, nodes, entropy=entropy, existing_tokens={})
    tokens_secret, tls_secret = first.aggregator[1], first.aggregator[2]
    running = [pod | {"status": {"phase": "Running"}} for pod in first.clients.values()]
    snapshot = Snapshot(
        seen=Seen(nodes=raw, pods=running), tokens_secret=tokens_secret, tls_secret=tls_secret
    )
    tokens = {site: "x" * 43 for site in first.clients}
    now = datetime.now(UTC)
    chosen = placements(job, nodes)
    return (
        best_ms(lambda: plan_job(job, nodes, entropy=entropy, existing_tokens=tokens)),
        best_ms(lambda: [client_pod(job, placement) for placement in chosen]),
        best_ms(lambda: decide(job, snapshot, now=now, entropy=entropy)),
    )


if __name__ == "__main__":
    main()
