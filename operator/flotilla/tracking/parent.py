"""Finds in MLflow the weights ``spec.model.init`` names, and downloads them: safetensors only.

A registered version is resolved to the job run that registered it (its ``flotilla.run_id``
and ``flotilla.round`` tags) and that run's ``weights/round-NNNNNN.safetensors``; a run
(``runs:/ID``) to the weights of its last registration. The registered model itself (a pt2
archive or a pickle) is never downloaded. Creates nothing in MLflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flotilla.api.model_init import ModelInit, RegisteredModelRef, RunRef
from flotilla.redaction import redact_urls
from flotilla.tracking.backend import MlflowBackend
from flotilla.tracking.weights import WEIGHTS_ARTIFACT, weights_file, weights_round


class ParentError(Exception):
    """The weights cannot be found or fetched; the message says which and why."""


@dataclass(frozen=True)
class Lineage:
    """Where a job's round 0 came from, as the child's MLflow run records it."""

    uri: str  # as the spec (or --init) wrote it
    run_id: str  # the parent job's run
    round: int  # the parent's round the weights are from
    model_name: str | None = None
    model_version: str | None = None

    def pinned(self) -> str:
        """The URI that names these very weights, whatever an alias points at later."""
        if self.model_name is not None and self.model_version is not None:
            return f"models:/{self.model_name}/{self.model_version}"
        return f"runs:/{self.run_id}"

    def tags(self) -> dict[str, str]:
        tags = {
            "flotilla.parent.uri": self.uri,
            "flotilla.parent.run_id": self.run_id,
            "flotilla.parent.round": str(self.round),
        }
        if self.model_name is not None and self.model_version is not None:
            tags["flotilla.parent.model"] = self.model_name
            tags["flotilla.parent.version"] = self.model_version
        return tags

    def params(self) -> dict[str, str]:
        return {"model.parent": self.pinned()}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lineage:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def fetch_parent(init: ModelInit, *, tracking_uri: str, into: Path) -> tuple[Path, Lineage]:
    """The weights file downloaded under `into`, and where it came from."""
    from mlflow.exceptions import MlflowException

    where = redact_urls(tracking_uri)
    try:
        backend = MlflowBackend(tracking_uri)
        if isinstance(init, RegisteredModelRef):
            lineage = _registered(backend, init)
        else:
            lineage = _run(backend, init)
        path = f"{WEIGHTS_ARTIFACT}/{weights_file(lineage.round)}"
        local = backend.client.download_artifacts(lineage.run_id, path, str(into))
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ParentError(f"not found on MLflow at {where}: {_first_line(error)}") from None
        raise ParentError(f"cannot read from MLflow at {where}: {_first_line(error)}") from None
    except OSError as error:  # requests' errors are OSErrors too
        raise ParentError(f"cannot reach MLflow at {where}: {_first_line(error)}") from None
    return Path(local), lineage


def _registered(backend: MlflowBackend, init: RegisteredModelRef) -> Lineage:
    client = backend.client
    if init.alias is not None:
        version = client.get_model_version_by_alias(init.name, init.alias)
    else:
        version = client.get_model_version(init.name, str(init.version))
    tags = version.tags or {}
    run_id, round_text = tags.get("flotilla.run_id"), tags.get("flotilla.round", "")
    if run_id is None or not round_text.isdigit():
        raise ParentError(
            f"version {version.version} of {init.name!r} was not registered by a Flotilla job "
            "(no flotilla.run_id and flotilla.round tags): a warm start reads only the "
            "safetensors weights a job logs beside its model, never a pickled model"
        )
    lineage = Lineage(
        uri=str(init),
        run_id=run_id,
        round=int(round_text),
        model_name=init.name,
        model_version=str(version.version),
    )
    if int(round_text) not in _logged_rounds(backend, run_id):
        raise ParentError(
            f"version {version.version} of {init.name!r} has no safetensors weights (run "
            f"{run_id} holds no {WEIGHTS_ARTIFACT}/{weights_file(lineage.round)}): it was "
            "registered before Flotilla logged them; run its job again to register a version "
            "that has them"
        )
    return lineage


def _run(backend: MlflowBackend, init: RunRef) -> Lineage:
    run = backend.client.get_run(init.run_id)
    if run.info.lifecycle_stage == "deleted":
        raise ParentError(f"run {init.run_id} is deleted")
    rounds = _logged_rounds(backend, init.run_id)
    if not rounds:
        raise ParentError(
            f"run {init.run_id} holds no {WEIGHTS_ARTIFACT}/round-NNNNNN.safetensors: a "
            "Flotilla job logs them when it registers its final model, so only a job that "
            "finished (with this version of Flotilla or later) can be started from"
        )
    return Lineage(uri=str(init), run_id=init.run_id, round=max(rounds))


def _logged_rounds(backend: MlflowBackend, run_id: str) -> list[int]:
    entries = backend.client.list_artifacts(run_id, WEIGHTS_ARTIFACT)
    found = (weights_round(entry.path) for entry in entries if not entry.is_dir)
    return sorted(number for number in found if number is not None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return redact_urls(text[0] if text else type(error).__name__)[:300]
