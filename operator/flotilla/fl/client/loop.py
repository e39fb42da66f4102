"""A federated client: one long-lived process per site that trains on the site's own data.

Loop: long-poll the aggregator for a task; on `report`, say whether the site's data is
ready (with its label report) or why not; on `train`, fetch the global model if its
version changed, evaluate it on the local hold-out, train, and upload the result (the
trained weights for float32 updates, the delta for compressed ones) with the example
count and metrics; on `evaluate`, report the final model's hold-out metrics;
stop on `done` or `failed`. Under buffered aggregation (`spec.strategy.buffered`) the
aggregator answers `train` again as soon as an update is in, with the latest model, and
the client always uploads its delta: the model it trained on may be gone by then. A site
whose data cannot be read (CVAT refuses or is down, a malformed export) stays connected
and tries again with a backoff; the rounds go on without it meanwhile. Only weights,
counts, metrics and error messages leave the site: images and annotations are read here
and never sent.

Building a client does no I/O (no request, no file, no port): joining the job, serving
metrics and reading the site's data are steps of their own, which `FederatedClient.open`
takes in order.
"""

from __future__ import annotations

import json
import logging
import mmap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flotilla.api import FederatedJob
from flotilla.fl.client.joining import Assignment, join
from flotilla.fl.client.metrics import ClientMetrics
from flotilla.fl.client.site_data import SiteData
from flotilla.fl.client.transport import AggregatorConnection, AggregatorRefused
from flotilla.fl.codec import UpdateEncoder
from flotilla.fl.learning import learning_for
from flotilla.fl.modelstate import bind_weights, build_job_model, load_weights, store_weights
from flotilla.fl.wire import model_layout
from flotilla.ml.training import TrainingConfig, select_device

log = logging.getLogger(__name__)

LONG_POLL_SECONDS = 20.0
# Refusals that mean "the round moved on without you", not "you are broken". `too_slow`: the
# link was too slow for this upload (intake pace); the site is sampled again next round.
# `too_stale`: buffered aggregation moved on by more server updates than it takes.
STALE = frozenset(
    {
        "round_closed",
        "duplicate",
        "not_sampled",
        "stale_version",
        "not_evaluating",
        "too_slow",
        "too_stale",
    }
)
# Buffered aggregation: a site may train again on the same model version (the server has
# not stepped yet); this keeps its seeds apart (see FederatedClient._seed).
_RETRAIN_SEED_STRIDE = 1_000_003

UpdateHook = Callable[[Mapping[str, torch.Tensor]], None]
"""A plug-in point: rewrites a round's update, in place, right before it is encoded.

The update is a delta by tensor name (trained minus global weights): a client given a
hook uploads deltas even where float32 updates would go up as weights. Nothing in
Flotilla sets one, and no flag does; the robust-aggregation tests plug Byzantine updates
in here."""


@dataclass(frozen=True)
class ClientOptions:
    data_path: Path | None = None
    device: str = "auto"
    metrics_port: int | None = None  # serve /metrics here; None: not at all
    metrics_host: str = "0.0.0.0"
    # This node's overrides of spec.training (a hardware profile: small batches, time budget).
    batch_size: int | None = None
    local_epochs: int | None = None
    max_seconds: float | None = None
    # A site whose data cannot be read (CVAT down, bad export) tries again after this,
    # doubling up to site_data.MAX_RETRY_SECONDS; the aggregator knows why meanwhile.
    data_retry_seconds: float = 30.0


