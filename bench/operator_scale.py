"""The operator at 10 / 100 / 1,000 nodes: one FederatedJob (examples/federatedjob.yaml,
its aggregator's state ephemeral: no claim) on N edge nodes, against KMock (an HTTP double
of the Kubernetes API, by kopf's author) in this process, with tests/operator's patches.

The operator runs in a process of its own (kopf, the project's handlers and /metrics, as
`flotilla operator` runs it, with no aggregator to poll), so its memory is its own and
its requests cross a real socket. Nodes look like real ones (labels, conditions, images,
managed fields: about 6 KiB of JSON each). Per N, a fresh double and operator:

  idle     the operator up, every node seen (its CPU has gone quiet), no job yet
  create   the job POSTed as kubectl would: seconds until every client pod is created
           (the N-th 201 to a pod POST), and until the job's status counts N clients
  steady   `--ticks` resync ticks (`--resync` seconds apart) once nothing changes: the
           operator's requests per tick by verb and resource, status patches, kopf's own
  change   one node deleted: what one change costs, then `--ticks` more quiet ticks

Memory is the operator's RSS (VmRSS, and VmHWM for the peak) from /proc; reconcile
time is its own histogram, flotilla_operator_reconcile_duration_seconds, read from its
/metrics, beside the bench's own histogram there of how late a 10 ms sleep in kopf's
event loop wakes (the reconcile's pure work runs on that loop). CPU per tick is the
operator process's, less what it used per second when idle (kopf, the lag probe). The
end estimates what a real API server's limits and latencies would make of the same
requests. Figures, not pass/fail.

    PYTHONPATH=. .venv/bin/python bench/operator_scale.py --nodes 10,100,1000

(PYTHONPATH: it reuses tests/operator's fixtures.)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "ml"
JOB = "digits"
TICKS_CLK = os.sysconf("SC_CLK_TCK")
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A real API server's defaults (kube-apiserver flags; API Priority and Fairness's bootstrap
# configuration: k8s.io/apiserver/pkg/apis/flowcontrol/bootstrap/default.go).
MAX_INFLIGHT, MAX_MUTATING = 400, 200
# nominalConcurrencyShares of the limited priority levels: system, node-high, leader-election,
# workload-high, workload-low, global-default, catch-all. Service accounts outside kube-system
# (the operator's) fall into workload-low (FlowSchema "service-accounts", one flow per user).
SHARES = {"system": 30, "node-high": 40, "leader-election": 10, "workload-high": 40}
SHARES |= {"workload-low": 100, "global-default": 20, "catch-all": 5}


# --- the operator, in its own process -------------------------------------------------------


def run_operator(url: str, metrics_port: int, resync: float) -> None:
    """What `flotilla operator` runs, logged in to the double; the aggregator never answers."""
    import kopf
    from prometheus_client import Histogram

    from flotilla.k8s.handlers import register

    logging.basicConfig(level=logging.WARNING)
    parent = os.getppid()

    def orphaned() -> None:  # the bench was killed: do not outlive it
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()

    async def no_aggregator(job: Any, ca: str | None) -> None:
        return None

    registry = kopf.OperatorRegistry()
    metrics = register(
        registry,
        login=lambda **_: kopf.ConnectionInfo(server=url),
        poll=no_aggregator,
        resync_seconds=resync,
        metrics_port=metrics_port,
    )
    lag = Histogram(
        "bench_loop_lag_seconds",
        "How late a 10 ms sleep in kopf's event loop wakes: what a reconcile holds it up",
        buckets=LAG_BUCKETS,
        registry=metrics.registry,
    )

    @kopf.on.startup(registry=registry)
    async def _lag_monitor(memo: kopf.Memo, **_: Any) -> None:
        loop = asyncio.get_running_loop()

        async def watch() -> None:
            while True:
                start = loop.time()
                await asyncio.sleep(0.01)
                lag.observe(max(loop.time() - start - 0.01, 0.0))

        memo["bench_lag"] = asyncio.create_task(watch())

    from tests.operator.conftest import run_kopf

    run_kopf(registry)


# --- what the double saw --------------------------------------------------------------------


@dataclass
class Call:
    at: float
    who: str  # operator (the official client), kopf, bench
    verb: str  # get, list, watch, create, patch, apply, delete, discovery
    what: str  # resource[/subresource]
    status: int | None = None
    seconds: float = 0.0  # in the double (for a watch: until it ended)


@dataclass
class Calls:
    log: list[Call] = field(default_factory=list)
    pods_created: int = 0
    first_pod_created: float = 0.0
    last_pod_created: float = 0.0

    def since(self, index: int, who: str = "operator") -> list[Call]:
        return [c for c in self.log[index:] if c.who == who]


def _verb(request: Any) -> str:
    action = str(getattr(request.action, "value", request.action)).lower()
    if request.resource is None or not request.resource.plural:
        return "discovery"
    if action == "update":
        apply = request.headers.get("Content-Type") == "application/apply-patch+yaml"
        return "apply" if apply else "patch"
    return {"fetch": "get"}.get(action, action)


def record_calls(monkeypatch: Any, calls: Calls) -> None:
    """Log every request (who, verb, resource, answer, time in the double); give what is
    created a uid and a name from its generateName, as an API server does (kopf keys its
    per-object memory by uid; events are posted with a generateName)."""
    import kmock

    handle = kmock.KubernetesEmulator._handle

    async def recorded(server: Any, request: Any) -> Any:
        agent = request.headers.get("User-Agent", "")
        who = "kopf" if agent.startswith("kopf") else "bench"
        who = "operator" if agent.startswith("OpenAPI-Generator") else who
        verb = _verb(request)
        what = (request.resource.plural if request.resource else None) or request.url.path
        what += f"/{request.subresource}" if request.subresource else ""
        _give_uid(server, request, verb)
        call = Call(time.monotonic(), who, verb, what)
        calls.log.append(call)
        start = time.perf_counter()
        try:
            response = await handle(server, request)
            call.status = response.status
            return response
        except Exception as error:
            call.status = int(getattr(error, "status", 500))
            raise
        finally:
            call.seconds = time.perf_counter() - start
            if what == "pods" and verb == "create" and call.status in (200, 201):
                calls.pods_created += 1
                calls.last_pod_created = time.monotonic()
                if calls.pods_created == 1:
                    calls.first_pod_created = calls.last_pod_created

    monkeypatch.setattr(kmock.KubernetesEmulator, "_handle", recorded)


def _give_uid(server: Any, request: Any, verb: str) -> None:
    data = request.data
    if request.subresource or not isinstance(data, dict) or verb not in ("create", "apply"):
        return
    if verb == "apply":
        key = (request.resource, request.namespace, request.name)
        if key in server._objects and not server._objects[key].deleted:
            return
    metadata = data.setdefault("metadata", {})
    metadata.setdefault("uid", str(uuid.uuid4()))
    if verb == "create" and metadata.get("generateName") and not metadata.get("name"):
        metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:12]  # KMock ignores it


# --- the cluster ----------------------------------------------------------------------------


def edge_node(n: int, images: int = 12) -> dict[str, Any]:
    """A node as a kubelet keeps it, labelled for the example job (flotilla.dev/edge)."""
    name, stamp = f"edge-{n:04d}", "2026-12-01T10:00:00Z"
    listed = [
        {
            "names": [
                f"registry.example.com/edge/image-{k}@sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}",
                f"registry.example.com/edge/image-{k}:v1.{k}.0",
            ],
            "sizeBytes": 50_000_000 + 1_000_003 * k,
        }
        for k in range(images)
    ]
    condition_types = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
    conditions = [
        {
            "type": kind,
            "status": "True" if kind == "Ready" else "False",
            "reason": "KubeletReady" if kind == "Ready" else f"KubeletHasNo{kind}",
            "message": f"kubelet reports {kind}",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        for kind in condition_types
    ]
    resources = {"cpu": "4", "memory": "8039892Ki", "pods": "110", "ephemeral-storage": "61Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(1000 + n),
            "creationTimestamp": stamp,
            "labels": {
                "flotilla.dev/edge": "true",
                "flotilla.dev/site": f"site-{n:04d}",
                "kubernetes.io/arch": "arm64" if n % 3 == 2 else "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "beta.kubernetes.io/arch": "arm64" if n % 3 == 2 else "amd64",
                "beta.kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "edge.large",
                "topology.kubernetes.io/region": "eu-west",
                "topology.kubernetes.io/zone": f"eu-west-{n % 3}",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
            },
            "managedFields": [
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": stamp,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:status": {
                            "f:conditions": {
                                f'k:{{"type":"{kind}"}}': {
                                    "f:lastHeartbeatTime": {},
                                    "f:message": {},
                                    "f:reason": {},
                                    "f:status": {},
                                }
                                for kind in condition_types
                            },
                            "f:images": {},
                            "f:nodeInfo": {"f:bootID": {}},
                        }
                    },
                }
            ],
        },
        "spec": {"podCIDR": f"10.{n // 250}.{n % 250}.0/24", "providerID": f"edge://{name}"},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": f"192.168.{n // 250}.{n % 250}"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uuid.uuid4().hex,
                "systemUUID": str(uuid.uuid4()),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": "6.8.0-45-generic",
                "osImage": "Ubuntu 24.04.1 LTS",
                "containerRuntimeVersion": "containerd://1.7.22",
                "kubeletVersion": "v1.31.2",
                "kubeProxyVersion": "v1.31.2",
                "operatingSystem": "linux",
                "architecture": "arm64" if n % 3 == 2 else "amd64",
            },
            "images": listed,
        },
    }


def the_job(fixtures: Any) -> dict[str, Any]:
    """examples/federatedjob.yaml in the namespace, the aggregator's state in the pod."""
    job = fixtures.job_body(runtime={"aggregator": {"storage": {"ephemeral": True}}})
    job["metadata"]["uid"] = str(uuid.uuid4())
    return job


