"""What a reconcile costs the operator: its latency, its API calls, and how long kopf's event
loop is held up meanwhile, against KMock (an HTTP double of the Kubernetes API, in this
process) with kopf in a thread, as tests/operator runs it.

Three phases over `--jobs` FederatedJobs on five nodes (three edge nodes each):
  start    the operator starts with the jobs there: each is reconciled once in full
  resync   `--ticks` ticks of the resync loop, nothing changing (the bench starts each)
  change   every job's spec changes (`spec.rounds`): a full reconcile that applies all again
Calls are the operator's own requests (its user agent; not kopf's watches and patches),
discovery included. Loop lag is how late a 5 ms timer in kopf's loop fires: a call that
blocked the loop would show in it.

    PYTHONPATH=. .venv/bin/python bench/operator_calls.py --jobs 20 --ticks 10

(PYTHONPATH: it reuses tests/operator's fixtures; point it at another checkout to measure that.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import kmock
import kopf
import pytest
from tests.operator import conftest as fixtures

import flotilla.k8s.jobs as jobs_module
from flotilla.k8s.handlers import register

TICK = 3600.0  # no resync of its own: the bench starts each tick


class Recorder:
    """Reconcile durations by trigger, and the loop's lag, for the phase under way."""

    def __init__(self) -> None:
        self.durations: dict[str, list[float]] = {"change": [], "resync": []}
        self.lags: list[float] = []
        self.tick: Callable[[], object] = lambda: None  # starts a resync

    def reset(self) -> None:
        self.durations = {"change": [], "resync": []}
        self.lags = []


@contextmanager
def timed_reconciles(recorder: Recorder) -> Iterator[None]:
    """Time `reconcile` as jobs.py calls it (the same name before and after the change)."""
    reconcile = jobs_module.reconcile

    async def timed(context: Any, body: Any, *, full: bool, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await reconcile(context, body, full=full, **kwargs)
        finally:
            trigger = "change" if full else "resync"
            recorder.durations[trigger].append(time.perf_counter() - start)

    jobs_module.reconcile = timed
    try:
        yield
    finally:
        jobs_module.reconcile = reconcile


def setup_cluster(server: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """What tests/operator's `cluster` fixture does."""
    fixtures._fast_membership(monkeypatch)
    if hasattr(fixtures, "_apply_creates"):
        fixtures._apply_creates(monkeypatch)
    verbs = fixtures.VERBS
    server.resources[fixtures.JOBS] = kmock.ResourceInfo(
        kind="FederatedJob", namespaced=True, subresources={"status"}, verbs=verbs
    )
    for resource, kind in fixtures.CLUSTER_WIDE.items():
        server.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=verbs)
    for resource, kind in fixtures.NAMESPACED.items():
        server.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=verbs)


@asynccontextmanager
async def running_operator(server: kmock.KubernetesEmulator, recorder: Recorder) -> Any:
    registry = kopf.OperatorRegistry()
    url = str(server.url)

    async def no_aggregator(job: Any, ca: str | None) -> None:
        return None

    register(
        registry,
        login=lambda **_: kopf.ConnectionInfo(server=url),
        poll=no_aggregator,
        resync_seconds=TICK,
    )

    @kopf.on.startup(registry=registry)
    async def _lag_monitor(memo: kopf.Memo, **_: Any) -> None:
        loop = asyncio.get_running_loop()
        recorder.tick = lambda: loop.call_soon_threadsafe(memo["kick"].set)

        async def watch() -> None:
            while True:
                start = time.perf_counter()
                await asyncio.sleep(0.005)
                recorder.lags.append(time.perf_counter() - start - 0.005)

        memo["lag_monitor"] = asyncio.create_task(watch())

    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True
    stop, ready = threading.Event(), threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                settings=settings,
                standalone=True,
                clusterwide=False,
                namespaces=[fixtures.NAMESPACE],
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    await fixtures.eventually(ready.is_set, timeout=60)
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)


