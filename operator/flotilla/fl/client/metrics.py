"""A client's own Prometheus metrics (`flotilla_local_*`), for sites where it can be scraped.

The aggregator exports what every client reports (`flotilla_client_*{site}`); these are
the same numbers measured where they happen, plus what only the site sees: model bytes
received, refusals, hold-out metrics before training, and the link's broken and resumed
transfers in both directions (from the transport's counts).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flotilla.fl.client.transport import TransferStats
from flotilla.fl.learning import LocalEvaluation, LocalTraining

TRAIN_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)


class ClientMetrics:
    def __init__(self, *, job: str, site: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"flotilla_job": job, "site": site}
        names = list(labels)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=self.registry).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=self.registry).labels(**labels)

        self.rounds = counter("flotilla_local_rounds_trained", "Rounds this site trained")
        self.train_seconds = Histogram(
            "flotilla_local_training_seconds",
            "Local training time per round",
            names,
            buckets=TRAIN_SECONDS_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.examples = gauge("flotilla_local_examples", "Training examples at this site")
        self.loss = gauge("flotilla_local_train_loss", "Training loss of the last round")
        self.accuracy = gauge("flotilla_local_train_accuracy", "Training accuracy, last round")
        self.holdout_loss = gauge(
            "flotilla_local_holdout_loss", "Hold-out loss of the latest global model"
        )
        self.holdout_accuracy = gauge(
            "flotilla_local_holdout_accuracy", "Hold-out accuracy of the latest global model"
        )
        self.holdout_map50 = gauge(
            "flotilla_local_holdout_map50", "Hold-out mAP@0.5 of the latest global model"
        )
        self.data_ready = gauge(
            "flotilla_local_data_ready", "1 when the site's data loaded, 0 while it cannot"
        )
        self.sent = counter("flotilla_local_sent_bytes", "Update bytes sent to the aggregator")
        self.received = counter(
            "flotilla_local_received_bytes", "Global-model bytes received from the aggregator"
        )
        self._refusals = Counter(
            "flotilla_local_refusals",
            "Requests the aggregator refused, by reason",
            [*names, "reason"],
            registry=self.registry,
        )
        self._labels = labels
        self._resets = Counter(
            "flotilla_local_transfer_resets",
            "Uploads (up) and model downloads (down) whose connection broke off mid-body",
            [*names, "direction"],
            registry=self.registry,
        )
        self._resumed = Counter(
            "flotilla_local_resumed_bytes",
            "Bytes not sent again because a broken transfer resumed, by direction",
            [*names, "direction"],
            registry=self.registry,
        )
        self._seen = TransferStats()
        for direction in ("up", "down"):  # both series from the start, at 0
            self._resets.labels(**labels, direction=direction)
            self._resumed.labels(**labels, direction=direction)

    def trained(self, result: LocalTraining, *, sent_bytes: int) -> None:
        self.rounds.inc()
        self.train_seconds.observe(result.seconds)
        self.examples.set(result.examples)
        self.loss.set(result.loss)
        if "accuracy" in result.scores:
            self.accuracy.set(result.scores["accuracy"])
        self.sent.inc(sent_bytes)

    def evaluated(self, result: LocalEvaluation) -> None:
        self.holdout_loss.set(result.loss)
        for score, gauge in (("accuracy", self.holdout_accuracy), ("map50", self.holdout_map50)):
            if score in result.scores:
                gauge.set(result.scores[score])

    def transfers(self, stats: TransferStats) -> None:
        """Add what the transport counted since the last call, so that calling this after
        every transfer (or twice after one) counts each reset and resumed byte once."""
        self._follow(self._resets, stats.resets, self._seen.resets)
        self._follow(self._resumed, stats.resumed_bytes, self._seen.resumed_bytes)

    def _follow(self, counter: Counter, totals: dict[str, int], seen: dict[str, int]) -> None:
        for direction, total in totals.items():
            before = seen.get(direction, 0)
            # Totals that went down come from fresh stats (a new connection): all of it is new.
            new = total - before if total >= before else total
            if new:
                counter.labels(**self._labels, direction=direction).inc(new)
            seen[direction] = total

    def refused(self, reason: str) -> None:
        self._refusals.labels(**self._labels, reason=reason).inc()

    def serve(self, port: int, *, host: str = "0.0.0.0") -> int:
        """Serve /metrics on a thread of its own; returns the port (0 picks a free one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