# --- the operator's process, seen from outside ----------------------------------------------


class Operator:
    def __init__(self, url: str, resync: float) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.metrics_port = probe.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator")])}
        command = [sys.executable, __file__, "--run-operator", url]
        command += ["--metrics-port", str(self.metrics_port), "--resync", str(resync)]
        self.process = subprocess.Popen(command, env=env)
        self.idle_rate = 0.0  # CPU seconds a second, idle

    async def measure_idle(self, seconds: float) -> None:
        before, start = self.cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        self.idle_rate = (self.cpu() - before) / (time.monotonic() - start)

    def memory(self) -> tuple[float, float]:
        """RSS now and at its peak, MiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def cpu(self) -> float:
        """CPU seconds it has used."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        parts = stat.rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / TICKS_CLK

    async def metrics(self) -> dict[tuple[str, str], float]:
        """flotilla_operator_reconcile_duration_seconds sum and count, by trigger; the loop
        lag's buckets, ("lag", le)."""
        import aiohttp
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        out: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "bench_loop_lag_seconds_bucket":
                    out[("lag", sample.labels["le"])] = sample.value
                if sample.name.startswith("flotilla_operator_reconcile_duration_seconds_"):
                    kind = sample.name.rsplit("_", 1)[1]
                    if kind in ("sum", "count"):
                        out[(kind, sample.labels.get("trigger", ""))] = sample.value
        return out

    async def wait_metrics(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                await self.metrics()
                return
            except OSError:
                if time.monotonic() > end or self.process.poll() is not None:
                    raise
                await asyncio.sleep(0.2)

    async def quiet(
        self, *, below: float = 0.05, window: float = 1.0, timeout: float = 300
    ) -> None:
        """Until it uses less than `below` of a core for `window` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            before = self.cpu()
            await asyncio.sleep(window)
            if (self.cpu() - before) / window < below:
                return
        raise AssertionError("the operator did not go quiet")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- one run --------------------------------------------------------------------------------


@dataclass
class Window:
    ticks: int
    calls: list[Call]
    kopf: list[Call]
    reconcile_ms: float  # mean, resync
    cpu_ms_per_tick: float
    lag_max: float  # s, the bucket the longest lag fell in (its upper bound)
    lags_over_100ms: int

    @property
    def double_ms_per_tick(self) -> float:
        """What the operator's requests spent in the double, per tick."""
        return sum(c.seconds for c in self.calls) / max(self.ticks, 1) * 1000

    @property
    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.verb not in ("get", "list", "watch", "discovery")]

    def by_verb(self) -> Counter[str]:
        return Counter(f"{c.verb} {c.what}" for c in self.calls)

    @property
    def status_patches(self) -> int:
        return sum(1 for c in self.calls if c.what == "federatedjobs/status")