def operator_calls(server: kmock.KubernetesEmulator, since: int) -> Counter[str]:
    """The operator's requests since the `since`-th, by method and resource."""
    counts: Counter[str] = Counter()
    for request in list(server)[since:]:
        if request.headers.get("User-Agent", "").startswith("kopf"):
            continue
        what = request.resource.plural if request.resource else request.url.path
        sub = f"/{request.subresource}" if request.subresource else ""
        method = getattr(request.method, "value", request.method)
        counts[f"{method} {what or request.url.path}{sub}"] += 1
    return counts


async def quiet(server: kmock.KubernetesEmulator, seconds: float = 1.5) -> None:
    """Until the double has taken no request for `seconds`."""
    last, since = len(list(server)), time.monotonic()
    while time.monotonic() - since < seconds:
        await asyncio.sleep(0.1)
        if (now := len(list(server))) != last:
            last, since = now, time.monotonic()


def report(name: str, recorder: Recorder, calls: Counter[str], *, jobs: int) -> None:
    """KMock replays old events (it keeps no resourceVersion), so kopf may run a job's
    handler more than once: calls are given per reconcile as well as per job."""
    durations = recorder.durations["resync" if name == "resync" else "change"]
    ms = sorted(d * 1000 for d in durations)
    lags = sorted(lag * 1000 for lag in recorder.lags) or [0.0]
    total = sum(calls.values())
    reconciles = sum(len(d) for d in recorder.durations.values())
    print(f"\n{name}: {len(ms)} reconciles timed ({reconciles} in all)")
    if ms:
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        print(
            f"  reconcile ms: median {statistics.median(ms):.1f}  p95 {p95:.1f}  max {ms[-1]:.1f}"
        )
    per_reconcile = total / max(reconciles, 1)
    print(f"  API calls: {total}, {total / jobs:.1f} per job, {per_reconcile:.1f} per reconcile")
    for what, count in sorted(calls.items()):
        print(f"    {count:5d}  {what}")
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(f"  loop lag ms: median {statistics.median(lags):.2f}  p99 {p99:.2f}  max {lags[-1]:.2f}")


async def bench(jobs: int, ticks: int) -> None:
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as monkeypatch, timed_reconciles(recorder):
        async with kmock.KubernetesEmulator() as server, kmock.Server(server):
            setup_cluster(server, monkeypatch)
            fixtures.five_nodes(server)
            names = [f"job-{n:03d}" for n in range(jobs)]
            for n, name in enumerate(names):
                body = fixtures.job_body()
                body["metadata"] |= {"name": name, "uid": f"uid-{n}"}
                server.objects[fixtures.JOBS, fixtures.NAMESPACE, name] = body

            def ready() -> bool:
                return all(
                    fixtures.job_status(server, name).get("clientsReady") == "0/3" for name in names
                )

            async with running_operator(server, recorder):
                since = len(list(server))
                await fixtures.eventually(ready, timeout=300)
                await quiet(server)
                report("start", recorder, operator_calls(server, since), jobs=jobs)

                recorder.reset()
                since = len(list(server))
                for tick in range(1, ticks + 1):
                    recorder.tick()
                    await wait_for(lambda: len(recorder.durations["resync"]) >= tick * jobs)  # noqa: B023
                    await quiet(server, 0.3)
                report("resync", recorder, operator_calls(server, since), jobs=jobs * ticks)

                recorder.reset()
                since = len(list(server))
                for name in names:
                    url = f"/apis/flotilla.dev/v1alpha1/namespaces/{fixtures.NAMESPACE}"
                    patch = {"metadata": {"generation": 2}, "spec": {"rounds": 11}}
                    await fixtures.call(server, "PATCH", f"{url}/federatedjobs/{name}", patch)
                await wait_for(lambda: len(recorder.durations["change"]) >= jobs)
                await quiet(server)
                report("change", recorder, operator_calls(server, since), jobs=jobs)


async def wait_for(check: Callable[[], bool], timeout: float = 300) -> None:
    await fixtures.eventually(check, timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(bench(args.jobs, args.ticks))


if __name__ == "__main__":
    main()
