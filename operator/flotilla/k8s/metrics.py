"""The operator's Prometheus metrics (`flotilla_operator_*`), in a registry of its own.

Jobs by phase and client pods by state are what the last reconcile of each job saw;
reconcile time and errors, and refused API calls, are counted as they happen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._jobs: dict[tuple[str, str], Mapping[str, Any]] = {}  # job -> its last status
        self.registry.register(_JobsCollector(self._jobs))
        self.reconcile_seconds = Histogram(
            "flotilla_operator_reconcile_duration_seconds",
            "Time of one reconcile of a job, by what started it",
            ["trigger"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "flotilla_operator_reconcile_errors",
            "Reconciles that raised, by exception type",
            ["error"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "flotilla_operator_api_errors",
            "Kubernetes API calls that failed, by HTTP status",
            ["status"],
            registry=self.registry,
        )

    def api_error(self, status: int) -> None:
        self.api_errors.labels(str(status)).inc()

    def observed(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._jobs[(namespace, name)] = status

    def forget(self, namespace: str, name: str) -> None:
        self._jobs.pop((namespace, name), None)

    async def serve(self, *, host: str, port: int) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner


class _JobsCollector(Collector):
    def __init__(self, jobs: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        phases = GaugeMetricFamily(
            "flotilla_operator_jobs", "FederatedJobs by phase", labels=["phase"]
        )
        for phase in PHASES:
            phases.add_metric(
                [phase], sum(1 for s in self.jobs.values() if s.get("phase") == phase)
            )
        yield phases
        pods = GaugeMetricFamily(
            "flotilla_operator_client_pods",
            "Client pods of all jobs: desired, ready, failed",
            labels=["state"],
        )
        for state in ("desired", "ready", "failed"):
            total = sum(int((s.get("clients") or {}).get(state, 0)) for s in self.jobs.values())
            pods.add_metric([state], total)
        yield pods