class FederatedClient:
    """One site's client for one job. Building it does no I/O: `open` joins the job,
    builds the client, serves its metrics and reads the site's data; `run` plays the job."""

    @classmethod
    def open(
        cls,
        connection: AggregatorConnection,
        options: ClientOptions,
        *,
        update_hook: UpdateHook | None = None,
    ) -> FederatedClient:
        client = cls(connection, join(connection), options, update_hook=update_hook)
        client.serve_metrics()
        client.load_data()
        return client

    def __init__(
        self,
        connection: AggregatorConnection,
        assignment: Assignment,
        options: ClientOptions,
        *,
        update_hook: UpdateHook | None = None,
    ) -> None:
        self.conn = connection
        self.options = options
        self.update_hook = update_hook
        self.device = select_device(options.device)
        self.site = assignment.site
        self.job: FederatedJob = assignment.job
        spec = self.job.spec
        self.learning = learning_for(spec.task, num_classes=len(spec.labels))
        self.model = build_job_model(self.job).to(self.device)
        self.layout = model_layout(self.model.state_dict())
        if self.layout.header[8:].decode().rstrip() != assignment.layout_header:
            raise RuntimeError(
                "this client and the aggregator build different tensors for the job's model "
                "(are they different Flotilla versions?)"
            )
        # The model's weights live in this buffer (bound, on the CPU): downloads land in
        # them and trained weights are uploaded from them, with no copy and no second
        # model in memory. On a GPU (or for a model that cannot be bound) the buffer is a
        # staging copy on the host.
        self.weights = self.layout.allocate_mapped()
        self.weights_views = self.layout.views(self.weights)
        self.bound = self.device.type == "cpu" and bind_weights(self.model, self.weights_views)
        # float32 updates go up as the trained weights (the aggregator subtracts the global
        # model it holds); compressed ones as deltas, which quantize far better than
        # weights, at the cost of a copy of the global model kept while training. A hook
        # rewrites deltas, so a hooked client sends them whatever the dtype; so does a
        # buffered job's, whose aggregator may have moved past the model it trained on.
        self.buffered = spec.strategy.buffered is not None
        self.sends_weights = (
            spec.compression.dtype == "float32" and update_hook is None and not self.buffered
        )
        self.trainings = 0  # updates trained so far
        self.delta: mmap.mmap | None = None
        self.cached_version: int | None = None
        self.encoder = UpdateEncoder(
            self.layout,
            dtype=spec.compression.dtype,
            zstd_level=spec.compression.zstd_level if spec.compression.zstd else None,
        )
        self.metrics = ClientMetrics(job=self.job.metadata.name, site=self.site)
        # Read by load_data; `run` reads it on its first pass if nothing did before.
        self.data = SiteData(
            self.job,
            self.site,
            data_path=options.data_path,
            retry_seconds=options.data_retry_seconds,
        )

    def serve_metrics(self) -> int | None:
        """Serve /metrics on the options' port; returns the port, None when there is none."""
        if self.options.metrics_port is None:
            return None
        port = self.metrics.serve(self.options.metrics_port, host=self.options.metrics_host)
        log.info("site %s: Prometheus metrics on port %d at /metrics", self.site, port)
        return port

    def load_data(self) -> None:
        """Read the site's data, or keep why not: the aggregator learns either way."""
        self.data.load()
        train, holdout = self.data.train, self.data.holdout
        self.metrics.data_ready.set(0 if train is None else 1)
        if train is not None and holdout is not None:
            log.info(
                "site %s: %d training and %d hold-out examples on %s",
                self.site,
                len(train),
                len(holdout),
                self.device,
            )

    def run(self) -> str:
        """Work until the job ends; returns the job's final phase ("done" or "failed")."""
        while True:
            wait = LONG_POLL_SECONDS
            if self.data.train is None:
                wait = min(wait, max(self.data.next_try - time.monotonic(), 0.0))
            task = self._next_task(wait)
            action = task["action"]
            try:
                if action == "report":
                    self.conn.post_json("/v1/site-report", self.data.report)
                elif action == "train":
                    self._train_round(task)
                elif action == "evaluate":
                    self._evaluate_final(task)
                elif action in ("done", "failed"):
                    log.info("site %s: the job is %s", self.site, action)
                    return str(action)
            except AggregatorRefused as refused:
                self.metrics.refused(refused.reason)
                if refused.reason not in STALE:
                    raise
                log.warning("site %s: %s", self.site, refused)
            if self.data.train is None and time.monotonic() >= self.data.next_try:
                self.load_data()
                self.conn.post_json("/v1/site-report", self.data.report)

    def _next_task(self, wait: float) -> dict[str, Any]:
        """The next task; a small model it needs comes with it, into the model buffer."""
        held, self.cached_version = self.cached_version, None  # the answer may overwrite it
        try:
            task, received = self.conn.get_task(wait=wait, held=held, into=self.weights)
        finally:  # a download that gave up broke too
            self.metrics.transfers(self.conn.stats)
        if received:
            self._took_model(int(task["modelVersion"]))
        else:
            self.cached_version = held
        return task

    def _ensure_model(self, version: int) -> None:
        if self.cached_version == version:
            return
        self.cached_version = None
        try:
            self.conn.download_into(f"/v1/model/{version}", self.weights)
        finally:  # a download that gave up broke too
            self.metrics.transfers(self.conn.stats)
        self._took_model(version)

    def _took_model(self, version: int) -> None:
        """The model buffer holds version `version`, as received: check it and load it."""
        self.metrics.received.inc(len(self.weights))
        if self.weights[: len(self.layout.header)] != self.layout.header:
            raise RuntimeError("the aggregator sent a model with another layout")
        if not self.bound:
            load_weights(self.model, self.weights_views)
        self.cached_version = version

    def _holdout_metrics(self, version: int) -> dict[str, Any] | None:
        holdout = self.data.holdout
        if not self.job.spec.evaluation.federated or holdout is None or len(holdout) == 0:
            return None
        result = self.learning.evaluate(
            self.model, holdout, batch_size=self.job.spec.training.batch_size, device=self.device
        )
        self.metrics.evaluated(result)
        return {
            "modelVersion": version,
            "loss": result.loss,
            "examples": result.examples,
            **result.scores,
        }

    def _train_round(self, task: dict[str, Any]) -> None:
        train = self.data.train
        if train is None:  # the aggregator samples only sites that said they are ready
            raise RuntimeError("asked to train before this site's data is ready")
        round_number, version = int(task["round"]), int(task["modelVersion"])
        self._ensure_model(version)
        evaluation = self._holdout_metrics(version)
        training = self.job.spec.training
        options = self.options
        config = TrainingConfig(
            local_epochs=options.local_epochs or training.local_epochs,
            batch_size=options.batch_size or training.batch_size,
            optimizer=training.optimizer,
            learning_rate=training.learning_rate,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
            max_seconds=options.max_seconds or training.max_seconds,
            proximal_mu=float(task.get("proximalMu", 0.0)),
        )
        global_copy = None if self.sends_weights else self._copy_global()
        result = self.learning.train(
            self.model,
            train,
            config=config,
            seed=self._seed(round_number),
            device=self.device,
            global_weights=self.weights_views if config.proximal_mu > 0 else None,
        )
        self.cached_version = None  # the buffer holds this site's weights from here on
        self.trainings += 1
        if not self.bound:
            store_weights(self.model, self.weights_views)
        body = self._weights_body() if global_copy is None else self._delta_body(global_copy)
        metrics = {
            "train": {
                "loss": result.loss,
                "seconds": result.seconds,
                "epochs": result.epochs,
                **result.scores,
            },
            "eval": evaluation,
        }
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Flotilla-Examples": str(result.examples),
            "X-Flotilla-Metrics": json.dumps(metrics),
        }
        if self.encoder.compression:
            headers["X-Flotilla-Compression"] = self.encoder.compression
        if global_copy is None:
            headers["X-Flotilla-Update"] = "weights"
        try:
            answer = self.conn.upload(
                f"/v1/rounds/{round_number}/update", body, headers, restarts=self.encoder.restarts
            )
        finally:
            self.metrics.transfers(self.conn.stats)
        self.metrics.trained(result, sent_bytes=len(body))
        log.info(
            "site %s: round %d sent (%d examples, loss %.4f, norm %.3g)",
            self.site,
            round_number,
            result.examples,
            result.loss,
            answer.get("updateNorm", 0.0),
        )

    def _seed(self, round_number: int) -> int:
        """The local shuffle's seed: the job's and the round's; buffered, also how many
        updates this client trained before, as it may train on one version twice."""
        seed = self.job.spec.seed * 100_003 + round_number
        return seed + _RETRAIN_SEED_STRIDE * self.trainings if self.buffered else seed

    def _copy_global(self) -> dict[str, torch.Tensor]:
        """The round's global weights, kept aside while the model trains (delta uploads)."""
        if self.delta is None:
            self.delta = self.layout.allocate_mapped()
        self.delta[:] = self.weights
        return self.layout.views(self.delta)

    def _weights_body(self) -> memoryview:
        return self.encoder.encode(self.weights, self.weights_views)

    def _delta_body(self, global_copy: dict[str, torch.Tensor]) -> memoryview:
        """The delta (local minus global), computed in place over the global copy."""
        assert self.delta is not None
        with torch.no_grad():
            for name, view in global_copy.items():
                torch.sub(self.weights_views[name], view, out=view)
        if self.update_hook is not None:
            self.update_hook(global_copy)
        return self.encoder.encode(self.delta, global_copy)

    def _evaluate_final(self, task: dict[str, Any]) -> None:
        version = int(task["modelVersion"])
        self._ensure_model(version)
        report = self._holdout_metrics(version) or {"loss": None, "examples": 0}
        self.conn.post_json(f"/v1/evaluations/{version}", report)