@dataclass
class Result:
    nodes: int
    node_kib: float
    rss_start: float  # MiB: the operator up, no node seen yet
    rss_idle: float  # every node seen, no job
    to_pods: float  # s, job POST -> N-th client pod created
    to_status: float  # s, job POST -> status counts N clients
    create_reconcile: float  # s, the reconcile that made the pods (the operator's histogram)
    create_reconciles: dict[str, int]  # reconciles during create, by trigger
    pod_cadence_ms: float  # first to last pod POST, per pod
    create_lag: tuple[float, int]  # longest loop lag's bucket, lags over 100 ms
    tokens_bytes: int  # the tokens Secret's data, base64 as the API server keeps it
    create_calls: Counter[str]
    pod_post_ms: float  # mean time the double took to answer a pod POST
    rss_created: float
    steady: Window
    change: Window
    change_writes: Counter[str]
    after: Window
    rss_steady: float
    rss_peak: float


async def settle_ticks(operator: Operator, ticks: int, timeout: float) -> None:
    """Until `ticks` more resync reconciles have ended."""
    start = (await operator.metrics()).get(("count", "resync"), 0.0)
    end = time.monotonic() + timeout
    while (await operator.metrics()).get(("count", "resync"), 0.0) < start + ticks:
        if time.monotonic() > end:
            raise AssertionError(f"no {ticks} resync ticks in {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def window(operator: Operator, calls: Calls, ticks: int, resync: float) -> Window:
    """`ticks` resync reconciles: the requests made meanwhile, their time and CPU."""
    # Start right after a tick ended: the window then holds `ticks` whole ticks.
    await settle_ticks(operator, 1, timeout=resync * 4 + 60)
    index, before, cpu = len(calls.log), await operator.metrics(), operator.cpu()
    start = time.monotonic()
    await settle_ticks(operator, ticks, timeout=resync * ticks * 4 + 120)
    after, used = await operator.metrics(), operator.cpu() - cpu
    used -= operator.idle_rate * (time.monotonic() - start)
    count = after[("count", "resync")] - before.get(("count", "resync"), 0.0)
    seconds = after[("sum", "resync")] - before.get(("sum", "resync"), 0.0)
    lag_max, over = lags(before, after)
    return Window(
        ticks=int(count),
        calls=calls.since(index),
        kopf=calls.since(index, "kopf"),
        reconcile_ms=seconds / max(count, 1) * 1000,
        cpu_ms_per_tick=used / max(count, 1) * 1000,
        lag_max=lag_max,
        lags_over_100ms=over,
    )


def lags(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> Any:
    """From the lag histogram between two scrapes: the upper bound of the longest lag's
    bucket, and how many lags were over 100 ms."""
    delta = {
        float(le): after[("lag", le)] - before.get(("lag", le), 0.0)
        for kind, le in after
        if kind == "lag"
    }
    total = delta.get(float("inf"), 0.0)
    longest = min((le for le, count in delta.items() if count >= total), default=0.0)
    return longest, int(total - delta.get(0.1, total))


async def run(nodes: int, *, ticks: int, resync: float, images: int) -> Result:
    import kmock
    import pytest
    from tests.operator import conftest as fixtures

    calls = Calls()
    with pytest.MonkeyPatch.context() as monkeypatch:
        fixtures._fast_membership(monkeypatch)
        fixtures._apply_creates(monkeypatch)
        record_calls(monkeypatch, calls)
        async with kmock.KubernetesEmulator() as server, kmock.Server(server):
            resources = server.resources
            resources[fixtures.JOBS] = kmock.ResourceInfo(
                kind="FederatedJob", namespaced=True, subresources={"status"}, verbs=fixtures.VERBS
            )
            for resource, kind in fixtures.CLUSTER_WIDE.items():
                resources[resource] = kmock.ResourceInfo(
                    kind=kind, namespaced=False, verbs=fixtures.VERBS
                )
            for resource, kind in fixtures.NAMESPACED.items():
                resources[resource] = kmock.ResourceInfo(
                    kind=kind, namespaced=True, verbs=fixtures.VERBS
                )
            bodies = [edge_node(n, images) for n in range(nodes)]
            node_kib = sum(len(json.dumps(b)) for b in bodies) / nodes / 1024
            for body in bodies:
                server.objects["v1/nodes", None, body["metadata"]["name"]] = body
            del bodies

            operator = Operator(str(server.url), resync)
            try:
                await operator.wait_metrics()
                rss_start, _ = operator.memory()
                await fixtures.eventually(
                    lambda: any(c.verb == "watch" and c.what == "nodes" for c in calls.log),
                    timeout=60,
                )
                await operator.quiet()
                await operator.measure_idle(max(2 * resync, 4.0))
                rss_idle, _ = operator.memory()

                # create: the job, as kubectl would make it
                say(
                    f"{nodes} nodes: idle at {rss_idle:.1f} MiB, "
                    f"{operator.idle_rate * 1000:.0f} ms CPU/s; the job goes in"
                )
                limit = 60 + nodes * 0.5
                index, before = len(calls.log), await operator.metrics()
                url = (
                    f"/apis/{fixtures.JOBS.rsplit('/', 1)[0]}/namespaces/{NAMESPACE}/federatedjobs"
                )
                start = time.monotonic()
                await fixtures.call(server, "POST", url, the_job(fixtures))
                await fixtures.eventually(lambda: calls.pods_created >= nodes, timeout=limit)
                to_pods = calls.last_pod_created - start
                desired: Callable[[], int] = lambda: (  # noqa: E731
                    fixtures.job_status(server, JOB).get("clients") or {}
                ).get("desired", -1)
                await fixtures.eventually(lambda: desired() == nodes, timeout=limit)
                to_status = time.monotonic() - start
                await operator.quiet()
                after = await operator.metrics()
                create_reconcile = after[("sum", "change")] - before.get(("sum", "change"), 0.0)
                create_reconciles = {
                    trigger: int(
                        after.get(("count", trigger), 0) - before.get(("count", trigger), 0)
                    )
                    for trigger in ("change", "resync")
                }
                cadence = (calls.last_pod_created - calls.first_pod_created) / max(nodes - 1, 1)
                made = calls.since(index)
                posts = [c.seconds for c in made if c.what == "pods" and c.verb == "create"]
                create_calls = Counter(f"{c.verb} {c.what} {c.status}" for c in made)
                create_lag = lags(before, after)
                tokens = dict(server.objects["v1/secrets", NAMESPACE, f"{JOB}-tokens"])
                tokens_bytes = sum(
                    len(key) + len(base64.b64encode(value.encode()))
                    for key, value in (tokens.get("stringData") or {}).items()
                )
                rss_created, _ = operator.memory()

                say(f"{nodes} nodes: pods in {to_pods:.2f} s, status in {to_status:.2f} s")
                steady = await window(operator, calls, ticks, resync)

                # change: one node goes; its pod goes, the status says so, once
                index = len(calls.log)
                await fixtures.call(server, "DELETE", "/api/v1/nodes/edge-0000")
                await fixtures.eventually(lambda: desired() == nodes - 1, timeout=limit)
                change = await window(operator, calls, 2, resync)
                change_writes = Counter(
                    f"{c.verb} {c.what}"
                    for c in calls.since(index)
                    if c.verb not in ("get", "list", "watch", "discovery")
                )
                quiet_after = await window(operator, calls, ticks, resync)
                rss_steady, rss_peak = operator.memory()
            finally:
                operator.stop()
    return Result(
        nodes=nodes,
        node_kib=node_kib,
        rss_start=rss_start,
        rss_idle=rss_idle,
        to_pods=to_pods,
        to_status=to_status,
        create_reconcile=create_reconcile,
        create_reconciles=create_reconciles,
        pod_cadence_ms=cadence * 1000,
        create_lag=create_lag,
        tokens_bytes=tokens_bytes,
        create_calls=create_calls,
        pod_post_ms=sum(posts) / max(len(posts), 1) * 1000,
        rss_created=rss_created,
        steady=steady,
        change=change,
        change_writes=change_writes,
        after=quiet_after,
        rss_steady=rss_steady,
        rss_peak=rss_peak,
    )


# --- the report -----------------------------------------------------------------------------


def print_run(r: Result) -> None:
    print(f"\n== {r.nodes} nodes ({r.node_kib:.1f} KiB of JSON each)")
    print(f"  create: pods {r.to_pods:.2f} s, status {r.to_status:.2f} s, reconcile ", end="")
    print(
        f"{r.create_reconcile:.2f} s (reconciles: {r.create_reconciles}); a pod POST every ", end=""
    )
    print(f"{r.pod_cadence_ms:.2f} ms, the double answering it in {r.pod_post_ms:.2f} ms; ", end="")
    print(
        f"loop lag <= {r.create_lag[0]:g} s, {r.create_lag[1]} over 100 ms; tokens Secret ", end=""
    )
    print(f"{r.tokens_bytes / 1024:.1f} KiB of data ({r.tokens_bytes / r.nodes:.0f} B a site)")
    for what, count in sorted(r.create_calls.items()):
        print(f"    {count:6d}  {what}")
    for name, w in (("steady", r.steady), ("after the change", r.after)):
        print(
            f"  {name}: {w.ticks} ticks, {len(w.calls)} requests ({len(w.writes)} writes, "
            f"{w.status_patches} status patches), kopf {len(w.kopf)}; reconcile "
            f"{w.reconcile_ms:.1f} ms (its requests {w.double_ms_per_tick:.1f} ms in the double), "
            f"operator CPU {w.cpu_ms_per_tick:.1f} ms per tick; loop lag <= {w.lag_max:g} s, "
            f"{w.lags_over_100ms} over 100 ms"
        )
        for what, count in sorted(w.by_verb().items()):
            print(f"    {count:6d}  {what}")
    print(f"  one node deleted, writes: {dict(r.change_writes) or 'none'}")


def print_table(results: list[Result], resync: float) -> None:
    print(
        "\n| nodes | job -> all pods created | -> status | create reconcile | pod POSTs/s "
        "| steady requests / tick (reads / writes) | status patches steady | kopf steady "
        "| resync reconcile | CPU / tick | longest loop lag (create / steady) "
        "| RSS idle -> created -> steady (peak) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        w = r.steady
        per_tick = len(w.calls) / max(w.ticks, 1)
        writes = len(w.writes) / max(w.ticks, 1)
        print(
            f"| {r.nodes} | {r.to_pods:.2f} s | {r.to_status:.2f} s | {r.create_reconcile:.2f} s "
            f"| {r.nodes / r.to_pods:.0f} | {per_tick:.2f} ({per_tick - writes:.2f} / "
            f"{writes:.2f}) | {w.status_patches} in {w.ticks} ticks | {len(w.kopf)} "
            f"| {w.reconcile_ms:.1f} ms | {w.cpu_ms_per_tick:.1f} ms "
            f"| <= {r.create_lag[0]:g} s / <= {w.lag_max:g} s "
            f"| {r.rss_idle:.1f} -> {r.rss_created:.1f} -> {r.rss_steady:.1f} "
            f"({r.rss_peak:.1f}) MiB |"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        span = b.nodes - a.nodes
        print(
            f"\nper node ({a.nodes} -> {b.nodes}): RSS with the nodes seen "
            f"{(b.rss_idle - a.rss_idle) * 1024 / span:.1f} KiB, with their pods too "
            f"{(b.rss_steady - a.rss_steady) * 1024 / span:.1f} KiB, peak "
            f"{(b.rss_peak - a.rss_peak) * 1024 / span:.1f} KiB; create "
            f"{(b.to_pods - a.to_pods) / span * 1000:.2f} ms; resync reconcile "
            f"{(b.steady.reconcile_ms - a.steady.reconcile_ms) / span * 1000:.1f} us"
        )
    print(f"(resync every {resync:g} s here; the operator's default is 10 s)")


def print_limits(results: list[Result], resync_default: float = 10.0) -> None:
    """What a real API server's limits and latencies would make of the same requests."""
    total = sum(SHARES.values())
    seats = -(-(MAX_INFLIGHT + MAX_MUTATING) * SHARES["workload-low"] // total)
    print(
        f"\nAPI server: --max-requests-inflight {MAX_INFLIGHT} + --max-mutating-requests-inflight "
        f"{MAX_MUTATING} = {MAX_INFLIGHT + MAX_MUTATING} seats under APF; the operator's service "
        f"account is in workload-low: ceil(600 x 100 / {total}) = {seats} seats, 128 queues of 50, "
        f"shared with every other service account. Client side: no QPS limiter (the official "
        f"client's urllib3 pool, kopf's aiohttp); the operator's own pool is 16 calls at once, "
        f"and one job's pods are created one after another (apply.py: carry_out awaits each)."
    )
    print(
        "\n| nodes | creates in the double | operator side per create | at 5 / 20 / 50 ms a "
        "create (sequential) | at 5 / 20 / 50 / 100 writes/s | steady reads/s, 1 job "
        "(10 s resync) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        client = r.pod_cadence_ms - r.pod_post_ms
        latency = " / ".join(f"{r.nodes * (client + ms) / 1000:.1f} s" for ms in (5, 20, 50))
        rates = " / ".join(f"{r.nodes / q:.1f} s" for q in (5, 20, 50, 100))
        reads = len(r.steady.calls) / max(r.steady.ticks, 1) / resync_default
        print(
            f"| {r.nodes} | {r.to_pods:.2f} s ({r.pod_post_ms:.2f} ms each in the double) "
            f"| {client:.2f} ms | {latency} | {rates} | {reads:.2f} |"
        )


async def bench(counts: list[int], ticks: int, resync: float, images: int) -> None:
    results = []
    for nodes in counts:
        result = await run(nodes, ticks=ticks, resync=resync, images=images)
        print_run(result)
        results.append(result)
        sys.stdout.flush()
    print_table(results, resync)
    print_limits(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="10,100,1000", help="comma-separated node counts")
    parser.add_argument("--ticks", type=int, default=5, help="resync ticks per quiet window")
    parser.add_argument("--resync", type=float, default=2.0, help="seconds between ticks")
    parser.add_argument(
        "--images", type=int, default=12, help="images in each node's status (kubelet: <= 50)"
    )
    parser.add_argument("--run-operator", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_operator:
        with contextlib.suppress(KeyboardInterrupt):
            run_operator(args.run_operator, args.metrics_port, args.resync)
        return
    counts = [int(n) for n in args.nodes.split(",")]
    asyncio.run(bench(counts, args.ticks, args.resync, args.images))


if __name__ == "__main__":
    main()
