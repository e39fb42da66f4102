"""How long a job's client pods take to create against a real API server: the operator's
own `carry_out` (apply.py) with N CreatePod actions through its KubeApi, one at a time
against slow-start batches (1, 2, 4, then MAX_PARALLEL_CREATES at a time).

Needs a cluster in KUBECONFIG (`eval "$(../shared/k8s/up.sh)"`: the kubelet-less control
plane is enough; pods are created, never scheduled, and deleted with their namespace).

    .venv/bin/python bench/pod_creates.py --pods 100,300 --repeats 2

Figures, not pass/fail: the same server, the same pods, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import uuid
from typing import Any

import kopf

from flotilla.k8s import apply
from flotilla.k8s.actions import CreatePod
from flotilla.k8s.api import KubeApi
from flotilla.k8s.handlers import _connection


class Quiet:
    def info(self, reason: str, message: str) -> None:
        pass

    def warn(self, reason: str, message: str) -> None:
        pass


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pod-creates"}},
        "spec": {
            "nodeSelector": {"bench/none": "true"},  # never scheduled
            "containers": [{"name": "c", "image": "registry.invalid/none:0"}],
        },
    }


async def _create(api: KubeApi, count: int, parallel: int) -> float:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["kubectl", "create", "namespace", namespace], check=True, capture_output=True)
    try:
        apply.MAX_PARALLEL_CREATES = parallel
        actions = [CreatePod(f"s{i}", f"n{i}", _pod(f"p{i}")) for i in range(count)]
        started = time.perf_counter()
        await apply.carry_out(
            actions, api=api, recorder=Quiet(), namespace=namespace, replacements={}
        )
        return time.perf_counter() - started
    finally:
        subprocess.run(
            ["kubectl", "delete", "namespace", namespace, "--wait=false"], capture_output=True
        )


async def main(pods: list[int], repeats: int) -> None:
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None, "no KUBECONFIG"
    api = KubeApi(_connection(info))
    try:
        await _create(api, 10, 8)  # warm-up: discovery, connections
        print("| pods | one at a time | slow start (8 at a time) | ratio |")
        print("| --- | --- | --- | --- |")
        for count in pods:
            sequential = min([await _create(api, count, 1) for _ in range(repeats)])
            batched = min([await _create(api, count, 8) for _ in range(repeats)])
            print(
                f"| {count} | {sequential:.2f} s ({1000 * sequential / count:.1f} ms a pod) | "
                f"{batched:.2f} s ({1000 * batched / count:.1f} ms a pod) | "
                f"{sequential / batched:.2f}x |"
            )
    finally:
        await api.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", default="100,300", help="comma-separated pod counts")
    parser.add_argument("--repeats", type=int, default=2, help="best of N per setting")
    args = parser.parse_args()
    asyncio.run(main([int(n) for n in args.pods.split(",")], args.repeats))
