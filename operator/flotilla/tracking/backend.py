"""The MLflow calls the exporter makes, behind a Protocol so tests can use a small fake.

MLflow is imported here only, and only when a backend is built: a client or an
aggregator with tracking off never pays for it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from flotilla.redaction import redact_urls
from flotilla.tracking.champion import AliasHolder
from flotilla.tracking.plan import Metric, split_credentials
from flotilla.tracking.served_model import ServedModel
from flotilla.tracking.weights import WEIGHTS_ARTIFACT, weights_file, weights_round

log = logging.getLogger(__name__)

CHECKPOINTS_ARTIFACT = "checkpoints"  # where the exporter logs round-NNNNNN/ directories
# MLflow's REST limits per log_batch call.
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100

# The exporter retries on its own schedule; MLflow's default of 7 retries with backoff
# would hold a round's records for minutes before the first warning.
_MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    # Clusters that hold private data are often air-gapped: no phoning home by default.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # A progress bar per download is noise in an aggregator's log.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def filter_literal(value: str) -> str:
    """``value`` as a string in an MLflow search filter.

    MLflow's grammar has no escape inside a quoted string (``search_utils._strip_quotes``
    only trims the quotes): a value is quoted with the quote character it does not hold,
    and one that holds both cannot be written. Never format a value into a filter without
    this; where a value may hold both (a registered model's name), filter on something else.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters: no MLflow filter can match it")


def _run_key_filter(run_key: str) -> str:
    return f"tags.`flotilla.run_key` = {filter_literal(run_key)}"


class RunGone(Exception):
    """The journal's run is not on this tracking server (deleted, or another server)."""


class TrackingBackend(Protocol):
    def open_run(
        self,
        *,
        experiment: str,
        run_id: str | None,
        run_key: str,
        run_name: str,
        tags: Mapping[str, str],
    ) -> tuple[str, str]:
        """(experiment id, run id): the journal's run, the run tagged with run_key, or new."""
        ...

    def logged_params(self, run_id: str) -> dict[str, str]: ...

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None: ...

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None: ...

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None: ...

    def set_run_status(self, run_id: str, status: str) -> None: ...

    def register_model(
        self, run_id: str, model: ServedModel, *, name: str, alias: str, round_number: int
    ) -> str:
        """Log the model to the run, register it (once per run and round), move the alias."""
        ...


class RecoveryBackend(Protocol):
    """What an aggregator with an empty state directory asks MLflow for (recovery.py)."""

    def find_run(self, *, experiment: str, run_key: str) -> tuple[str, str] | None:
        """(experiment id, run id) of the run tagged with run_key, or None; creates nothing."""
        ...

    def checkpoint_rounds(self, run_id: str) -> list[int]:
        """The rounds whose checkpoint the run holds (artifacts checkpoints/round-NNNNNN)."""
        ...

    def download_checkpoint(self, run_id: str, round_number: int, into: Path) -> Path:
        """The checkpoint's files, downloaded under `into`; the directory they are in."""
        ...

    def last_step(self, run_id: str, key: str) -> int:
        """The highest step logged for the metric, 0 if none."""
        ...


class MlflowBackend:
    """A TrackingBackend over MlflowClient (REST server, SQLite or any store MLflow takes)."""

    def __init__(self, tracking_uri: str) -> None:
        for key, value in _MLFLOW_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        tracking_uri, username, password = split_credentials(tracking_uri)
        if username is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = username
        if password is not None:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def open_run(
        self,
        *,
        experiment: str,
        run_id: str | None,
        run_key: str,
        run_name: str,
        tags: Mapping[str, str],
    ) -> tuple[str, str]:
        if run_id is not None:
            run = self._get_run(run_id)
            if run is None:
                raise RunGone(f"MLflow run {run_id} is not on {redact_urls(self.uri)}")
            return str(run.info.experiment_id), run_id
        experiment_id = self._experiment_id(experiment)
        found = self.client.search_runs(
            [experiment_id], filter_string=_run_key_filter(run_key), max_results=1
        )
        if found:
            return experiment_id, str(found[0].info.run_id)
        run = self.client.create_run(
            experiment_id, run_name=run_name, tags=dict(tags) | {"flotilla.run_key": run_key}
        )
        return experiment_id, str(run.info.run_id)

    def find_run(self, *, experiment: str, run_key: str) -> tuple[str, str] | None:
        found = self.client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage == "deleted":
            return None
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=_run_key_filter(run_key),
            max_results=1,
        )
        return (str(found.experiment_id), str(runs[0].info.run_id)) if runs else None

    def checkpoint_rounds(self, run_id: str) -> list[int]:
        rounds = []
        for entry in self.client.list_artifacts(run_id, CHECKPOINTS_ARTIFACT):
            name = entry.path.rsplit("/", 1)[-1]
            if entry.is_dir and name.startswith("round-") and name[6:].isdigit():
                rounds.append(int(name[6:]))
        return sorted(rounds)

    def download_checkpoint(self, run_id: str, round_number: int, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        path = f"{CHECKPOINTS_ARTIFACT}/round-{round_number:06d}"
        return Path(self.client.download_artifacts(run_id, path, str(into)))

    def last_step(self, run_id: str, key: str) -> int:
        return max((int(m.step) for m in self.client.get_metric_history(run_id, key)), default=0)

    def _get_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise ValueError(
                    f"MLflow experiment {name!r} is deleted: restore it or set "
                    "spec.tracking.experiment to another name"
                )
            return str(experiment.experiment_id)
        try:
            return str(
                self.client.create_experiment(name, artifact_location=_local_artifacts(self.uri))
            )
        except MlflowException as error:  # another process created it meanwhile
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self._experiment_id(name)

    def logged_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start : start + _PARAMS_PER_BATCH])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(key, value) for key, value in tags.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: Sequence[Metric]) -> None:
        from mlflow.entities import Metric as MlflowMetric

        items = [MlflowMetric(m.key, m.value, m.timestamp_ms, m.step) for m in metrics]
        for start in range(0, len(items), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[start : start + _METRICS_PER_BATCH])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, dict(data), artifact_file)

    def set_run_status(self, run_id: str, status: str) -> None:
        self.client.update_run(run_id, status=status)

    def register_model(
        self, run_id: str, model: ServedModel, *, name: str, alias: str, round_number: int
    ) -> str:
        version = self._registered_version(run_id, name, round_number)
        if version is None:
            version = self._log_and_register(run_id, model, name=name, round_number=round_number)
        self.client.set_registered_model_alias(name, alias, version)
        return version

    def _registered_version(self, run_id: str, name: str, round_number: int) -> str | None:
        from mlflow.exceptions import MlflowException

        # By the run's tag, not by name: a name may hold both quotes, which no filter
        # can; MLflow's run ids are hex. The name is compared here instead.
        query = f"tags.`flotilla.run_id` = {filter_literal(run_id)}"
        try:
            versions = self.client.search_model_versions(query)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        for version in versions:
            tags = version.tags or {}
            if version.name == name and tags.get("flotilla.round") == str(round_number):
                return str(version.version)
        return None

    def _log_and_register(
        self, run_id: str, model: ServedModel, *, name: str, round_number: int
    ) -> str:
        import mlflow
        import mlflow.pytorch

        self._log_weights(run_id, model, round_number=round_number)
        # log_model attaches to the active run. Leaving the block marks the run FINISHED,
        # which the exporter then sets to the job's real outcome.
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model.module,
                name="model",
                signature=model.signature(),
                input_example=model.input_example(),
                pip_requirements=model.pip_requirements(),
                metadata=model.metadata(),
                serialization_format=model.serialization_format,
            )
        registered = mlflow.register_model(
            info.model_uri,
            name,
            tags={"flotilla.run_id": run_id, "flotilla.round": str(round_number)},
        )
        log.info("registered %s version %s (round %d)", name, registered.version, round_number)
        return str(registered.version)

    # -- the promotion gate's registry (champion.py) -----------------------------------------

    def alias_holder(self, name: str, alias: str) -> AliasHolder | None:
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as error:  # no such alias, or no such model yet
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        tags = version.tags or {}
        round_text = tags.get("flotilla.round", "")
        return AliasHolder(
            version=str(version.version),
            run_id=tags.get("flotilla.run_id"),
            round=int(round_text) if round_text.isdigit() else None,
        )

    def download_weights(self, run_id: str, round_number: int, into: Path) -> Path | None:
        entries = self.client.list_artifacts(run_id, WEIGHTS_ARTIFACT)
        if not any(weights_round(entry.path) == round_number for entry in entries):
            return None
        path = f"{WEIGHTS_ARTIFACT}/{weights_file(round_number)}"
        return Path(self.client.download_artifacts(run_id, path, str(into)))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, version, key, value)

    def _log_weights(self, run_id: str, model: ServedModel, *, round_number: int) -> None:
        """The weights as safetensors, before the version exists: every version a job
        registers has them (a warm start reads only these, tracking/weights.py)."""
        if not model.weights:
            return
        with tempfile.TemporaryDirectory(prefix="flotilla-weights-") as folder:
            path = Path(folder) / weights_file(round_number)
            path.write_bytes(model.weights_bytes())
            self.client.log_artifact(run_id, str(path), WEIGHTS_ARTIFACT)


def _local_artifacts(uri: str) -> str | None:
    """Artifacts beside a SQLite store; a server chooses its own (--artifacts-destination)."""
    parts = urlsplit(uri)
    if parts.scheme != "sqlite" or not parts.path or parts.path == "/:memory:":
        return None
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db
    database = Path(parts.path[1:])
    return (database.parent / "artifacts").absolute().as_uri()
