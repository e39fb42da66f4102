"""What MLflow should hold for a job, computed from the aggregator's ledger: pure functions.

Every metric carries the round as its step and the round's end as its timestamp, so
sending it twice is harmless: MLflow's stores ignore a metric identical in key, step,
timestamp and value. That is what makes resending after an outage or a restart safe.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from flotilla.redaction import redact_urls

# MLflow refuses longer param values; a longer value is cut and says so.
PARAM_VALUE_LIMIT = 6000
# Keys that hold a secret value. A key ending in "Secret" (credentialsSecret) names a
# Kubernetes Secret, which is no secret, and is kept.
_SECRET_KEY = re.compile(
    r"(password|passwd|token|apikey|api_key|accesskey|secretkey)$|^(secret|credentials?)$", re.I
)
_METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")

# Per-client numbers reported with each update, and their MLflow names.
_CLIENT_TRAIN_KEYS = {
    "loss": "loss",
    "accuracy": "accuracy",
    "examples": "examples",
    "trainSeconds": "train_seconds",
    "bytes": "bytes",
    "updateNorm": "update_norm",
}


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    step: int
    timestamp_ms: int


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """An http(s) URI without its user:password, and those (URL-decoded), for MLflow's
    MLFLOW_TRACKING_USERNAME / _PASSWORD: MLflow prints the URI it is given ("View run
    at ..."), so credentials must not ride in it."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
        return uri, None, None
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=netloc)), username, password


def job_params(job: Mapping[str, Any]) -> dict[str, str]:
    """The job's spec flattened to MLflow params: `training.learningRate` -> "0.05".

    Sites are keyed by name (`sites.site-a.data.cvatExport.path`), other lists are
    JSON-like strings. Keys that name a secret are left out, and the credentials of any
    URL in any value are redacted.
    """
    spec = dict(job.get("spec", {}))
    params = {"job.name": str(job.get("metadata", {}).get("name", ""))}
    sites = spec.pop("sites", [])
    for key, value in _flatten(spec, ""):
        params[key] = value
    for site in sites:
        for key, value in _flatten(site.get("data") or {}, f"sites.{site['name']}.data."):
            params[key] = value
    params["sites"] = ",".join(site["name"] for site in sites)
    return {key: _cut(redact_urls(value)) for key, value in params.items()}


def _flatten(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, str]]:
    for key, value in node.items():
        if _SECRET_KEY.search(key):
            continue
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            yield f"{prefix}{key}", ",".join(str(item) for item in value)
        else:
            yield f"{prefix}{key}", str(value).lower() if isinstance(value, bool) else str(value)


def _cut(value: str) -> str:
    if len(value) <= PARAM_VALUE_LIMIT:
        return value
    marker = "...(cut)"
    return value[: PARAM_VALUE_LIMIT - len(marker)] + marker


def round_end_ms(row: Mapping[str, Any]) -> int:
    return round((float(row["started_at"]) + float(row["duration_seconds"])) * 1000)


def round_metrics(row: Mapping[str, Any]) -> list[Metric]:
    """A completed round's own numbers: known when the round is checkpointed."""
    step, stamp = int(row["round"]), round_end_ms(row)
    values: dict[str, Any] = {
        "round.duration_seconds": row["duration_seconds"],
        "round.aggregation_seconds": row["aggregation_seconds"],
        "round.bytes_received": row["bytes_received"],
        "round.attempts": row["attempts"],
        "clients.sampled": len(row["sampled"]),
        "clients.answered": len(row["answered"]),
        "train.loss": row["train_loss"],
        "train.accuracy": row["train_accuracy"],
    }
    for key, value in (row.get("central") or {}).items():
        values[f"central.{key}"] = value
    # Differential privacy: the epsilon spent up to this round (absent without noise).
    values["privacy.epsilon"] = (row.get("privacy") or {}).get("epsilon")
    # Buffered aggregation: the staleness of the server update's updates (absent otherwise).
    buffer = row.get("buffer") or {}
    values["buffer.staleness_mean"] = buffer.get("stalenessMean")
    values["buffer.staleness_max"] = buffer.get("stalenessMax")
    for site, numbers in (row.get("clients") or {}).items():
        for source, name in _CLIENT_TRAIN_KEYS.items():
            if source in numbers:
                values[f"client.{metric_safe(site)}.{name}"] = numbers[source]
    return _metrics(values, step=step, timestamp_ms=stamp)


def federated_metrics(
    row: Mapping[str, Any], evaluations: Sequence[Mapping[str, Any]]
) -> list[Metric]:
    """The clients' evaluations of the round's model: they arrive a round later."""
    step, stamp = int(row["round"]), round_end_ms(row)
    values: dict[str, Any] = {
        f"federated.{key}": value for key, value in (row.get("federated") or {}).items()
    }
    for report in evaluations:
        site = metric_safe(str(report["site"]))
        values[f"client.{site}.eval_loss"] = report["loss"]
        for score in ("accuracy", "map50"):
            values[f"client.{site}.eval_{score}"] = report.get(score)
        values[f"client.{site}.eval_examples"] = report["examples"]
    return _metrics(values, step=step, timestamp_ms=stamp)


def metric_safe(name: str) -> str:
    return _METRIC_KEY_UNSAFE.sub("_", name)


def _metrics(values: Mapping[str, Any], *, step: int, timestamp_ms: int) -> list[Metric]:
    # A NaN says "nothing measured" (a client with no hold-out): leave the point out.
    return [
        Metric(key=key, value=float(value), step=step, timestamp_ms=timestamp_ms)
        for key, value in values.items()
        if isinstance(value, int | float) and math.isfinite(value)
    ]
