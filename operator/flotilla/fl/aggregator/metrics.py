"""The aggregator's Prometheus metrics, prefix `flotilla_`, in a registry of its own.

Round numbers are read from the ledger at scrape time (a collector, not hooks in the
round loop): they cost the hot path nothing, agree with /v1/status, and continue
across a restart because the ledger is restored from the checkpoint. Only what the
ledger does not hold is counted as it happens: refused requests, bytes sent, tracking
failures. Clients report their own numbers with each update, so the aggregator exports
them per site: edge nodes are often not scrapeable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from flotilla.fl.aggregator.engine import Phase, RoundEngine
from flotilla.fl.aggregator.site_metrics import client_metrics, link_metrics, site_readiness

ROUND_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
AGGREGATION_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STALENESS_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100)


class AggregatorMetrics:
    """Everything the aggregator exports; `registry` is what /metrics serves."""

    def __init__(self, engine: RoundEngine, *, tracking_failures: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        job = engine.job.metadata.name
        self.registry.register(LedgerCollector(engine, tracking_failures=tracking_failures))
        self._rejected = Counter(
            "flotilla_updates_rejected",
            "Requests from clients refused with a 4xx, by reason",
            ["flotilla_job", "reason"],
            registry=self.registry,
        )
        self._sent = Counter(
            "flotilla_sent_bytes",
            "Model bytes sent to clients",
            ["flotilla_job"],
            registry=self.registry,
        ).labels(job)
        self._job = job

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self._job, reason).inc()

    def sent(self, count: int) -> None:
        self._sent.inc(count)


class LedgerCollector(Collector):
    def __init__(self, engine: RoundEngine, *, tracking_failures: Callable[[], int]) -> None:
        self.engine = engine
        self.tracking_failures = tracking_failures
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        job = engine.job.metadata.name
        history = engine.ledger.history_json()
        yield _gauge("flotilla_round_current", "The round being played", job, engine.current_round)
        yield _gauge("flotilla_rounds_planned", "Rounds the job asks for", job, engine.state.rounds)
        clients = engine.job.spec.clients
        yield _gauge(
            "flotilla_clients_min",
            "spec.clients.minClients: answers a round needs to be aggregated",
            job,
            clients.min_clients,
        )
        yield _gauge(
            "flotilla_round_deadline_seconds",
            "spec.clients.roundDeadlineSeconds: how long a round waits for answers",
            job,
            clients.round_deadline_seconds,
        )
        last = history[-1] if history else None
        yield _gauge(
            "flotilla_last_progress_timestamp_seconds",
            "Unix time of the latest completed round, or of the aggregator's start before one",
            job,
            float(last["started_at"]) + float(last["duration_seconds"]) if last else self.started,
        )
        yield _gauge(
            "flotilla_clients_present", "Clients connected now", job, len(engine.roster.present())
        )
        yield _phase(job, engine.phase)
        yield from _round_counters(job, history)
        yield _histogram(
            "flotilla_round_duration_seconds",
            "Wall time of each completed round, from open to aggregated",
            job,
            [float(r["duration_seconds"]) for r in history],
            ROUND_SECONDS_BUCKETS,
        )
        yield _histogram(
            "flotilla_aggregation_seconds",
            "Time to finish the aggregate and step the server optimizer, per round",
            job,
            [float(r["aggregation_seconds"]) for r in history],
            AGGREGATION_SECONDS_BUCKETS,
        )
        yield from _global_metrics(job, history)
        yield _privacy_epsilon(job, history)
        yield from _promotion(job, engine.tracking_status().get("promotion"))
        yield from client_metrics(job, history)
        yield site_readiness(job, engine.roster.site_reports)
        yield from link_metrics(job, engine.intake.links)
        if engine.buffered is not None:
            yield from _buffered_metrics(job, engine, history)
        yield _counter(
            "flotilla_checkpoint_failures",
            "Failed attempts to write a checkpoint (retried; the job fails after 5 in a row)",
            job,
            engine.persister.failures,
        )
        yield _counter(
            "flotilla_tracking_failures",
            "Failed attempts to write the job's records to MLflow",
            job,
            self.tracking_failures(),
        )


def _gauge(name: str, doc: str, job: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["flotilla_job"])
    family.add_metric([job], value)
    return family


def _counter(name: str, doc: str, job: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["flotilla_job"])
    family.add_metric([job], value)
    return family


def _phase(job: str, phase: Phase) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "flotilla_job_phase",
        "1 for the aggregator's current phase",
        labels=["flotilla_job", "phase"],
    )
    for each in Phase:
        family.add_metric([job, each.value], 1.0 if each is phase else 0.0)
    return family


def _round_counters(job: str, history: list[dict[str, Any]]) -> Iterable[Metric]:
    sampled = sum(len(r["sampled"]) for r in history)
    answered = sum(len(r["answered"]) for r in history)
    yield _counter(
        "flotilla_rounds_completed", "Rounds aggregated and checkpointed", job, len(history)
    )
    yield _counter(
        "flotilla_round_retries",
        "Round attempts that gathered too few answers and were played again",
        job,
        sum(int(r["attempts"]) - 1 for r in history),
    )
    yield _counter(
        "flotilla_clients_sampled", "Client slots sampled in completed rounds", job, sampled
    )
    yield _counter(
        "flotilla_clients_answered", "Updates folded into completed rounds", job, answered
    )
    yield _counter(
        "flotilla_clients_timed_out",
        "Sampled clients that had not answered when their round closed",
        job,
        sampled - answered,
    )
    yield _counter(
        "flotilla_received_bytes",
        "Update bytes received in completed rounds, as sent on the wire",
        job,
        sum(int(r["bytes_received"]) for r in history),
    )


def _histogram(
    name: str, doc: str, job: str, values: list[float], buckets: tuple[float, ...]
) -> HistogramMetricFamily:
    counts = [(str(le), float(sum(1 for v in values if v <= le))) for le in buckets]
    counts.append(("+Inf", float(len(values))))
    family = HistogramMetricFamily(name, doc, labels=["flotilla_job"])
    family.add_metric([job], counts, sum_value=sum(values))
    return family


def _global_metrics(job: str, history: list[dict[str, Any]]) -> Iterable[Metric]:
    for metric, doc in (("loss", "Loss"), ("accuracy", "Accuracy"), ("map50", "mAP@0.5")):
        family = GaugeMetricFamily(
            f"flotilla_global_{metric}",
            f"{doc} of the latest evaluated global model: central (the test split) or "
            "federated (the clients' hold-outs, known a round later)",
            labels=["flotilla_job", "source"],
        )
        for source in ("central", "federated"):
            values = (row[source].get(metric) for row in reversed(history) if row.get(source))
            value = next(values, None)
            if isinstance(value, int | float) and math.isfinite(value):
                family.add_metric([job, source], float(value))
        yield family


def _privacy_epsilon(job: str, history: list[dict[str, Any]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "flotilla_privacy_epsilon",
        "Differential privacy: epsilon spent so far (at spec.privacy.delta); absent without it",
        labels=["flotilla_job"],
    )
    spent = [row["privacy"] for row in history if row.get("privacy")]
    epsilon = spent[-1].get("epsilon") if spent else None
    if isinstance(epsilon, int | float) and math.isfinite(epsilon):
        family.add_metric([job], float(epsilon))
    return family


def _promotion(job: str, decision: Mapping[str, Any] | None) -> Iterable[Metric]:
    """The promotion gate's figures once it decided: the new version's score beside the
    champion's it was compared with (both on the aggregator's test split)."""
    scores = GaugeMetricFamily(
        "flotilla_model_score",
        "The promotion gate's scores on the test split: model=candidate (this job's version) "
        "and model=champion (the version the promotion alias pointed at); absent without a gate",
        labels=["flotilla_job", "model", "metric"],
    )
    promoted = GaugeMetricFamily(
        "flotilla_model_promoted",
        "1 if the promotion gate moved its alias to this job's version, 0 if it kept it",
        labels=["flotilla_job"],
    )
    if decision:
        metric = str(decision.get("metric", ""))
        for model, key in (("candidate", "score"), ("champion", "championScore")):
            value = decision.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                scores.add_metric([job, model, metric], float(value))
        promoted.add_metric([job], 1.0 if decision.get("outcome") == "promoted" else 0.0)
    return (scores, promoted)


def _buffered_metrics(
    job: str, engine: RoundEngine, history: list[dict[str, Any]]
) -> Iterable[Metric]:
    """Buffered aggregation: how full the open buffer is, how stale the folded updates were."""
    buffered = engine.buffered
    assert buffered is not None
    yield _gauge(
        "flotilla_buffer_updates",
        "Buffered aggregation: updates folded into the server update in the making",
        job,
        buffered.buffer.count,
    )
    stalenesses = [
        float(update["staleness"])
        for row in history
        for update in (row.get("buffer") or {}).get("updates", [])
    ]
    yield _histogram(
        "flotilla_update_staleness",
        "Buffered aggregation: server updates between an update's base model and the one "
        "it was folded into, per update of the completed server updates",
        job,
        stalenesses,
        STALENESS_BUCKETS,
    )
    yield _counter(
        "flotilla_buffer_journal_failures",
        "Buffered aggregation: failed writes of the buffer to disk (the update stays folded)",
        job,
        buffered.journal_failures,
    )
