"""Round 0 from weights a job recorded in MLflow (``spec.model.init``), not from the seed.

Only for a job with no checkpoint: a resumed job's checkpoint wins and ``init`` is not even
looked up (MLflow may be down; an alias moved since must not change a job under way).
Every failure is a WarmStartError whose message names ``spec.model.init`` and its value.
It comes before the job's MLflow run is created, so a refused start leaves nothing
behind. The lineage is kept in the state directory, for the exporter to record on the
run (tracked.py), however late the run is created.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from flotilla.api import FederatedJob
from flotilla.api.model_init import parse_model_init
from flotilla.api.tracking import TRACKING_URI_ENV
from flotilla.fl.aggregator.warm_fit import Fitted, WeightsMismatch, fit_weights
from flotilla.fl.wire import Layout
from flotilla.tracking.parent import Lineage, ParentError, fetch_parent
from flotilla.tracking.weights import read_weights

log = logging.getLogger(__name__)

LINEAGE_FILE = "warm-start.json"


class WarmStartError(Exception):
    """The job cannot start from ``spec.model.init``; the message names it and its value."""


def warm_start(
    job: FederatedJob,
    *,
    layout: Layout,
    model: bytearray,
    state_dir: Path,
    tracking_uri: str | None,
) -> Lineage:
    """Fill `model` (the engine's round-0 buffer, in the job's `layout`) with the weights
    `spec.model.init` names, fitted to the job's labels; the lineage, also saved."""
    init = job.spec.model.init
    assert init is not None
    reference = parse_model_init(init)
    if tracking_uri is None:
        problem = (
            "no MLflow server to read it from: set spec.tracking.trackingUri, "
            f"--tracking-uri or {TRACKING_URI_ENV}"
        )
        raise WarmStartError(f"spec.model.init {init!r}: {problem}")
    if importlib.util.find_spec("mlflow") is None:
        problem = "mlflow is not installed here: pip install 'flotilla[tracking]'"
        raise WarmStartError(f"spec.model.init {init!r}: {problem}")
    views = layout.views(model)
    with tempfile.TemporaryDirectory(prefix="flotilla-init-") as folder:
        try:
            path, lineage = fetch_parent(reference, tracking_uri=tracking_uri, into=Path(folder))
            logged = read_weights(path)
            if logged.task is not None and logged.task != job.spec.task:
                raise WeightsMismatch(
                    f"the parent is a {logged.task} model and spec.task is {job.spec.task}"
                )
            fitted = fit_weights(
                logged.tensors, parent_labels=logged.labels, initial=views, labels=job.spec.labels
            )
        except (ParentError, WeightsMismatch, ValueError) as error:
            raise WarmStartError(f"spec.model.init {init!r}: {error}") from None
    with torch.no_grad():
        for name, view in views.items():
            view.copy_(fitted.tensors[name])
    save_lineage(state_dir, lineage)
    _log_start(lineage, fitted)
    return lineage


def _log_start(lineage: Lineage, fitted: Fitted) -> None:
    log.info(
        "round 0 from %s (%s, run %s, round %d): %d tensors",
        lineage.uri,
        lineage.pinned(),
        lineage.run_id,
        lineage.round,
        len(fitted.tensors),
    )
    if fitted.added_labels:
        log.info(
            "labels %s are new: their rows of %s start from this job's seed; every other "
            "row and tensor is the parent's",
            list(fitted.added_labels),
            ", ".join(fitted.grown),
        )


def save_lineage(state_dir: Path, lineage: Lineage) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = state_dir / f".{LINEAGE_FILE}.tmp"
    temporary.write_text(json.dumps(lineage.to_json(), indent=2))
    os.replace(temporary, state_dir / LINEAGE_FILE)


def forget_lineage(state_dir: Path) -> None:
    (state_dir / LINEAGE_FILE).unlink(missing_ok=True)


def saved_lineage(state_dir: Path) -> Lineage | None:
    """The lineage a warm start saved in `state_dir`; None if the job started from its seed
    (or the file cannot be read: lineage is a record, never a reason to stop a job)."""
    path = state_dir / LINEAGE_FILE
    try:
        return Lineage.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as error:
        log.warning("cannot read %s (%s): the run will not record its parent", path, error)
        return None
