"""The aggregator's side of MLflow tracking: which store, what the exporter sees, when it runs."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import asdict
from pathlib import Path

from flotilla.api import FederatedJob
from flotilla.api.tracking import DEFAULT_TRACKING_URI_ENV, TRACKING_URI_ENV
from flotilla.fl.aggregator.engine import Phase, RoundEngine
from flotilla.fl.aggregator.promotion import champion_scorer, promotion_settings
from flotilla.fl.aggregator.recovery import Recovered, needs_recovery, recover
from flotilla.fl.aggregator.warm_start import saved_lineage
from flotilla.fl.modelstate import build_job_model, load_weights
from flotilla.redaction import redact_urls
from flotilla.tracking.backend import MlflowBackend
from flotilla.tracking.champion import PromotionGate
from flotilla.tracking.exporter import JobView, TrackingExporter, TrackingSettings
from flotilla.tracking.parent import Lineage
from flotilla.tracking.plan import job_params
from flotilla.tracking.served_model import ServedModel, served_model

log = logging.getLogger(__name__)


def resolve_tracking_uri(job: FederatedJob, *, override: str | None) -> str | None:
    """The command line's URI, else the spec's, else $MLFLOW_TRACKING_URI, else the cluster's
    default ($FLOTILLA_DEFAULT_TRACKING_URI, set by the operator); None: no tracking."""
    return (
        override
        or job.spec.tracking.tracking_uri
        or os.environ.get(TRACKING_URI_ENV)
        or os.environ.get(DEFAULT_TRACKING_URI_ENV)
        or None
    )


def tracking_settings(
    job: FederatedJob, uri: str, *, lineage: Lineage | None = None
) -> TrackingSettings:
    """`lineage`: the parent a warm start began from (warm_start.py), recorded on the run."""
    tracking, meta = job.spec.tracking, job.metadata
    tags = {
        "flotilla.job": meta.name,
        "mlflow.source.name": "flotilla",
        "mlflow.source.type": "JOB",
    }
    params = job_params(job.to_dict())
    if lineage is not None:
        tags |= lineage.tags()
        params |= lineage.params()
    if meta.namespace:
        tags["flotilla.namespace"] = meta.namespace
    if meta.uid:
        tags["flotilla.job_uid"] = meta.uid
    return TrackingSettings(
        uri=uri,
        experiment=tracking.experiment or meta.name,
        registered_model=tracking.registered_model or meta.name,
        alias=tracking.alias,
        checkpoint_every=tracking.checkpoint_every_rounds,
        run_name=meta.name,
        params=params,
        tags=tags,
        run_key=f"job-{meta.uid}" if meta.uid else None,
        promotion=promotion_settings(job),
    )


def recover_state(
    job: FederatedJob, *, state_dir: Path, uri_override: str | None, enabled: bool
) -> Recovered | None:
    """Before the engine loads its checkpoint: an empty state directory of a job MLflow may
    hold is filled from MLflow (recovery.py)."""
    uri = resolve_tracking_uri(job, override=uri_override)
    if not (enabled and job.spec.tracking.enabled and uri):
        return None
    settings = tracking_settings(job, uri)
    if not needs_recovery(state_dir, settings) or importlib.util.find_spec("mlflow") is None:
        return None
    return recover(settings, lambda: MlflowBackend(uri), state_dir=state_dir)


def attach_exporter(
    engine: RoundEngine, *, state_dir: Path, uri_override: str | None, enabled: bool
) -> TrackingExporter | None:
    """An exporter for the engine's job, reporting through the engine's status; None if off."""
    job = engine.job
    uri = resolve_tracking_uri(job, override=uri_override)
    reason = None
    if not (enabled and job.spec.tracking.enabled):
        reason = "tracking is turned off"
    elif uri is None:
        reason = f"no tracking URI: set spec.tracking.trackingUri or {TRACKING_URI_ENV}"
    elif importlib.util.find_spec("mlflow") is None:
        reason = "mlflow is not installed here: pip install 'flotilla[tracking]'"
    if reason is not None or uri is None:
        log.warning("MLflow tracking off: %s", reason)
        engine.tracking_status = lambda: {"enabled": False, "reason": reason}
        return None
    settings = tracking_settings(job, uri, lineage=saved_lineage(state_dir))
    exporter = TrackingExporter(
        settings,
        backend=lambda: MlflowBackend(uri),
        state_dir=state_dir,
        gate=_gate(engine, settings, uri),
    )
    engine.tracking_status = lambda: exporter.status(persisted=engine.state.persisted)
    engine.store.retain = exporter.wants_checkpoint
    log.info("recording the job in MLflow at %s", redact_urls(uri))
    return exporter


def _gate(engine: RoundEngine, settings: TrackingSettings, uri: str) -> PromotionGate | None:
    """The promotion gate, scoring the champion with the engine's own central evaluator."""
    promotion = settings.promotion
    if promotion is None or engine.evaluator is None:  # the spec requires testData with it
        return None
    score = champion_scorer(
        engine.job,
        evaluator=engine.evaluator,
        shapes=lambda: engine.layout.views(engine.global_model),  # names and shapes only
        metric=promotion.metric,
    )
    return PromotionGate(promotion, registry=lambda: MlflowBackend(uri), score=score)


async def run_exporter(exporter: TrackingExporter, engine: RoundEngine) -> None:
    async def wait_change(seq: int, timeout: float) -> int:
        status = await engine.wait_status(after=seq, timeout=timeout)
        return int(status["seq"])

    await exporter.run(snapshot=lambda: job_view(engine, exporter), wait_change=wait_change)


def job_view(engine: RoundEngine, exporter: TrackingExporter) -> JobView:
    journal = exporter.journal
    finished = engine.phase in (Phase.DONE, Phase.FAILED)
    # Rows the exporter already sent are not copied again, unless the summary needs them all.
    after = 0 if finished else min(journal.rounds_logged, journal.federated_logged)
    ledger = engine.ledger
    final = None
    if engine.phase is Phase.DONE:
        weights = bytearray(engine.global_model)  # a copy: the worker thread reads it later
        final = lambda: final_served_model(engine, weights)  # noqa: E731
    return JobView(
        phase=engine.phase.value,
        persisted=engine.state.persisted,
        history=ledger.history_json(after=after),
        evaluations={
            version: [asdict(report) for report in by_site.values()]
            for version, by_site in ledger.evaluations.items()
            if version > after
        },
        summary=engine.summary() if finished else {},
        checkpoint_dir=engine.store.directory,
        final_model=final,
    )


def final_served_model(engine: RoundEngine, weights: bytearray) -> ServedModel:
    job = engine.job
    classifier = build_job_model(job)
    load_weights(classifier, engine.layout.views(weights))
    shape = job.spec.model.input
    return served_model(
        classifier,
        task=job.spec.task,
        input_shape=(shape.channels, shape.height, shape.width),
        labels=list(job.spec.labels),
        info={"flotilla.job": job.metadata.name, "flotilla.round": engine.state.persisted},
    )
